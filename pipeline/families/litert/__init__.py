"""The LiteRT family: TFLite flatbuffers made by TensorFlow's TFLite converter from the TF SavedModel the tfjs
family already builds (its ``saved_model`` prerequisite: the recipe's inputs in the recipe's layout, outputs renamed
to the recipe's), run by LiteRT.js (npm @litertjs/core, runtime ``litert``) on wasm (XNNPACK) and WebGPU, and natively
by the ai-edge-litert interpreter (XNNPACK, 1 thread) on the same file. ``convert.py`` writes the models."""
from __future__ import annotations

from pathlib import Path

from pipeline.families import BuildInputs, VariantSpec, register
from pipeline.families.litert.convert import MIXED, quantization_record, saved_model_to_tflite
from pipeline.isolate import run_isolated
from pipeline.outcome import ConversionError


def _variant(quantization: str | None):
    def build(inputs: BuildInputs, out_dir: Path) -> list[Path]:
        folder = inputs.prerequisites.get("saved_model")
        if folder is None:
            raise ConversionError("litert variant: prerequisite 'saved_model' not built")
        # In a child process: TensorFlow's converter and quantizer can abort natively (pipeline.isolate).
        return run_isolated(saved_model_to_tflite, Path(folder) / "saved_model", Path(out_dir),
                            quantization=quantization, calibration=inputs.calibration, recipe=inputs.recipe,
                            what=f"litert {quantization or 'float32'} conversion")

    return build


VARIANTS = [
    VariantSpec(name=name, runtime="litert", build=_variant(q), description=desc, native="litert",
                needs_calibration=q in ("int8", *MIXED), prerequisites=("saved_model",),
                quantization_record=quantization_record if q in MIXED else None)
    for name, q, desc in (
        ("litert_fp32", None, "TFLite (LiteRT) flatbuffer, float32, static shapes (a dynamic batch as 1)"),
        ("litert_fp16", "float16", "TFLite, float16 weights (dequantized to float32 on the CPU; the WebGPU delegate "
                                   "computes in its own precision)"),
        ("litert_int8_dynamic", "dynamic_int8", "TFLite, dynamic-range int8 weights (weight tensors of >= 1024 "
                                                "elements), float32 activations quantized on the fly"),
        ("litert_int8", "int8", "TFLite, full-integer int8 weights and activations calibrated on the recipe's "
                                "calibration samples, float32 input/output (Quantize/Dequantize at the edges)"),
        ("litert_int8_mixed", "int8_mixed",
         "TFLite, full-integer int8 as litert_int8 with the layers where int8 hurts most kept float "
         "(TensorFlow's QuantizationDebugger denylisted_nodes), chosen by a sensitivity pass on the calibration "
         "samples (never the evaluation data): layers ranked by the debugger's rmse/scale, each tried float and kept "
         "when it raises top-1 agreement with the float model (or lowers the output error by >= 2 %), until the "
         "budget's agreement + 0.02 is reached, at most 8 layers. Which layers and why: litert_manifest.json "
         "'quantization_record'"),
        ("litert_int8_partial", "int8_partial",
         "TFLite, the float32 model with int8 (per-channel weights, calibrated activations) only in the ops where "
         "the calibration samples (never the evaluation data) show it harmless: each op measured int8 alone, then "
         "added in order of its error while top-1 agreement with the float model stays >= the budget's bound + "
         "0.02 (without a top-1 bound: output error <= 1e-3); the rest float (TensorFlow's denylisted_nodes). "
         "Which ops stay float and why: litert_manifest.json 'quantization_record'"),
    )
]

register("litert", VARIANTS, module=__name__)
