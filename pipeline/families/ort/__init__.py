"""The ONNX Runtime Web family: variants of the canonical ONNX model, run by onnxruntime-web (runtime ``ort``).
The conversions are plain functions in ``convert.py``; this is the table of variants built from them."""
from __future__ import annotations

from pathlib import Path

from pipeline.families import BuildInputs, VariantSpec, own_calibration, register
from pipeline.families.ort.convert import OPTIMIZED_SESSION_OPTIONS, copy_model, int8_dynamic, int8_qdq, \
    int8_qdq_sensitive, ort_optimize, quantization_record, simplify, to_fp16, via_simplified, weight_only, \
    write_session_options

MODEL_FILE = "model.onnx"


def _variant(step):
    """A VariantSpec build function from a conversion step ``step(canonical, dst, inputs)``."""
    def build(inputs: BuildInputs, out_dir: Path) -> list[Path]:
        dst = out_dir / MODEL_FILE
        step(inputs.canonical_onnx, dst, inputs)
        return [dst]

    return build


def _optimized(fmt: str):
    """A graph optimized here by onnxruntime, shipped with the session options that make the browser skip its own
    optimizations (the measuring page and the web app's loader read them from the same file)."""
    def build(inputs: BuildInputs, out_dir: Path) -> list[Path]:
        dst = out_dir / f"model.{fmt}"
        ort_optimize(inputs.canonical_onnx, dst, fmt=fmt)
        return [dst, write_session_options(out_dir, OPTIMIZED_SESSION_OPTIONS)]

    return build


def _int8_qdq_mixed(src: Path, dst: Path, inputs: BuildInputs):
    """Its float nodes are chosen on calibration samples: only with the recipe's own (pipeline.families
    own_calibration)."""
    own_calibration(inputs.recipe, "int8_qdq_mixed")
    return via_simplified(lambda s, d: int8_qdq_sensitive(s, d, inputs.calibration,
                                                          batch=inputs.calibration_batch))(src, dst)

VARIANTS = [
    VariantSpec(
        name="fp32", runtime="ort",
        build=_variant(lambda src, dst, _: copy_model(src, dst)),
        description="The canonical (exported, checked, shape-inferred) float32 model, unchanged.",
    ),
    VariantSpec(
        name="simplified", runtime="ort",
        build=_variant(lambda src, dst, _: simplify(src, dst)),
        description="onnxsim: constant folding, BN folding, MatMul+Add->Gemm on 2-D, numerically checked.",
    ),
    # Offline optimization: the graph ORT-web would build at every session start, built once here. Only wasm: the
    # fusions are the CPU EP's (the wasm EP is that EP); on WebGPU they would be nodes placed for another EP.
    VariantSpec(
        name="ort_optimized", runtime="ort", targets=("wasm",),
        build=_optimized("onnx"),
        description=(
            "onnxruntime's graph optimizations run offline (ORT_ENABLE_ALL without NchwcTransformer, whose "
            "NCHWc nodes the wasm build lacks: folded constants, FusedConv with activation and residual Add), "
            "saved as ONNX with session options graphOptimizationLevel 'disabled': the browser skips them at "
            "session creation."),
    ),
    VariantSpec(
        name="ort_format", runtime="ort", targets=("wasm",),
        build=_optimized("ort"),
        description=(
            "The same optimized graph in ORT's own flatbuffer format (.ort; ORT-web detects it and uses its "
            "initializers in place), graphOptimizationLevel 'disabled'."),
    ),
    VariantSpec(
        name="fp16", runtime="ort",
        build=_variant(lambda src, dst, _: via_simplified(to_fp16)(src, dst)),
        # wasm too: whether ORT's CPU kernels take float16 is measured, not assumed.
        required_features={"webgpu": ("shader-f16",)},
        description=(
            "float16 weights and compute, float32 I/O (Cast at the boundary). Starts from the simplified "
            "model (folded constants need no Casts). Worth it only on WebGPU with shader-f16: without it "
            "ORT-web returns garbage silently; wasm has almost no fp16 kernels."
        ),
    ),
    VariantSpec(
        name="int8_dynamic", runtime="ort",
        build=_variant(lambda src, dst, _: int8_dynamic(src, dst)),
        # WebGPU lacks these ops; ORT-web may place them on its CPU kernels instead: measured, not assumed.
        description=(
            "Dynamic int8 (onnxruntime quantize_dynamic after quant_pre_process): MatMulInteger/ConvInteger + "
            "DynamicQuantizeLinear. WebGPU/WebGL have no DynamicQuantizeLinear (ORT-web runs those nodes on its CPU "
            "kernels); ConvInteger is slow natively and in wasm."
        ),
    ),
    VariantSpec(
        name="int8_qdq", runtime="ort",
        build=_variant(lambda src, dst, inputs: via_simplified(
            lambda s, d: int8_qdq(s, d, inputs.calibration, batch=inputs.calibration_batch))(src, dst)),
        needs_calibration=True,
        # Measured on WebGPU too: wrong values there are what the accuracy gate exists to catch.
        description=(
            "Static int8, QDQ format (QuantizeLinear/DequantizeLinear around Conv/MatMul/Gemm), per-channel "
            "int8 weights, uint8 activations, MinMax calibration. Starts from the simplified model (fewer "
            "tensors to quantize). QDQ on ORT-web WebGPU was seen to give wrong values without an error: the "
            "accuracy gate decides."
        ),
    ),
    VariantSpec(
        name="int8_qdq_mixed", runtime="ort",
        build=_variant(_int8_qdq_mixed),
        needs_calibration=True,
        description=(
            "Static int8 QDQ like int8_qdq (per-channel int8 weights, uint8 activations), Percentile calibration, "
            "with the layers where int8 hurts most kept in float: a sensitivity pass on the calibration samples "
            "(never the evaluation data) measures the output error with each Conv/Gemm/MatMul alone kept float and "
            "keeps float, greedily, those that lower it by >= 2 %, at most 8; not made for a recipe without "
            "data.calibration. Which nodes and why: the model's metadata 'pipeline.quantization'."),
        quantization_record=quantization_record,
    ),
    # Weight-only (block-wise, 32 weights per scale): each MatMul with a constant 2-D weight becomes com.microsoft
    # MatMulNBits; activations stay float, so attention (activation x activation) is never quantized. They start
    # from the canonical model, not the simplified one (onnxsim fuses 2-D MatMul+Add into Gemm, which the
    # quantizer skips); NotApplicable without such a MatMul. The fp16 ones then convert to float16 compute.
    *[VariantSpec(
        name=f"{name}{'_fp16' if fp16 else ''}", runtime="ort",
        build=_variant(lambda src, dst, _, bits=bits, fp16=fp16: weight_only(src, dst, bits=bits, fp16=fp16)),
        required_features={"webgpu": ("shader-f16",)} if fp16 else {},
        description=(f"{bits}-bit weight-only: MatMul -> MatMulNBits"
                     + (", token-embedding tables (Gather) -> GatherBlockQuantized" if bits == 4 else
                        "; embedding tables stay float (no 8-bit Gather in the quantizer)")
                     + (", float16 activations." if fp16 else ", float32 activations.")),
    ) for name, bits in (("int4", 4), ("int8_weights", 8)) for fp16 in (False, True)],
]

register("ort", VARIANTS, module=__name__)
