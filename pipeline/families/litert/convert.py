"""SavedModel -> TFLite flatbuffer (``model.tflite``) with TensorFlow's TFLite converter, for runtime ``litert``
(LiteRT.js in the browser; natively the ai-edge-litert interpreter).

Static shapes: LiteRT.js 2.5.3 runs a model at the shapes it was converted for (a dynamic batch would come out of
the converter as -1, and LiteRT.js sizes its output buffers from it). The SavedModel the tfjs family shares has a
dynamic batch, so each conversion first re-exports it with a static serving signature (the recipe's
``static_shape()``: ``compile_shape``, else a dynamic batch as 1) into a private scratch folder — the shared
SavedModel is never written to — and converts that with ``TFLiteConverter.from_saved_model``. Signature names stay
the SavedModel's; ``litert_manifest.json`` beside the model maps them onto the recipe's input and output names and
says where each carries its batch, so the browser adapter and the native runner feed and collect by recipe names and
split larger batches into model-sized ones.

Types: a LiteRT.js 2.5.3 tensor carries float32, int32 or uint8 only (a model with another input or output type does
not load), so the re-export casts at the model's edges: int64 token ids are fed as int32, float64 as float32
(``js_dtype``); the manifest has the types the model takes.

Quantizations (``QUANTIZATIONS``): ``None`` float32; ``float16`` weights (dequantized before compute on the CPU);
``dynamic_int8`` dynamic-range int8 weights (the converter quantizes weight tensors of at least 1024 elements; the
manifest says how many it did); ``int8`` full-integer int8 calibrated on the recipe's calibration samples, with
float32 input and output kept (Quantize/Dequantize at the boundary) so the page feeds floats; ``int8_mixed`` the same
with the layers where int8 hurts most kept float, chosen by a sensitivity pass on the calibration samples
(:func:`int8_mixed`; which layers and why: the manifest's ``quantization_record``); ``int8_partial`` the other way
round: the float model with int8 only where the calibration samples show it harmless (:func:`int8_partial`; same
record).

Only TFLite builtin ops are allowed (no Flex / TF Select: LiteRT.js has no TensorFlow kernels); an op outside them
is an UnsupportedOp naming it. Every model is loaded into the interpreter once before it is kept, and a float32
model is checked against the SavedModel it came from on random inputs.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.evaluate.native import LITERT_MANIFEST, LiteRtModel
from pipeline.evaluate.native import litert_versions as interpreter_versions
from pipeline.fsutil import atomic_dir, scratch_dir
from pipeline.outcome import ConversionError, ToolchainMissing, UnsupportedOp
from pipeline.sources.keras import tensorflow

MODEL_FILE = "model.tflite"
MANIFEST_FILE = LITERT_MANIFEST            # litert_manifest.json, beside model.tflite
QUANT_RECORD_KEY = "quantization_record"   # the manifest's record of a mixed model: layers kept float, why
QUANTIZATIONS = (None, "float16", "dynamic_int8", "int8", "int8_mixed", "int8_partial")
MIXED = ("int8_mixed", "int8_partial")     # int8 with float layers chosen on calibration samples: a record each
LITERT_JS_DTYPES = ("float32", "int32", "uint8")  # what a LiteRT.js 2.5.3 Tensor carries (its DATATYPES)
CALIBRATION_LIMIT = 500                  # representative samples the int8 calibration sees at most
STEP = "tflite converter"
SIGNATURE = "serving_default"            # the .tflite's signature (and the SavedModel's, unless io_signature.json says)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _tfjs_saved_model():
    """The tfjs family's SavedModel helpers (io_signature.json, its signature name, running it). Imported when
    needed, not at the top: importing them imports (and registers) the tfjs family, and families register in folder
    order. The variants' keys lose nothing: they follow the saved_model prerequisite's, which carries that code."""
    from pipeline.families.tfjs import saved_model

    return saved_model


def litert_versions() -> dict[str, str | None]:
    """Versions a .tflite depends on besides the SavedModel's (no heavy imports)."""
    from importlib import metadata

    try:
        tf = metadata.version("tensorflow-cpu")
    except metadata.PackageNotFoundError:
        tf = None
    return {"tensorflow-cpu": tf, **interpreter_versions()}


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:
        raise ToolchainMissing(f"import ai_edge_litert: {e} (pip install ai-edge-litert==2.1.2)") from None
    return Interpreter, OpResolverType


# ----------------------------------------------------------------------------------------------- shapes


