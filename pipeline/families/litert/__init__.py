"""The LiteRT family: TFLite flatbuffers made by TensorFlow's TFLite converter from the TF SavedModel the tfjs
family already builds (its ``saved_model`` prerequisite: the recipe's inputs in the recipe's layout, outputs renamed
to the recipe's), run by LiteRT.js (npm @litertjs/core, runtime ``litert``) on wasm (XNNPACK) and WebGPU, and natively
by the ai-edge-litert interpreter (XNNPACK, 1 thread) on the same file. ``convert.py`` writes the models."""
from __future__ import annotations

from pathlib import Path

from pipeline.families import BuildInputs, VariantSpec, register
from pipeline.families.litert.convert import saved_model_to_tflite
from pipeline.outcome import ConversionError


def _variant(quantization: str | None):
    def build(inputs: BuildInputs, out_dir: Path) -> list[Path]:
        folder = inputs.prerequisites.get("saved_model")
        if folder is None:
            raise ConversionError("litert variant: prerequisite 'saved_model' not built")
        return saved_model_to_tflite(Path(folder) / "saved_model", Path(out_dir), quantization=quantization,
                                     calibration=inputs.calibration, recipe=inputs.recipe)

    return build


VARIANTS = [
    VariantSpec(name=name, runtime="litert", build=_variant(q), description=desc, native="litert",
                needs_calibration=q == "int8", prerequisites=("saved_model",))
    for name, q, desc in (
        ("litert_fp32", None, "TFLite (LiteRT) flatbuffer, float32, static shapes (a dynamic batch as 1)"),
        ("litert_fp16", "float16", "TFLite, float16 weights (dequantized to float32 on the CPU; the WebGPU delegate "
                                   "computes in its own precision)"),
        ("litert_int8_dynamic", "dynamic_int8", "TFLite, dynamic-range int8 weights (weight tensors of >= 1024 "
                                                "elements), float32 activations quantized on the fly"),
        ("litert_int8", "int8", "TFLite, full-integer int8 weights and activations calibrated on the recipe's "
                                "calibration samples, float32 input/output (Quantize/Dequantize at the edges)"),
    )
]

register("litert", VARIANTS, module=__name__)
