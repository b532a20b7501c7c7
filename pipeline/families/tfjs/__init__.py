"""The TensorFlow.js family: SavedModel (from the canonical ONNX via onnx2tf, or from a Keras source) -> tfjs graph
models with float32, float16 or uint8 weights, run by @tensorflow/tfjs (runtime ``tfjs``) on wasm, WebGL, WebGPU.
The SavedModel is a prerequisite the three variants share (``saved_model.py``); ``convert.py`` writes the graph
models."""
from __future__ import annotations

from pathlib import Path

from pipeline.families import BuildInputs, PrerequisiteSpec, VariantSpec, register
from pipeline.families.tfjs.convert import saved_model_to_tfjs
from pipeline.families.tfjs.saved_model import build_saved_model, toolchain_versions
from pipeline.outcome import ConversionError


def _variant(quantization: str | None):
    def build(inputs: BuildInputs, out_dir: Path) -> list[Path]:
        folder = inputs.prerequisites.get("saved_model")
        if folder is None:
            raise ConversionError("tfjs variant: prerequisite 'saved_model' not built")
        return saved_model_to_tfjs(Path(folder) / "saved_model", Path(out_dir), quantization=quantization)

    return build


VARIANTS = [
    VariantSpec(name=name, runtime="tfjs", build=_variant(q), description=desc, native=None,
                prerequisites=("saved_model",))
    for name, q, desc in (
        ("tfjs_fp32", None, "TensorFlow.js graph model, float32 weights"),
        ("tfjs_fp16", "float16", "TensorFlow.js graph model, float16-quantized weights (float32 compute)"),
        ("tfjs_uint8", "uint8", "TensorFlow.js graph model, uint8 affine-quantized weights (float32 compute)"),
    )
]

PREREQUISITES = [PrerequisiteSpec(name="saved_model", build=build_saved_model, fingerprint=toolchain_versions)]

register("tfjs", VARIANTS, PREREQUISITES, module=__name__)