def static_io(io: dict, recipe=None) -> list[dict]:
    """The SavedModel's inputs (io_signature.json entries) with the static shape each is converted for and its
    batch axis: the recipe's (``static_shape()``, ``batch_axis``), else the SavedModel's shape with a leading
    dynamic dimension as 1. A recipe input with another dynamic dimension and no ``compile_shape`` cannot be
    converted for LiteRT.js: NotApplicable, naming it."""
    from pipeline.outcome import NotApplicable

    by_name = {i.name: i for i in (recipe.inputs if recipe is not None else [])}
    out = []
    for s in io["inputs"]:
        spec = by_name.get(s["name"])
        if spec is not None:
            shape = spec.static_shape()
            if shape is None:
                dyn = [d for k, d in enumerate(spec.shape) if isinstance(d, str) and k != spec.batch_axis]
                raise NotApplicable(f"litert: input {spec.name!r} has dynamic dimension(s) {dyn} (shape {spec.shape}); "
                                    "LiteRT.js runs static shapes: give the size to convert for as "
                                    f"inputs[{spec.name}].compile_shape in the recipe")
            axis = spec.batch_axis
        else:
            dims = s["shape"]
            if any(d is None for d in dims[1:]):
                raise ConversionError(f"{STEP}: input {s['name']} has dynamic dimensions {dims} beyond the first and "
                                      "no recipe says what to convert for")
            shape, axis = [1 if d is None else int(d) for d in dims], (0 if dims and dims[0] is None else None)
        if len(shape) != len(s["shape"]):
            raise ConversionError(f"{STEP}: input {s['name']}: static shape {shape} does not fit the SavedModel's "
                                  f"{s['shape']}")
        out.append({**s, "static_shape": [int(d) for d in shape], "batch_axis": axis,
                    "pad": spec.compile_pad if spec is not None else None})
    return out


def _output_batch_axes(io: dict, recipe=None) -> dict[str, int | None]:
    by_name = {o.name: o for o in (recipe.outputs if recipe is not None else [])}
    return {o["name"]: (by_name[o["name"]].batch_axis if o["name"] in by_name else 0) for o in io["outputs"]}


def js_dtype(dtype: str) -> str:
    """The dtype a LiteRT.js 2.5.3 tensor can carry for `dtype` (its Tensor takes float32, int32 and uint8 only, and
    a model with any other input or output type fails to load): floats as float32, integers as int32, bool as
    uint8. The model casts at its edges, as the tfjs adapter narrows int64 feeds to int32."""
    if dtype in LITERT_JS_DTYPES:
        return dtype
    kind = np.dtype(dtype).kind
    return "float32" if kind == "f" else "uint8" if kind == "b" else "int32"


def _static_saved_model(sm_dir: Path, io: dict, inputs: list[dict], dst: Path) -> None:
    """Re-export the SavedModel at `sm_dir` with its serving signature at static input shapes, into `dst`; inputs
    and outputs of a type LiteRT.js cannot carry are cast at the edges (js_dtype)."""
    tf = tensorflow()
    try:
        loaded = tf.saved_model.load(str(sm_dir))
        fn = loaded.signatures[io.get("signature", SIGNATURE)]
    except Exception as e:  # noqa: BLE001 - reported with the step
        raise ConversionError(f"{STEP}: cannot load SavedModel {sm_dir}: {type(e).__name__}: {str(e)[:300]}") from None
    keys = [s["signature_key"] for s in inputs]
    own = [tf.as_dtype(s["dtype"]) for s in inputs]
    specs = [tf.TensorSpec(s["static_shape"], js_dtype(s["dtype"]), name=s["signature_key"]) for s in inputs]

    @tf.function(input_signature=specs)
    def serve(*args):
        res = fn(**{k: a if a.dtype == d else tf.cast(a, d) for k, a, d in zip(keys, args, own)})
        return {k: v if v.dtype.name == js_dtype(v.dtype.name) else tf.cast(v, js_dtype(v.dtype.name))
                for k, v in res.items()}

    holder = tf.Module()
    holder.model = loaded  # its variables travel with the re-export
    try:
        concrete = serve.get_concrete_function()
        tf.saved_model.save(holder, str(dst), signatures={SIGNATURE: concrete})
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{STEP}: re-export at static shapes {[s['static_shape'] for s in inputs]} failed: "
                              f"{type(e).__name__}: {str(e)[:400]}") from None


# ----------------------------------------------------------------------------------------------- conversion


_NOT_BUILTIN = re.compile(r"'(?:tf|tfl)\.(\w+)' op is neither a custom op nor a flex op")
_SELECT_LIST = re.compile(r"(?:TF Select|Flex|Custom) ops:\s*([^\n]+)")
_NOT_QUANTIZABLE = re.compile(r"[Qq]uantization not yet supported for op:?\s*'?([\w.]+)'?")


def _strip_locations(line: str) -> str:
    """An MLIR diagnostic without its `loc(...)` prefixes (nested call sites), which say nothing useful here."""
    out, i = [], 0
    while i < len(line):
        if line.startswith("loc(", i):
            depth, i = 1, i + 4
            while i < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[i], 0)
                i += 1
            while i < len(line) and line[i] in ":) ":
                i += 1
        else:
            out.append(line[i])
            i += 1
    return "".join(out).strip()


