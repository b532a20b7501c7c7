"""The TensorFlow.js family: SavedModel (from ONNX via onnx2tf, or from Keras 3) -> tfjs graph model.

Plain functions, each writing its result atomically (a temp folder beside the destination, then ``os.replace``)
and raising :class:`TfjsConversionError` (a :class:`pipeline.convert.onnx.ConversionError`) naming the step and
the cause. An op a converter cannot handle raises :class:`UnsupportedOp`, which names the op and the stage.

Layout decision: inputs keep the recipe's layout. onnx2tf runs with ``-kat <every input>`` so an NCHW ONNX input
stays NCHW in the SavedModel (onnx2tf inserts one Transpose inside the graph); the harness feeds the same samples
to the native model and to every browser variant. Keras sources take whatever the Keras model takes (our
Fashion-MNIST model takes NCHW and permutes internally).

Every SavedModel written here carries ``io_signature.json`` (signature keys <-> recipe names, dtype, shape,
layout); every tfjs folder carries ``tfjs_manifest.json`` (recipe names <-> graph-model node / signature names)
so the browser adapter feeds and collects by the recipe's names.

Toolchain (see shared/TOOLCHAIN.md): tensorflow-cpu 2.21.0, tensorflowjs 4.22.0 (--no-deps, imported with two
stand-in modules), onnx2tf 2.6.9 (--no-deps --ignore-requires-python; calls the ``onnxsim`` command),
tf2onnx 1.17.0 (--no-deps) for Keras -> ONNX. ``TF_ENABLE_ONEDNN_OPTS=0`` while converting, otherwise grappler
fuses conv+hardswish into an op no tfjs backend implements.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.convert.onnx import ConversionError
from pipeline.families import BuildInputs, Prerequisite, VariantSpec

# Must be set before TensorFlow is first imported in this process (see module docstring).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IO_FILE = "io_signature.json"          # beside saved_model.pb
MANIFEST_FILE = "tfjs_manifest.json"   # beside model.json
MODEL_JSON = "model.json"
SIGNATURE = "serving_default"
QUANTIZATIONS = (None, "float16", "uint8")
ONNX2TF_TIMEOUT_S = 1800
# Activations the tfjs executors accept inside _FusedConv2D / FusedDepthwiseConv2dNative / _FusedMatMul
# (tfjs-converter executors + the wasm/webgl/webgpu fused kernels); anything else fails only in the browser.
TFJS_FUSED_OPS = {"biasadd", "relu", "relu6", "elu", "leakyrelu", "prelu", "sigmoid"}
FUSED_NODE_OPS = {"_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedMatMul", "FusedConv2D"}

__all__ = [
    "TfjsConversionError", "UnsupportedOp", "onnx_to_saved_model", "keras_to_saved_model", "saved_model_to_tfjs",
    "keras_to_onnx", "keras_outputs", "saved_model_outputs", "prerequisites", "variants", "toolchain_versions",
]


class TfjsConversionError(ConversionError):
    """A TF/tfjs conversion step failed: ``step`` names it, ``cause`` says why."""

    def __init__(self, step: str, cause: str):
        self.step, self.cause = step, cause
        super().__init__(f"{step}: {cause}")


class UnsupportedOp(TfjsConversionError):
    """An op one converter (stage) cannot handle."""

    def __init__(self, stage: str, op: str, detail: str = ""):
        self.stage, self.op = stage, op
        super().__init__(stage, f"unsupported op {op}" + (f" ({detail})" if detail else ""))


# ----------------------------------------------------------------------------------------------- imports


def _stand_ins() -> None:
    """tensorflowjs imports jax2tf and tensorflow_decision_forests at module load even for SavedModel input.
    Neither is installed (they would drag TF 2.19 / protobuf 5 along): empty stand-ins satisfy the imports."""

    def _unavailable(*_a, **_k):
        raise NotImplementedError("not installed here (stand-in module): JAX / decision-forest inputs unsupported")

    for name in ("tensorflowjs.converters.jax_conversion", "tensorflow_decision_forests"):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.convert_jax = _unavailable
            mod.__doc__ = "stand-in (pipeline.convert.tfjs)"
            sys.modules[name] = mod


def _tf():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise TfjsConversionError("import tensorflow", f"{e} (pip install tensorflow-cpu==2.21.0)") from None
    return tf


def _tfjs_saved_model_converter():
    _tf()
    _stand_ins()
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tensorflow_hub: "pkg_resources is deprecated"
            from tensorflowjs.converters import tf_saved_model_conversion_v2 as sm2
    except ImportError as e:
        raise TfjsConversionError("import tensorflowjs",
                                  f"{e} (pip install --no-deps tensorflowjs==4.22.0 tf-keras==2.21.0 "
                                  "tensorflow-hub==0.16.1; 'setuptools<81')") from None
    return sm2


def toolchain_versions() -> dict[str, str | None]:
    """Versions the SavedModel / tfjs results depend on (no heavy imports)."""
    from importlib import metadata

    out = {}
    for dist in ("tensorflow-cpu", "tensorflowjs", "onnx2tf", "tf2onnx", "keras", "tf-keras", "onnxsim"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ----------------------------------------------------------------------------------------------- helpers


def _publish_dir(tmp: Path, final: Path, last: str | None = None) -> None:
    """Make the finished temp folder `tmp` the folder `final`: one rename when `final` is absent or empty;
    otherwise (e.g. `final` is the caller's own temp folder) move the files in one by one, `last` at the end,
    so the entry file appears only when everything it references is there."""
    final = Path(final)
    if final.exists() and final.is_dir() and not any(final.iterdir()):
        final.rmdir()
    if not final.exists():
        os.replace(tmp, final)
        return
    names = sorted(p.name for p in tmp.iterdir())
    if last in names:
        names.remove(last)
        names.append(last)
    for name in names:
        dst = final / name
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        os.replace(tmp / name, dst)
    shutil.rmtree(tmp, ignore_errors=True)


def _scratch(final: Path) -> Path:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _match_names(wanted: list[str], available: list[str], what: str, step: str) -> dict[str, str]:
    """wanted name -> available name: exact, then sanitized, then by position when counts agree."""
    out: dict[str, str] = {}
    for w in wanted:
        if w in available:
            out[w] = w
        else:
            hits = [a for a in available if _sanitize(a) == _sanitize(w) or a.split(":")[0] == w]
            if len(hits) == 1:
                out[w] = hits[0]
    if len(out) < len(wanted):
        if len(wanted) == len(available):
            return dict(zip(wanted, available))
        raise TfjsConversionError(step, f"cannot map {what} {wanted} onto {available}")
    return out


def _output_key_order(keys: list[str]) -> list[str]:
    """SavedModel signature outputs come as output_0, output_1, ... (or named): order them as produced."""
    def k(name: str):
        m = re.fullmatch(r"output_(\d+)", name)
        return (0, int(m.group(1)), "") if m else (1, 0, name)

    return sorted(keys, key=k)


def _signature_io(sm_dir: Path, step: str):
    tf = _tf()
    try:
        loaded = tf.saved_model.load(str(sm_dir))
    except Exception as e:
        raise TfjsConversionError(step, f"cannot load SavedModel {sm_dir}: {type(e).__name__}: {str(e)[:300]}") from None
    if SIGNATURE not in loaded.signatures:
        raise TfjsConversionError(step, f"SavedModel has no {SIGNATURE!r} signature (has {list(loaded.signatures)})")
    fn = loaded.signatures[SIGNATURE]
    ins = fn.structured_input_signature[1]
    outs = fn.structured_outputs
    return loaded, fn, ins, outs


def _np_dtype(tf_dtype) -> str:
    return np.dtype(tf_dtype.as_numpy_dtype).name


def _shape_list(shape) -> list[int | None]:
    return [None if d is None else int(d) for d in shape]


def saved_model_outputs(saved_model_dir: str | Path, inputs: dict[str, np.ndarray], batch: int = 64) -> dict[str, np.ndarray]:
    """Run a SavedModel written here (TF, CPU) on inputs keyed by recipe names; outputs keyed by recipe names."""
    sm_dir = Path(saved_model_dir)
    io = json.loads((sm_dir / IO_FILE).read_text())
    tf = _tf()
    _, fn, _, _ = _signature_io(sm_dir, "run SavedModel")
    n = len(next(iter(inputs.values())))
    chunks: dict[str, list[np.ndarray]] = {o["name"]: [] for o in io["outputs"]}
    for i in range(0, n, max(1, batch)):
        feed = {s["signature_key"]: tf.constant(inputs[s["name"]][i:i + batch]) for s in io["inputs"]}
        res = fn(**feed)
        for o in io["outputs"]:
            chunks[o["name"]].append(res[o["signature_key"]].numpy())
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def _verify(sm_dir: Path, inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], step: str,
            rtol: float = 1e-3, atol: float = 1e-4) -> float:
    got = saved_model_outputs(sm_dir, inputs, batch=len(next(iter(inputs.values()))))
    worst = 0.0
    for name, ref in reference.items():
        if got[name].shape != ref.shape:
            raise TfjsConversionError(step, f"output {name}: shape {got[name].shape} != reference {ref.shape}")
        err = float(np.max(np.abs(got[name].astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        worst = max(worst, err)
        if not np.allclose(got[name], ref, rtol=rtol, atol=atol):
            raise TfjsConversionError(step, f"output {name} differs from the source model (max abs error {err:.3g})")
    return worst


def _example_inputs(specs: list[dict], batch: int = 2, seed: int = 0) -> dict[str, np.ndarray] | None:
    """Random inputs for a self-check; None when a non-batch dimension is dynamic."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = list(s["shape"])
        if any(d is None for d in shape[1:]):
            return None
        dt = np.dtype(s["dtype"])
        shape = [batch] + shape[1:]
        out[s["name"]] = (rng.standard_normal(shape).astype(dt) if dt.kind == "f"
                          else rng.integers(0, 4, size=shape).astype(dt))
    return out


# ----------------------------------------------------------------------------------------------- ONNX -> SavedModel


_ONNX2TF_OP_LINE = re.compile(r"onnx_op_type:\s*(\S+)\s+onnx_op_name:\s*(\S+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _onnx2tf_precheck(model, step: str) -> None:
    """onnx2tf implements one module per ONNX op (onnx2tf/ops/<OpType>.py): an op without one (or from a
    custom domain) can only fail, after a long TensorFlow start-up. Name it now."""
    try:
        import onnx2tf.ops as ops_pkg
    except ImportError:
        return  # the run below reports the missing tool
    known = {p.stem for p in Path(ops_pkg.__file__).parent.glob("*.py") if not p.stem.startswith("_")}
    for node in model.graph.node:
        domain = node.domain or ""
        if domain not in ("", "ai.onnx") or node.op_type not in known:
            op = f"{domain}:{node.op_type}" if domain not in ("", "ai.onnx") else node.op_type
            raise UnsupportedOp(step, op, f"node {node.name or '<unnamed>'}: onnx2tf has no converter for it")


def _onnx2tf_failure(log: str) -> tuple[str | None, str | None, str]:
    """(op type, node name, error summary) of a failed onnx2tf run, from its log."""
    text = _ANSI.sub("", log)
    ops = _ONNX2TF_OP_LINE.findall(text)
    op, node = (ops[-1] if ops else (None, None))
    missing = re.search(r"No module named 'onnx2tf\.ops\.(\w+)'", text)
    if missing:
        op, node = missing.group(1), node or "?"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("ERROR") or "Error" in ln or "error" in ln.split(":")[0]]
    summary = errs[-1] if errs else (lines[-1] if lines else "no output")
    return op, node, summary[:400]


def onnx_to_saved_model(onnx_path: str | Path, out_dir: str | Path, *, keep_nchw: list[str] | None = None,
                        verify: bool = True, timeout_s: float = ONNX2TF_TIMEOUT_S) -> dict:
    """ONNX -> TF SavedModel with onnx2tf (``-tb tf_converter -osd``), written atomically to ``out_dir``.

    ``keep_nchw``: ONNX input names whose layout is kept as is (``-kat``); None = every input (default: the
    SavedModel takes exactly the tensors the ONNX model takes, so the same samples feed every runtime); [] =
    onnx2tf's default (4-D inputs become NHWC: callers must transpose). Output names follow the ONNX graph.
    With ``verify`` the SavedModel is run on random inputs and compared with onnxruntime.

    Returns the io info also written to ``out_dir/io_signature.json``.
    """
    import onnx

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    step = "onnx2tf"
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:
        raise TfjsConversionError(step, f"cannot read {onnx_path}: {e}") from None
    init_names = {i.name for i in model.graph.initializer}
    onnx_inputs = [i for i in model.graph.input if i.name not in init_names]
    onnx_outputs = [o.name for o in model.graph.output]
    in_names = [i.name for i in onnx_inputs]
    keep = list(in_names if keep_nchw is None else keep_nchw)
    unknown = set(keep) - set(in_names)
    if unknown:
        raise TfjsConversionError(step, f"keep_nchw names {sorted(unknown)} are not inputs of the model ({in_names})")

    _onnx2tf_precheck(model, step)

    bin_dir = Path(sys.executable).parent
    exe = bin_dir / "onnx2tf"
    cmd = [str(exe) if exe.exists() else "onnx2tf"]
    tmp = _scratch(out_dir)
    work = tmp / "onnx2tf_out"
    cmd += ["-i", str(onnx_path), "-o", str(work), "-tb", "tf_converter", "-osd", "-v", "info"]
    if keep:
        cmd += ["-kat", *keep]
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2",
               PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        try:
            proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError:
            raise TfjsConversionError(step, "onnx2tf command not found (pip install --no-deps "
                                            "--ignore-requires-python onnx2tf==2.6.9)") from None
        except subprocess.TimeoutExpired:
            raise TfjsConversionError(step, f"timed out after {timeout_s:g}s") from None
        log = (proc.stdout or "") + "\n" + (proc.stderr or "")
        (tmp / "onnx2tf.log").write_text(_ANSI.sub("", log))
        if proc.returncode != 0 or not (work / "saved_model.pb").exists():
            op, node, summary = _onnx2tf_failure(log)
            if op:
                raise UnsupportedOp(step, op, f"node {node}: {summary}")
            raise TfjsConversionError(step, f"exit code {proc.returncode}: {summary}")

        sm = tmp / "sm"
        sm.mkdir()
        for name in ("saved_model.pb", "variables", "assets", "fingerprint.pb"):
            if (work / name).exists():
                os.replace(work / name, sm / name)
        shutil.rmtree(work, ignore_errors=True)  # tflite side outputs: not ours

        _, _, sig_in, sig_out = _signature_io(sm, step)
        in_map = _match_names(in_names, list(sig_in), "inputs", step)
        out_keys = _output_key_order(list(sig_out))
        if len(out_keys) != len(onnx_outputs):
            raise TfjsConversionError(step, f"SavedModel has {len(out_keys)} outputs, ONNX has {len(onnx_outputs)}")
        io = {
            "source": "onnx", "signature": SIGNATURE,
            "inputs": [], "outputs": [],
            "toolchain": toolchain_versions(),
        }
        for name in in_names:
            spec = sig_in[in_map[name]]
            shape = _shape_list(spec.shape)
            layout = "as_source" if name in keep else ("NHWC" if len(shape) == 4 else "as_onnx2tf")
            io["inputs"].append({"name": name, "signature_key": in_map[name], "dtype": _np_dtype(spec.dtype),
                                 "shape": shape, "layout": layout, "kept_shape": name in keep})
        for name, key in zip(onnx_outputs, out_keys):
            spec = sig_out[key]
            io["outputs"].append({"name": name, "signature_key": key, "dtype": _np_dtype(spec.dtype),
                                  "shape": _shape_list(spec.shape)})
        _write_json(sm / IO_FILE, io)

        if verify and all(s["kept_shape"] for s in io["inputs"]):
            example = _example_inputs(io["inputs"])
            if example is not None:
                from pipeline.reference import ort_session

                sess = ort_session(Path(onnx_path), threads=1)
                ref = dict(zip(onnx_outputs, sess.run(onnx_outputs, example)))
                io["verify_max_abs_error"] = _verify(sm, example, ref, "onnx2tf verify")
                _write_json(sm / IO_FILE, io)
        _publish_dir(sm, out_dir, last="saved_model.pb")
        return io
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- Keras


def _load_keras(keras_file: Path, step: str):
    _tf()
    try:
        from model_sources.fashion_keras import load

        return load(keras_file)  # a .keras zip under any file name
    except Exception as e:
        raise TfjsConversionError(step, f"cannot load Keras model {keras_file}: {type(e).__name__}: {str(e)[:300]}") from None


def _keras_names(model, input_names, output_names, step):
    k_in = [t.name if hasattr(t, "name") else str(t) for t in model.inputs]
    k_out = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
    if input_names is not None and len(input_names) != len(k_in):
        raise TfjsConversionError(step, f"model has {len(k_in)} inputs {k_in}, recipe names {list(input_names)}")
    if output_names is not None and len(output_names) != len(k_out):
        raise TfjsConversionError(step, f"model has {len(k_out)} outputs {k_out}, recipe names {list(output_names)}")
    return k_in, k_out, list(input_names or k_in), list(output_names or k_out)


def keras_to_saved_model(keras_file: str | Path, out_dir: str | Path, *, input_names: list[str] | None = None,
                         output_names: list[str] | None = None, layouts: dict[str, str] | None = None,
                         verify: bool = True) -> dict:
    """Keras 3 ``.keras`` -> SavedModel (``model.export(format="tf_saved_model")``), atomically at ``out_dir``.

    ``input_names``/``output_names``: the recipe's names for the model's inputs/outputs, in the model's order
    (default: the Keras names). ``layouts``: recipe layout per input name, recorded in io_signature.json.
    """
    keras_file, out_dir = Path(keras_file), Path(out_dir)
    step = "keras export"
    model = _load_keras(keras_file, step)
    k_in, k_out, r_in, r_out = _keras_names(model, input_names, output_names, step)
    tmp = _scratch(out_dir)
    sm = tmp / "sm"
    try:
        try:
            model.export(str(sm), format="tf_saved_model", verbose=False)
        except TypeError:  # older Keras 3 without `verbose`
            model.export(str(sm), format="tf_saved_model")
        except Exception as e:
            raise TfjsConversionError(step, f"{type(e).__name__}: {str(e)[:400]}") from None
        _, _, sig_in, sig_out = _signature_io(sm, step)
        in_map = _match_names(k_in, list(sig_in), "inputs", step)
        out_keys = _output_key_order(list(sig_out))
        if len(out_keys) != len(k_out):
            raise TfjsConversionError(step, f"SavedModel has {len(out_keys)} outputs, Keras model {len(k_out)}")
        io = {"source": "keras", "signature": SIGNATURE, "inputs": [], "outputs": [],
              "toolchain": toolchain_versions()}
        for kname, rname in zip(k_in, r_in):
            spec = sig_in[in_map[kname]]
            io["inputs"].append({"name": rname, "signature_key": in_map[kname], "keras_name": kname,
                                 "dtype": _np_dtype(spec.dtype), "shape": _shape_list(spec.shape),
                                 "layout": (layouts or {}).get(rname, "as_source"), "kept_shape": True})
        for kname, rname, key in zip(k_out, r_out, out_keys):
            spec = sig_out[key]
            io["outputs"].append({"name": rname, "signature_key": key, "keras_name": kname,
                                  "dtype": _np_dtype(spec.dtype), "shape": _shape_list(spec.shape)})
        _write_json(sm / IO_FILE, io)
        if verify:
            example = _example_inputs(io["inputs"])
            if example is not None:
                ref = _keras_run(model, example, r_in, r_out, batch=len(next(iter(example.values()))))
                io["verify_max_abs_error"] = _verify(sm, example, ref, "keras export verify")
                _write_json(sm / IO_FILE, io)
        _publish_dir(sm, out_dir, last="saved_model.pb")
        return io
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _keras_run(model, inputs: dict[str, np.ndarray], input_names: list[str], output_names: list[str],
               batch: int) -> dict[str, np.ndarray]:
    n = len(inputs[input_names[0]])
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in output_names}
    for i in range(0, n, max(1, batch)):
        xs = [inputs[k][i:i + batch] for k in input_names]
        res = model(xs[0] if len(xs) == 1 else xs, training=False)
        if isinstance(res, dict):
            res = [res[k] for k in model.output_names]
        elif not isinstance(res, (list, tuple)):
            res = [res]
        for name, r in zip(output_names, res):
            chunks[name].append(r.numpy() if hasattr(r, "numpy") else np.asarray(r))
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def keras_outputs(keras_file: str | Path, inputs: dict[str, np.ndarray], batch: int,
                  output_names: list[str], input_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Native reference for a Keras source: the model (TF backend, inference mode) on ``inputs`` in batches.

    ``inputs`` are keyed by the recipe's input names (``input_names`` in the model's input order; default: the
    order of ``inputs``); outputs come back keyed by ``output_names`` (the recipe's, in the model's output order).
    """
    step = "keras reference"
    model = _load_keras(Path(keras_file), step)
    names = list(input_names or inputs)
    _keras_names(model, names, output_names, step)
    missing = [k for k in names if k not in inputs]
    if missing:
        raise TfjsConversionError(step, f"inputs {missing} missing (got {list(inputs)})")
    return _keras_run(model, inputs, names, list(output_names), batch)


def keras_to_onnx(keras_file: str | Path, dst: str | Path, *, opset: int = 18, input_names: list[str] | None = None,
                  output_names: list[str] | None = None, verify: bool = True) -> Path:
    """Keras 3 ``.keras`` -> ONNX with tf2onnx (``from_keras``), atomically at ``dst``; batch axis dynamic.

    Graph inputs/outputs are renamed to the recipe's names (defaults: the Keras names). With ``verify`` the ONNX
    model is run in onnxruntime on random inputs and compared with Keras.
    """
    import onnx

    keras_file, dst = Path(keras_file), Path(dst)
    step = "keras->onnx (tf2onnx)"
    model = _load_keras(keras_file, step)
    k_in, k_out, r_in, r_out = _keras_names(model, input_names, output_names, step)
    tf = _tf()
    try:
        import tf2onnx
    except ImportError as e:
        raise TfjsConversionError(step, f"{e} (pip install --no-deps tf2onnx==1.17.0)") from None
    spec = tuple(tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=r) for t, r in zip(model.inputs, r_in))
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    except Exception as e:
        m = re.search(r"[Uu]nsupported ops?:?\s*(?:Counter\()?\{?'?([A-Za-z0-9_]+)", str(e))
        if m:
            raise UnsupportedOp(step, m.group(1), str(e)[:300]) from None
        raise TfjsConversionError(step, f"{type(e).__name__}: {str(e)[:400]}") from None
    graph_in = [i.name for i in proto.graph.input if i.name not in {x.name for x in proto.graph.initializer}]
    rename = dict(zip(graph_in, r_in))
    rename.update(zip([o.name for o in proto.graph.output], r_out))
    rename = {a: b for a, b in rename.items() if a != b}
    if rename:
        for node in proto.graph.node:
            node.input[:] = [rename.get(x, x) for x in node.input]
            node.output[:] = [rename.get(x, x) for x in node.output]
        for v in list(proto.graph.input) + list(proto.graph.output):
            v.name = rename.get(v.name, v.name)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise TfjsConversionError(step, f"invalid ONNX: {str(e)[:300]}") from None
    from pipeline.fsutil import write_bytes_atomic

    if verify:
        import onnxruntime as ort

        io_specs = [{"name": r, "dtype": np.dtype(t.dtype).name if not hasattr(t.dtype, "as_numpy_dtype")
                     else _np_dtype(t.dtype), "shape": [None, *t.shape[1:]]} for t, r in zip(model.inputs, r_in)]
        example = _example_inputs(io_specs)
        if example is not None:
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
            got = dict(zip(r_out, sess.run(r_out, example)))
            ref = _keras_run(model, example, r_in, r_out, batch=2)
            for k in r_out:
                if not np.allclose(got[k], ref[k], rtol=1e-3, atol=1e-4):
                    err = float(np.max(np.abs(got[k] - ref[k])))
                    raise TfjsConversionError(step, f"output {k} differs from Keras (max abs error {err:.3g})")
    write_bytes_atomic(dst, proto.SerializeToString())
    return dst


# ----------------------------------------------------------------------------------------------- SavedModel -> tfjs


def _check_tfjs_graph(model_json: dict, stage: str) -> list[str]:
    """Ops in the graph model; raises UnsupportedOp for fused kernels no tfjs backend implements."""
    nodes = list(model_json.get("modelTopology", {}).get("node", []))
    for fn in model_json.get("modelTopology", {}).get("library", {}).get("function", []):
        nodes += fn.get("nodeDef", [])
    import base64

    ops = set()
    for node in nodes:
        op = node.get("op", "")
        ops.add(op)
        if op in FUSED_NODE_OPS:
            fused = node.get("attr", {}).get("fused_ops", {}).get("list", {}).get("s", [])
            names = [base64.b64decode(s).decode(errors="replace") for s in fused]
            bad = [f for f in names if f.lower() not in TFJS_FUSED_OPS]
            if bad:
                raise UnsupportedOp(stage, f"{op}[{'+'.join(names)}]",
                                    f"node {node.get('name')}: fused {', '.join(bad)} is not implemented by the "
                                    "tfjs backends (was TF_ENABLE_ONEDNN_OPTS=0 set before TensorFlow was imported?)")
    return sorted(ops)


def saved_model_to_tfjs(saved_model_dir: str | Path, out_dir: str | Path, *, quantization: str | None = None,
                        shard_bytes: int = 4 * 1024 * 1024) -> list[Path]:
    """SavedModel (with io_signature.json, as written here) -> tfjs graph model in ``out_dir``.

    ``quantization``: None | "float16" | "uint8" (weights only: tfjs dequantizes to float32 before compute).
    ``shard_bytes``: weight shard size (browser-cache friendly). Writes ``model.json``, ``group1-shardXofY.bin``
    and ``tfjs_manifest.json``; returns them with model.json first.
    """
    sm_dir, out_dir = Path(saved_model_dir), Path(out_dir)
    stage = "tfjs converter"
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    io_path = sm_dir / IO_FILE
    if not io_path.is_file():
        raise TfjsConversionError(stage, f"{io_path} missing (SavedModel not written by pipeline.convert.tfjs)")
    io = json.loads(io_path.read_text())
    sm2 = _tfjs_saved_model_converter()
    tmp = _scratch(out_dir)
    try:
        qmap = {quantization: True} if quantization else None
        try:
            sm2.convert_tf_saved_model(str(sm_dir), str(tmp), signature_def=io.get("signature", SIGNATURE),
                                       saved_model_tags="serve", quantization_dtype_map=qmap,
                                       weight_shard_size_bytes=int(shard_bytes))
        except ValueError as e:
            msg = str(e)
            m = re.search(r"Unsupported Ops in the model[^\n]*\n\s*(.+)", msg)
            if m:
                ops = [o.strip() for o in m.group(1).split(",") if o.strip()]
                raise UnsupportedOp(stage, ", ".join(ops), "no TensorFlow.js kernel") from None
            raise TfjsConversionError(stage, f"ValueError: {msg[:400]}") from None
        except Exception as e:
            raise TfjsConversionError(stage, f"{type(e).__name__}: {str(e)[:400]}") from None
        model_json_path = tmp / MODEL_JSON
        if not model_json_path.is_file():
            raise TfjsConversionError(stage, "converter wrote no model.json")
        model_json = json.loads(model_json_path.read_text())
        ops = _check_tfjs_graph(model_json, stage)

        sig = model_json.get("signature") or {}
        sig_in, sig_out = sig.get("inputs", {}), sig.get("outputs", {})
        shards = [p for group in model_json.get("weightsManifest", []) for p in group.get("paths", [])]
        manifest = {
            "format": "pipeline-tfjs-manifest/1",
            "model": MODEL_JSON,
            "quantization": quantization,
            "shard_bytes": int(shard_bytes),
            "shards": shards,
            "inputs": [],
            "outputs": [],
            "ops": ops,
            "toolchain": io.get("toolchain") or toolchain_versions(),
        }
        for s in io["inputs"]:
            node = sig_in.get(s["signature_key"], {}).get("name")
            if node is None:
                raise TfjsConversionError(stage, f"graph model has no input {s['signature_key']!r} ({list(sig_in)})")
            manifest["inputs"].append({"name": s["name"], "signature_key": s["signature_key"], "node": node,
                                       "dtype": s["dtype"], "shape": s["shape"], "layout": s.get("layout")})
        for s in io["outputs"]:
            node = sig_out.get(s["signature_key"], {}).get("name")
            if node is None:
                raise TfjsConversionError(stage, f"graph model has no output {s['signature_key']!r} ({list(sig_out)})")
            manifest["outputs"].append({"name": s["name"], "signature_key": s["signature_key"], "node": node,
                                        "dtype": s["dtype"], "shape": s["shape"]})
        _write_json(tmp / MANIFEST_FILE, manifest)
        missing = [p for p in shards if not (tmp / p).is_file()]
        if missing:
            raise TfjsConversionError(stage, f"shards missing: {missing}")
        _publish_dir(tmp, out_dir, last=MODEL_JSON)
        return [out_dir / MODEL_JSON, *(out_dir / p for p in shards), out_dir / MANIFEST_FILE]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- family


def _recipe_names(recipe) -> tuple[list[str] | None, list[str] | None, dict[str, str]]:
    if recipe is None:
        return None, None, {}
    ins = [i.name for i in recipe.inputs]
    outs = [o.name for o in recipe.outputs]
    return ins, outs, {i.name: i.layout for i in recipe.inputs}


def _build_saved_model(inputs: BuildInputs, out_dir: Path) -> dict:
    recipe = inputs.recipe
    kind = getattr(getattr(recipe, "source", None), "kind", "onnx")
    r_in, r_out, layouts = _recipe_names(recipe)
    dst = Path(out_dir) / "saved_model"
    if kind == "keras":
        if inputs.source_file is None:
            raise TfjsConversionError("saved_model", "keras source without a source file")
        io = keras_to_saved_model(inputs.source_file, dst, input_names=r_in, output_names=r_out, layouts=layouts)
    elif kind in ("pytorch", "onnx"):
        io = onnx_to_saved_model(inputs.canonical_onnx, dst, keep_nchw=None)
        # Record the recipe's layout for kept inputs; rename outputs to the recipe's (canonical ONNX uses them).
        for s in io["inputs"]:
            if s["kept_shape"] and s["name"] in layouts:
                s["layout"] = layouts[s["name"]]
        if r_out and [o["name"] for o in io["outputs"]] != r_out and len(r_out) == len(io["outputs"]):
            for o, name in zip(io["outputs"], r_out):
                o["onnx_name"], o["name"] = o["name"], name
        _write_json(dst / IO_FILE, io)
    else:
        raise TfjsConversionError("saved_model", f"source kind {kind!r} not supported by the tfjs family")
    return {"saved_model": "saved_model", **{k: io[k] for k in ("source", "inputs", "outputs")},
            "verify_max_abs_error": io.get("verify_max_abs_error")}


def prerequisites() -> list[Prerequisite]:
    return [Prerequisite(name="saved_model", build=_build_saved_model, fingerprint=toolchain_versions)]


def _variant_builder(quantization: str | None):
    def build(inputs: BuildInputs, out_dir: Path) -> list[Path]:
        folder = inputs.prerequisites.get("saved_model")
        if folder is None:
            raise TfjsConversionError("tfjs variant", "prerequisite 'saved_model' not built")
        return saved_model_to_tfjs(Path(folder) / "saved_model", Path(out_dir), quantization=quantization)

    return build


def variants() -> list[VariantSpec]:
    specs = []
    for name, q, desc in (
        ("tfjs_fp32", None, "TensorFlow.js graph model, float32 weights"),
        ("tfjs_fp16", "float16", "TensorFlow.js graph model, float16-quantized weights (float32 compute)"),
        ("tfjs_uint8", "uint8", "TensorFlow.js graph model, uint8 affine-quantized weights (float32 compute)"),
    ):
        specs.append(VariantSpec(family="tfjs", name=name, runtime="tfjs", backends=("wasm", "webgl", "webgpu"),
                                 build=_variant_builder(q), description=desc, native=None,
                                 prerequisites=("saved_model",)))
    return specs
