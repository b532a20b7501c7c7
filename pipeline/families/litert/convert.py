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
float32 input and output kept (Quantize/Dequantize at the boundary) so the page feeds floats.

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
QUANTIZATIONS = (None, "float16", "dynamic_int8", "int8")
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
        out.append({**s, "static_shape": [int(d) for d in shape], "batch_axis": axis})
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
    from pipeline.evaluate.batching import batches

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
            arr = np.asarray(feed[s["name"]], dtype=js_dtype(s["dtype"]))
            if list(arr.shape) != s["static_shape"]:
                raise ConversionError(f"{STEP}: calibration sample {k} of {s['name']} has shape {list(arr.shape)}, "
                                      f"the model is converted for {s['static_shape']}")
            out[s["signature_key"]] = arr
        yield out


def _convert(static_sm: Path, quantization: str | None, calibration, inputs: list[dict], axes) -> bytes:
    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(static_sm), signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex: LiteRT.js has no TF kernels
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        if not calibration:
            raise ConversionError(f"{STEP}: full-integer int8 needs calibration samples (data.calibration)")
        samples = list(_representative(calibration, inputs, axes))
        if not samples:
            raise ConversionError(f"{STEP}: no calibration samples")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: iter(samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32   # the page feeds floats; Quantize/Dequantize at the edges
        converter.inference_output_type = tf.float32
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the int8 calibrator's "tf.lite.Interpreter is deprecated"
            return converter.convert()
    except Exception as e:  # noqa: BLE001 - ConverterError, RuntimeError from the calibrator, ...
        msg = str(e)
        ops, summary = converter_failure(msg)
        if ops:
            why = ("no int8 kernel / not quantizable" if quantization == "int8" and _NOT_QUANTIZABLE.search(msg)
                   else "not a TFLite builtin op (would need TF Select / Flex ops, which LiteRT.js lacks)")
            raise UnsupportedOp(STEP, ops, f"{why}: {summary}") from None
        raise ConversionError(f"{STEP}: {type(e).__name__}: {summary}") from None


def _model_ops(model: bytes) -> tuple[list[str], dict[str, int]]:
    """Op types in the flatbuffer (no delegate applied) and how many tensors of each type it holds."""
    Interpreter, OpResolverType = _interpreter_class()
    try:
        it = Interpreter(model_content=model, num_threads=1,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
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
        feed[s["name"]] = (rng.standard_normal(s["static_shape"]).astype(dt) if dt.kind == "f"
                           else rng.integers(0, 4, size=s["static_shape"]).astype(dt))
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
                                   "batch_axis": s["batch_axis"], "layout": s.get("layout")})
    for o in io["outputs"]:
        d = sig["outputs"].get(o["signature_key"])
        if d is None:
            raise ConversionError(f"{STEP}: the model has no output {o['signature_key']!r} ({list(sig['outputs'])})")
        manifest["outputs"].append({"name": o["name"], "signature_key": o["signature_key"],
                                    "dtype": np.dtype(d["dtype"]).name, "shape": [int(x) for x in d["shape"]],
                                    "batch_axis": out_axes[o["name"]]})
    if quantization in ("dynamic_int8", "int8") and not tensor_types.get("int8"):
        manifest["note"] = "the converter quantized no tensor (dynamic range: only weights of >= 1024 elements)"
    with atomic_dir(out_dir, merge=True, last=MODEL_FILE) as tmp:
        (tmp / MODEL_FILE).write_bytes(model)
        _write_json(tmp / MANIFEST_FILE, manifest)
        if verify and quantization is None:
            manifest["verify_max_abs_error"] = _verify_fp32(tmp / MODEL_FILE, sm_dir, inputs, manifest)
            _write_json(tmp / MANIFEST_FILE, manifest)
    return [out_dir / MODEL_FILE, out_dir / MANIFEST_FILE]