def converter_failure(message: str) -> tuple[list[str], str]:
    """(op types, summary) of a TFLite converter error message: ops TFLite has no builtin kernel for (they would
    need TF Select / Flex ops, which LiteRT.js lacks), or ops the int8 quantizer cannot quantize."""
    ops = set(_NOT_BUILTIN.findall(message))
    for m in _SELECT_LIST.findall(message):
        ops.update(o.strip().removeprefix("Flex") for o in m.split(",") if o.strip())
    ops.update(o.split(".")[-1] for o in _NOT_QUANTIZABLE.findall(message))
    lines = [_strip_locations(ln.strip()) for ln in message.splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith("Some ops are not supported") or _NOT_QUANTIZABLE.search(ln)]
    errors = [ln for ln in lines if "error:" in ln.lower()]
    return sorted(ops), (said or errors or lines or ["no message"])[0][:400]


def _representative(calibration: dict[str, np.ndarray], inputs: list[dict], axes) -> Iterator[dict[str, np.ndarray]]:
    """Calibration samples one at a time, shaped as the model takes them, keyed by signature name."""
    from pipeline.evaluate.batching import batches, pad_to

    names = [s["name"] for s in inputs]
    missing = [n for n in names if n not in calibration]
    if missing:
        raise ConversionError(f"{STEP}: calibration data lacks input(s) {missing} (has {sorted(calibration)})")
    data = {n: calibration[n] for n in names}
    for k, feed in enumerate(batches(data, 1, axes)):
        if k >= CALIBRATION_LIMIT:
            return
        out = {}
        for s in inputs:
            try:
                arr = pad_to(np.asarray(feed[s["name"]], dtype=js_dtype(s["dtype"])), s["static_shape"], s.get("pad"),
                             f"calibration sample {k} of {s['name']}")
            except ValueError as e:
                raise ConversionError(f"{STEP}: {e}") from None
            out[s["signature_key"]] = arr
        yield out


def _int8_converter(static_sm: Path, calibration, inputs: list[dict], axes):
    """The TFLite converter set up for full-integer int8 (float32 input and output kept), and its calibration
    samples (keyed by signature name)."""
    tf = tensorflow()
    if not calibration:
        raise ConversionError(f"{STEP}: full-integer int8 needs calibration samples (data.calibration)")
    samples = list(_representative(calibration, inputs, axes))
    if not samples:
        raise ConversionError(f"{STEP}: no calibration samples")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(static_sm), signature_keys=[SIGNATURE])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.float32   # the page feeds floats; Quantize/Dequantize at the edges
    converter.inference_output_type = tf.float32
    return converter, samples


def _converted(quantization: str | None, run):
    """`run()` (a conversion), its failures named: ops without a builtin kernel or an int8 one, else the summary."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the int8 calibrator's "tf.lite.Interpreter is deprecated"
            return run()
    except Exception as e:  # noqa: BLE001 - ConverterError, RuntimeError from the calibrator, ...
        msg = str(e)
        ops, summary = converter_failure(msg)
        if ops:
            why = ("no int8 kernel / not quantizable"
                   if quantization in ("int8", *MIXED) and _NOT_QUANTIZABLE.search(msg)
                   else "not a TFLite builtin op (would need TF Select / Flex ops, which LiteRT.js lacks)")
            raise UnsupportedOp(STEP, ops, f"{why}: {summary}") from None
        raise ConversionError(f"{STEP}: {type(e).__name__}: {summary}") from None


def _convert(static_sm: Path, quantization: str | None, calibration, inputs: list[dict], axes) -> bytes:
    tf = tensorflow()
    if quantization == "int8":
        converter, _ = _int8_converter(static_sm, calibration, inputs, axes)
        return _converted(quantization, converter.convert)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(static_sm), signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex: LiteRT.js has no TF kernels
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return _converted(quantization, converter.convert)


# ----------------------------------------------------------------------------------------------- int8_mixed
# The sensitivity pass: which layers to keep float, measured on calibration samples only (never the evaluation
# data), against the float32 TFLite model made from the same SavedModel.
SENSITIVITY_SAMPLES = 200        # calibration samples each trial is judged on (evenly spread over the set)
SENSITIVITY_STATS_SAMPLES = 8    # calibration samples the debugger's per-layer statistics are taken on
SENSITIVITY_MAX_FLOAT = 8        # at most this many layers kept float: past that it is no longer an int8 model
SENSITIVITY_MAX_TRIALS = 16      # layers tried (in order of their error), kept or not
SENSITIVITY_MARGIN = 0.02        # agreement to reach on calibration samples: the budget's bound + this
SENSITIVITY_MIN_GAIN = 0.02      # a layer is kept only if it lowers the output error by >= 2 % (relative) ...
#                                  ... or, where the budget bounds top-1 agreement, raises that agreement


def _agreement_goals(recipe, io: dict) -> dict[str, float]:
    """Outputs judged by top-1 agreement in the recipe's budget -> the agreement the pass aims for on calibration
    samples (the bound + SENSITIVITY_MARGIN, at most 1). Empty without a recipe or such a bound: the pass then
    lowers the output error."""
    if recipe is None:
        return {}
    kinds = {o.name: o.kind for o in recipe.outputs}
    goals = {}
    for o in io["outputs"]:
        bound = recipe.budget.for_output(o["name"]).get("min_top1_agreement")
        if bound is not None and kinds.get(o["name"]) in ("logits", "probabilities"):
            goals[o["name"]] = min(1.0, bound + SENSITIVITY_MARGIN)
    return goals


class _Trials:
    """Runs candidate models on the probe samples (1 thread, the interpreter's XNNPACK as LiteRT.js uses it) and
    compares them with the float model: relative squared output error and, per goal output, top-1 agreement."""

    def __init__(self, float_model: bytes, samples: list[dict], io: dict, recipe):
        from pipeline.evaluate.metrics import decisions

        self.samples, self.io = samples, io
        self.kinds = {o.name: o.kind for o in (recipe.outputs if recipe is not None else [])}
        self.decisions = decisions
        self.ref = self.outputs(float_model)

    def outputs(self, model: bytes) -> dict[str, np.ndarray]:
        Interpreter, _ = _interpreter_class()
        runner = Interpreter(model_content=model, num_threads=1).get_signature_runner(SIGNATURE)
        got = [runner(**s) for s in self.samples]
        return {o["name"]: np.stack([np.asarray(g[o["signature_key"]], dtype=np.float64) for g in got])
                for o in self.io["outputs"]}

    def measure(self, model: bytes, goals: dict[str, float]) -> dict:
        got = self.outputs(model)
        errs = [float(((got[k] - r) ** 2).sum() / max(float((r ** 2).sum()), 1e-30)) for k, r in self.ref.items()]
        out = {"error": float(np.mean(errs))}
        if goals:
            agree = {k: float((self.decisions(got[k].reshape(len(got[k]), -1), self.kinds[k])
                               == self.decisions(self.ref[k].reshape(len(got[k]), -1), self.kinds[k])).mean())
                     for k in goals}
            out["top1_agreement"] = min(agree.values())
            out["reached"] = all(agree[k] >= g for k, g in goals.items())
        return out


def _layer_statistics(debugger) -> list[dict]:
    """The debugger's per-layer statistics (its CSV dump: op, error metrics, scale, the float tensor's name), each
    with rmse/scale: a layer's int8 error in quantization steps (rounding alone gives about 0.29)."""
    import csv
    import io as _io

    buf = _io.StringIO()
    debugger.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(_io.StringIO(buf.getvalue())):
        scale = float(r["scale"])
        mse = float(r["mean_squared_error"])
        rows.append({"node": r["tensor_name"], "op": r["op_name"], "scale": scale,
                     "mean_abs_error": float(r["mean_abs_error"]) if r.get("mean_abs_error") else None,
                     "rmse_over_scale": float(np.sqrt(mse) / scale) if scale > 0 else float("inf")})
    return rows


def int8_mixed(static_sm: Path, calibration, inputs: list[dict], axes, io: dict, recipe=None, *,
               samples: int = SENSITIVITY_SAMPLES, stats_samples: int = SENSITIVITY_STATS_SAMPLES,
               max_float: int = SENSITIVITY_MAX_FLOAT, max_trials: int = SENSITIVITY_MAX_TRIALS,
               min_gain: float = SENSITIVITY_MIN_GAIN) -> tuple[bytes, dict]:
    """Full-integer int8 (as ``int8``) with the layers where int8 hurts most kept float, by TensorFlow's own
    selective quantization (``tf.lite.experimental.QuantizationDebugger``, ``denylisted_nodes``). On calibration
    samples only: the debugger's per-layer statistics rank the layers by rmse/scale (their int8 error in
    quantization steps); then, in that order, each layer is tried float on top of those already kept, and kept when
    it raises top-1 agreement with the float32 TFLite model (outputs the budget bounds by top-1 agreement) or else
    lowers the output error by at least ``min_gain``; until every such output reaches its bound +
    SENSITIVITY_MARGIN, ``max_float`` layers are kept, or ``max_trials`` were tried. Without a top-1 bound it
    lowers the output error only. Deterministic (fixed samples, 1 thread). Returns the model and the record the
    manifest keeps (``quantization_record``): every layer kept float, why, and the figures measured."""
    import time

    from pipeline.families import own_calibration

    own_calibration(recipe, "int8_mixed")
    tf = tensorflow()
    t0 = time.perf_counter()
    converter, calib = _int8_converter(static_sm, calibration, inputs, axes)
    pick = np.unique(np.linspace(0, len(calib) - 1, min(samples, len(calib))).round().astype(int))
    probe = [calib[i] for i in pick]
    stats_pick = np.unique(np.linspace(0, len(calib) - 1, min(stats_samples, len(calib))).round().astype(int))
    float_model = _convert(static_sm, None, calibration, inputs, axes)
    trials = _Trials(float_model, probe, io, recipe)
    goals = _agreement_goals(recipe, io)

    def debug_dataset():
        # The debugger feeds a list in its interpreter's input order; inputs are named serving_default_<key>:0.
        order = [d["name"] for d in debugger._quant_interpreter.get_input_details()]  # noqa: SLF001
        keys = []
        for name in order:
            key = next((s["signature_key"] for s in inputs
                        if name in (f"{SIGNATURE}_{s['signature_key']}:0", s["signature_key"])), None)
            if key is None:
                raise ConversionError(f"{STEP} int8_mixed: cannot match the debug model's input {name!r} to the "
                                      f"signature's {[s['signature_key'] for s in inputs]}")
            keys.append(key)
        for i in stats_pick:
            yield [calib[i][k] for k in keys]

    def build():
        dbg = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=debug_dataset)
        return dbg

    debugger = _converted("int8_mixed", build)
    _converted("int8_mixed", debugger.run)
    layers = _layer_statistics(debugger)
    t_stats = time.perf_counter() - t0

    def quantized(denylist: list[str]) -> bytes:
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(denylist))
        return _converted("int8_mixed", debugger.get_nondebug_quantized_model)

    full = trials.measure(quantized([]), goals)
    current, kept, steps, tried = full, [], [], []
    ranked = sorted(layers, key=lambda r: (-r["rmse_over_scale"], r["node"]))
    for layer in ranked:
        if current.get("reached") or len(kept) >= max_float or len(tried) >= max_trials:
            break
        m = trials.measure(quantized(kept + [layer["node"]]), goals)
        gain = 1 - m["error"] / current["error"] if current["error"] > 0 else 0.0
        better = (m["top1_agreement"] > current["top1_agreement"]
                  or (m["top1_agreement"] == current["top1_agreement"] and gain >= min_gain)) if goals \
            else gain >= min_gain
        tried.append({"node": layer["node"], "op": layer["op"], "rmse_over_scale": layer["rmse_over_scale"],
                      **{f"{k}_after": v for k, v in m.items() if k != "reached"}, "kept": better})
        if better:
            what = (f"top-1 agreement {current['top1_agreement']:.3f} -> {m['top1_agreement']:.3f}, " if goals
                    else "")
            steps.append({"node": layer["node"], "op": layer["op"], "rmse_over_scale": layer["rmse_over_scale"],
                          "error_before": current["error"], "error_after": m["error"],
                          **({"top1_agreement_before": current["top1_agreement"],
                              "top1_agreement_after": m["top1_agreement"]} if goals else {}),
                          "why": f"int8 error {layer['rmse_over_scale']:.2f} quantization steps (rmse/scale); "
                                 f"on {len(pick)} calibration samples float it brings {what}output error "
                                 f"{current['error']:.4g} -> {m['error']:.4g}"})
            kept.append(layer["node"])
            current = m
    model = quantized(kept)
    record = {
        "method": "tf.lite.experimental.QuantizationDebugger denylisted_nodes (full-integer int8 elsewhere, "
                  "per-channel int8 weights, int8 activations)",
        "calibration": {"samples": len(calib), "sensitivity_samples": len(pick),
                        "statistics_samples": len(stats_pick)},
        "error_metric": "mean over outputs of ||int8 - float||^2 / ||float||^2 against the float32 TFLite model "
                        "on calibration samples",
        **({"goal": {"top1_agreement": goals, "reached": bool(current.get("reached"))}} if goals else {}),
        "all_int8": full, "result": current, "layers": len(layers),
        "float_nodes": steps, "tried": tried,
        "worst_layers": [{k: r[k] for k in ("node", "op", "rmse_over_scale")} for r in ranked[:10]],
        "rule": {"max_float": max_float, "max_trials": max_trials, "min_gain": min_gain,
                 "margin": SENSITIVITY_MARGIN},
        "seconds": {"statistics": round(t_stats, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    return model, record


# ----------------------------------------------------------------------------------------------- int8_partial
# int8_mixed starts from the all-int8 model and buys float layers back; on a network whose int8 error is spread over
# every layer (MobileNetV2: no few layers matter, each float layer lowers the error by a few %) that cannot reach a
# tight budget. int8_partial starts from the float model and makes int8 only the ops that, measured on calibration
# samples, keep the model inside its goal: on MobileNetV2 most ops in the middle of the network cost almost nothing
# in int8 alone, the stem, the 160-channel stage (activation ranges of +-30 at its residual adds) and the input
# quantization cost the budget.
PARTIAL_MAX_ERROR = 1e-3         # without a top-1 bound: the output error (relative, squared) the int8 ops may add


def _op_nodes(model: bytes) -> list[dict]:
    """Every op of a (calibrated, float) model in execution order: its node name (its first output tensor's, as
    denylisted_nodes names it), op type and multiply-accumulates (convolutions and fully connected layers; 0 else)."""
    ops, tensors = _graph(model)
    nodes = []
    for op in ops:
        outs = [o for o in op["outputs"] if o in tensors]
        if not outs:
            continue
        shape = [int(d) for d in tensors[outs[0]]["shape"]]
        weights = ([int(d) for d in tensors[op["inputs"][1]]["shape"]]
                   if len(op["inputs"]) > 1 and op["inputs"][1] in tensors else [])
        name = op["op_name"]
        macs = 0
        if name == "CONV_2D" and len(weights) == 4:
            macs = int(np.prod(shape[:-1])) * int(np.prod(weights))
        elif name == "DEPTHWISE_CONV_2D" and len(weights) == 4:
            macs = int(np.prod(shape)) * weights[1] * weights[2]
        elif name == "FULLY_CONNECTED" and len(weights) == 2:
            macs = int(np.prod(shape[:-1])) * int(np.prod(weights))
        nodes.append({"node": tensors[outs[0]]["name"], "op": name, "macs": macs})
    return nodes


def _int8_outputs(model: bytes) -> set[str]:
    """Names of the tensors an op of `model` produces in int8, and of float outputs a DEQUANTIZE makes from int8."""
    ops, tensors = _graph(model)
    out = set()
    for op in ops:
        ins = [np.dtype(tensors[i]["dtype"]).name for i in op["inputs"] if i in tensors]
        for o in op["outputs"]:
            if o in tensors and (np.dtype(tensors[o]["dtype"]).name == "int8"
                                 or (op["op_name"] == "DEQUANTIZE" and ins == ["int8"])):
                out.add(tensors[o]["name"])
    return out


def int8_partial(static_sm: Path, calibration, inputs: list[dict], axes, io: dict, recipe=None, *,
                 samples: int = SENSITIVITY_SAMPLES, max_error: float = PARTIAL_MAX_ERROR) -> tuple[bytes, dict]:
    """The float model with int8 (as ``int8``: per-channel int8 weights, int8 activations calibrated on the
    recipe's calibration samples) only where the calibration samples show it harmless; the rest float, by
    TensorFlow's selective quantization (``denylisted_nodes`` on the calibrated model, as
    QuantizationDebugger applies it). On calibration samples only (never the evaluation data):

    1. each op is made int8 alone (every other op float) and measured against the float32 TFLite model: top-1
       agreement on the outputs the budget bounds by it, and the output error;
    2. in order of that error (smallest first; among equals the op with more multiply-accumulates first), each op
       whose own measurement stays inside the goal is added to the int8 ops when the model with it and those
       already added still does: top-1 agreement >= the budget's bound + SENSITIVITY_MARGIN on every such
       output, else (no top-1 bound) output error <= ``max_error``.

    Deterministic (fixed samples, 1 thread). Returns the model and the record the manifest keeps
    (``quantization_record``): the ops kept float and why, the int8 ops, the share of the multiply-accumulates in
    int8, and the figures measured. An op type the quantizer cannot make int8 stays float whatever it is asked."""
    import time

    from pipeline.families import own_calibration
    from pipeline.outcome import NotApplicable

    own_calibration(recipe, "int8_partial")
    tf = tensorflow()
    from tensorflow.lite.python.convert import mlir_quantize  # what QuantizationDebugger quantizes with

    t0 = time.perf_counter()
    converter, calib = _int8_converter(static_sm, calibration, inputs, axes)
    converter._experimental_calibrate_only = True  # noqa: SLF001 - the float model with its calibrated ranges
    calibrated = _converted("int8_partial", converter.convert)
    pick = np.unique(np.linspace(0, len(calib) - 1, min(samples, len(calib))).round().astype(int))
    probe = [calib[i] for i in pick]
    float_model = _convert(static_sm, None, calibration, inputs, axes)
    trials = _Trials(float_model, probe, io, recipe)
    goals = _agreement_goals(recipe, io)
    nodes = _op_nodes(calibrated)
    names = [n["node"] for n in nodes]

    def quantized(int8: set[str]) -> bytes:
        deny = [n for n in names if n not in int8]
        return _converted("int8_partial", lambda: mlir_quantize(
            calibrated, False, input_data_type=tf.float32, output_data_type=tf.float32, denylisted_nodes=deny))

    def inside(m: dict) -> bool:
        return bool(m["reached"]) if goals else m["error"] <= max_error

    def figures(m: dict) -> str:
        return (f"top-1 agreement {m['top1_agreement']:.3f}, " if goals else "") + f"output error {m['error']:.3g}"

    goal = (" and ".join(f"top-1 agreement >= {g:.3f}" for g in goals.values()) if goals
            else f"output error <= {max_error:g}")
    alone = []
    for n in nodes:
        m = trials.measure(quantized({n["node"]}), goals)
        alone.append({**n, **{k: v for k, v in m.items() if k != "reached"}, "inside": inside(m)})
    t_alone = time.perf_counter() - t0
    order = sorted(alone, key=lambda r: (r["error"], -r["macs"], names.index(r["node"])))
    int8, current, why_float = [], None, {}
    for r in order:
        if not r["inside"]:
            why_float[r["node"]] = f"int8 alone already outside the goal ({goal}): {figures(r)}"
            continue
        m = trials.measure(quantized(set(int8) | {r["node"]}), goals)
        if inside(m):
            int8.append(r["node"])
            current = m
        else:
            why_float[r["node"]] = (f"int8 alone {figures(r)}; with the {len(int8)} int8 ops before it "
                                    f"{figures(m)}: outside the goal ({goal})")
    if not int8:
        raise NotApplicable(f"int8_partial: no op can be int8 inside the goal ({goal}) on {len(pick)} calibration "
                            "samples: the model stays float (litert_fp32)")
    model = quantized(set(int8))
    # What the quantizer actually made int8 (an op it cannot quantize stays float whatever it is asked): the op's
    # output int8, or the model's float output dequantized from it under the op's name.
    made = _int8_outputs(model)
    for n in [n for n in int8 if n not in made]:
        int8.remove(n)
        why_float[n] = "asked int8, the quantizer kept it float (no int8 kernel for it)"
    total = sum(n["macs"] for n in nodes) or 1
    by_node = {r["node"]: r for r in alone}
    record = {
        "method": "float model, int8 only where calibration samples show it harmless: TFLite's calibrated model "
                  "quantized with every other op in denylisted_nodes (per-channel int8 weights, int8 activations "
                  "ranged by min/max on the calibration samples); ops measured int8 alone, then added in order of "
                  "their error while the model stays inside the goal",
        "calibration": {"samples": len(calib), "sensitivity_samples": len(pick)},
        "error_metric": "mean over outputs of ||int8 - float||^2 / ||float||^2 against the float32 TFLite model "
                        "on calibration samples",
        "goal": ({"top1_agreement": goals, "reached": bool(current and current.get("reached"))} if goals
                 else {"max_error": max_error}),
        "result": current, "ops": len(nodes), "int8_ops": len(int8),
        "int8_mac_share": round(sum(by_node[n]["macs"] for n in int8) / total, 4),
        "int8_nodes": [{k: by_node[n][k] for k in ("node", "op", "macs", "error")} for n in names if n in int8],
        "float_nodes": [{"node": n["node"], "op": n["op"], "macs": n["macs"], "why": why_float[n["node"]]}
                        for n in nodes if n["node"] in why_float],
        "alone": [{k: v for k, v in r.items() if k != "inside"} for r in alone],
        "rule": {"margin": SENSITIVITY_MARGIN, **({} if goals else {"max_error": max_error})},
        "seconds": {"alone": round(t_alone, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    return model, record


def quantization_record(path: Path) -> dict | None:
    """What a model says of its quantization (int8_mixed, int8_partial: which layers were kept float and why), from
    the manifest beside it."""
    manifest = Path(path).parent / MANIFEST_FILE
    return json.loads(manifest.read_text()).get(QUANT_RECORD_KEY) if manifest.is_file() else None


def _plain_interpreter(model: bytes):
    """The model in the interpreter as the flatbuffer has it: no delegate applied (XNNPACK would fuse its ops)."""
    Interpreter, OpResolverType = _interpreter_class()
    return Interpreter(model_content=model, num_threads=1,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def _graph(model: bytes) -> tuple[list[dict], dict[int, dict]]:
    """The model's ops in execution order and its tensors by index (the plain interpreter's view)."""
    it = _plain_interpreter(model)
    return it._get_ops_details(), {d["index"]: d for d in it.get_tensor_details()}  # noqa: SLF001 - no public op list


def _model_ops(model: bytes) -> tuple[list[str], dict[str, int]]:
    """Op types in the flatbuffer (no delegate applied) and how many tensors of each type it holds."""
    try:
        it = _plain_interpreter(model)
        it.allocate_tensors()
    except Exception as e:  # noqa: BLE001 - the interpreter refusing the model
        raise ConversionError(f"{STEP}: the LiteRT interpreter refuses the converted model: "
                              f"{type(e).__name__}: {str(e)[:400]}") from None
    ops = sorted({d["op_name"] for d in it._get_ops_details()})
    types: dict[str, int] = {}
    for d in it.get_tensor_details():
        name = np.dtype(d["dtype"]).name
        types[name] = types.get(name, 0) + 1
    return ops, types


def _signature(model: bytes) -> dict:
    Interpreter, _ = _interpreter_class()
    it = Interpreter(model_content=model, num_threads=1)
    sigs = it.get_signature_list()
    if SIGNATURE not in sigs:
        raise ConversionError(f"{STEP}: the model has no {SIGNATURE!r} signature (has {list(sigs)})")
    runner = it.get_signature_runner(SIGNATURE)
    return {"inputs": runner.get_input_details(), "outputs": runner.get_output_details()}


def _verify_fp32(model: Path, sm_dir: Path, inputs: list[dict], manifest: dict, rtol=1e-3, atol=1e-4) -> float:
    """The float32 model in the interpreter against the SavedModel it came from, on one random model-shaped feed."""
    rng = np.random.default_rng(0)
    feed = {}
    for s in inputs:
        dt = np.dtype(js_dtype(s["dtype"]))
        # integers 0 and 1, as random_inputs (pipeline.evaluate.samples) feeds the SavedModel's own check
        feed[s["name"]] = (rng.standard_normal(s["static_shape"]).astype(dt) if dt.kind == "f"
                           else rng.integers(0, 2, size=s["static_shape"]).astype(dt))
    if any(v.ndim == 0 for v in feed.values()):
        return 0.0  # saved_model_outputs slices every input along its first axis: a scalar has none
    own = {s["name"]: feed[s["name"]].astype(s["dtype"]) for s in inputs}  # the SavedModel takes its own types
    ref = _tfjs_saved_model().saved_model_outputs(sm_dir, own, batch=max(len(v) for v in feed.values()))  # one call
    got = LiteRtModel(model, 1, manifest)(feed)
    worst = 0.0
    for name, r in ref.items():
        g = got[name]
        if g.shape != r.shape:
            raise ConversionError(f"{STEP} verify: output {name}: shape {g.shape} != SavedModel's {r.shape}")
        err = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if r.size else 0.0
        worst = max(worst, err)
        if not np.allclose(g, r, rtol=rtol, atol=atol):
            raise ConversionError(f"{STEP} verify: output {name} differs from the SavedModel (max abs error {err:.3g})")
    return worst


def saved_model_to_tflite(saved_model_dir: str | Path, out_dir: str | Path, *, quantization: str | None = None,
                          calibration: dict[str, np.ndarray] | None = None, recipe: Any = None,
                          verify: bool = True) -> list[Path]:
    """SavedModel (with io_signature.json, as the tfjs family writes it) -> ``model.tflite`` +
    ``litert_manifest.json`` in ``out_dir`` (written through a temp folder, model last). Returns them, model first.

    ``quantization``: one of QUANTIZATIONS. ``calibration`` (int8): stacked samples keyed by recipe input names.
    ``recipe``: for static shapes and batch axes (without it: the SavedModel's shapes, a leading dynamic batch as 1).
    """
    from pipeline.evaluate.batching import LEADING, BatchAxes

    sm_dir, out_dir = Path(saved_model_dir), Path(out_dir)
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    io_path = sm_dir / _tfjs_saved_model().IO_FILE
    if not io_path.is_file():
        raise ConversionError(f"{STEP}: {io_path} missing (SavedModel not written by pipeline.families.tfjs)")
    io = json.loads(io_path.read_text())
    inputs = static_io(io, recipe)
    out_axes = _output_batch_axes(io, recipe)
    axes = BatchAxes.of(recipe) if recipe is not None else LEADING

    with scratch_dir(out_dir / MODEL_FILE) as scratch:
        static_sm = scratch / "static_saved_model"
        _static_saved_model(sm_dir, io, inputs, static_sm)
        record = None
        if quantization == "int8_mixed":
            model, record = int8_mixed(static_sm, calibration, inputs, axes, io, recipe)
        elif quantization == "int8_partial":
            model, record = int8_partial(static_sm, calibration, inputs, axes, io, recipe)
        else:
            model = _convert(static_sm, quantization, calibration, inputs, axes)
    ops, tensor_types = _model_ops(model)
    sig = _signature(model)
    manifest = {
        "format": "pipeline-litert-manifest/1", "model": MODEL_FILE, "signature": SIGNATURE,
        "quantization": quantization, "ops": ops, "tensor_dtypes": tensor_types,
        "inputs": [], "outputs": [],
        "toolchain": {**(io.get("toolchain") or {}), **litert_versions()},
    }
    for s in inputs:
        d = sig["inputs"].get(s["signature_key"])
        if d is None:
            raise ConversionError(f"{STEP}: the model has no input {s['signature_key']!r} ({list(sig['inputs'])})")
        manifest["inputs"].append({"name": s["name"], "signature_key": s["signature_key"],
                                   "dtype": np.dtype(d["dtype"]).name, "shape": [int(x) for x in d["shape"]],
                                   "batch_axis": s["batch_axis"], "layout": s.get("layout"), "pad": s.get("pad")})
    for o in io["outputs"]:
        d = sig["outputs"].get(o["signature_key"])
        if d is None:
            raise ConversionError(f"{STEP}: the model has no output {o['signature_key']!r} ({list(sig['outputs'])})")
        manifest["outputs"].append({"name": o["name"], "signature_key": o["signature_key"],
                                    "dtype": np.dtype(d["dtype"]).name, "shape": [int(x) for x in d["shape"]],
                                    "batch_axis": out_axes[o["name"]]})
    if record is not None:
        manifest[QUANT_RECORD_KEY] = record
    if quantization in ("dynamic_int8", "int8", *MIXED) and not tensor_types.get("int8"):
        manifest["note"] = "the converter quantized no tensor (dynamic range: only weights of >= 1024 elements)"
    with atomic_dir(out_dir, merge=True, last=MODEL_FILE) as tmp:
        (tmp / MODEL_FILE).write_bytes(model)
        _write_json(tmp / MANIFEST_FILE, manifest)
        if verify and quantization is None:
            manifest["verify_max_abs_error"] = _verify_fp32(tmp / MODEL_FILE, sm_dir, inputs, manifest)
            _write_json(tmp / MANIFEST_FILE, manifest)
    return [out_dir / MODEL_FILE, out_dir / MANIFEST_FILE]
