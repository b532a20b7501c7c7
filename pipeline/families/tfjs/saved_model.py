"""The TF.js family's intermediate: a TensorFlow SavedModel, from the canonical ONNX (onnx2tf) or straight from a
Keras source (``model.export``), with ``io_signature.json`` mapping the recipe's names onto its signature.

Layout decision: inputs keep the recipe's layout. onnx2tf runs with ``-kat <every input>`` so an NCHW ONNX input
stays NCHW in the SavedModel (onnx2tf inserts one Transpose inside the graph); the harness feeds the same samples
to the native model and to every browser variant. Keras sources take whatever the Keras model takes (our
Fashion-MNIST model takes NCHW and permutes internally).

onnx2tf 2.6.9 (--no-deps --ignore-requires-python) calls the ``onnxsim`` command: the venv's bin goes on PATH.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluate.samples import random_inputs
from pipeline.fsutil import atomic_dir, scratch_dir
from pipeline.onnx_utils import STANDARD_DOMAINS, graph_inputs, load_model, ort_session
from pipeline.outcome import ConversionError, ToolchainMissing, UnsupportedOp
from pipeline.sources.keras import keras_names, keras_run, load_keras, tensorflow, tf_numpy_dtype

IO_FILE = "io_signature.json"          # beside saved_model.pb
SIGNATURE = "serving_default"
ONNX2TF_TIMEOUT_S = 1800
SAVED_MODEL_FILES = ("saved_model.pb", "variables", "assets", "fingerprint.pb")


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


def write_json(path: Path, obj: Any) -> None:
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
        raise ConversionError(f"{step}: cannot map {what} {wanted} onto {available}")
    return out


def _output_key_order(keys: list[str]) -> list[str]:
    """SavedModel signature outputs come as output_0, output_1, ... (or named): order them as produced."""
    def k(name: str):
        m = re.fullmatch(r"output_(\d+)", name)
        return (0, int(m.group(1)), "") if m else (1, 0, name)

    return sorted(keys, key=k)


def _signature_io(sm_dir: Path, step: str):
    tf = tensorflow()
    try:
        loaded = tf.saved_model.load(str(sm_dir))
    except Exception as e:
        raise ConversionError(f"{step}: cannot load SavedModel {sm_dir}: {type(e).__name__}: {str(e)[:300]}") \
            from None
    if SIGNATURE not in loaded.signatures:
        raise ConversionError(f"{step}: SavedModel has no {SIGNATURE!r} signature (has {list(loaded.signatures)})")
    fn = loaded.signatures[SIGNATURE]
    return loaded, fn, fn.structured_input_signature[1], fn.structured_outputs


def _shape_list(shape) -> list[int | None]:
    return [None if d is None else int(d) for d in shape]


def saved_model_outputs(saved_model_dir: str | Path, inputs: dict[str, np.ndarray], batch: int = 64) -> dict[str, np.ndarray]:
    """Run a SavedModel written here (TF, CPU) on inputs keyed by recipe names; outputs keyed by recipe names."""
    sm_dir = Path(saved_model_dir)
    io = json.loads((sm_dir / IO_FILE).read_text())
    tf = tensorflow()
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
            raise ConversionError(f"{step}: output {name}: shape {got[name].shape} != reference {ref.shape}")
        err = float(np.max(np.abs(got[name].astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        worst = max(worst, err)
        if not np.allclose(got[name], ref, rtol=rtol, atol=atol):
            raise ConversionError(f"{step}: output {name} differs from the source model (max abs error {err:.3g})")
    return worst


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
        if domain not in STANDARD_DOMAINS or node.op_type not in known:
            op = f"{domain}:{node.op_type}" if domain not in STANDARD_DOMAINS else node.op_type
            raise UnsupportedOp(step, op, f"node {node.name or '<unnamed>'}: onnx2tf has no converter for it")


def _onnx2tf_failure(log: str) -> tuple[str | None, str | None, str]:
    """(op type, node name, error summary) of a failed onnx2tf run, from its log."""
    text = _ANSI.sub("", log)
    ops = _ONNX2TF_OP_LINE.findall(text)
    op, node = (ops[-1] if ops else (None, None))
    if op is None:  # newer onnx2tf: "ERROR: onnx_op_name: X" after a traceback through onnx2tf/ops/<Op>.py
        named = re.findall(r"onnx_op_name:\s*(\S+)", text)
        frames = re.findall(r"onnx2tf/ops/(\w+)\.py", text)
        if named and frames:
            op, node = frames[-1], named[-1]
    missing = re.search(r"No module named 'onnx2tf\.ops\.(\w+)'", text)
    if missing:
        op, node = missing.group(1), node or "?"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # The exception itself says most; onnx2tf's own ERROR lines after it are generic advice.
    raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b.*:", ln)]
    errs = [ln for ln in lines if ln.startswith("ERROR") or "Error" in ln or "error" in ln.split(":")[0]]
    summary = (raised or errs or lines or ["no output"])[-1]
    if summary.startswith("ValueError: Exception encountered when calling layer"):  # Keras' wrapper: the cause follows
        after = lines[lines.index(summary) + 1:] if summary in lines else []
        if after and not after[0].startswith("Call arguments"):
            summary = f"{summary} {after[0]}"
    return op, node, summary[:400]


_TF_SCOPE_BAD = re.compile(r"[^A-Za-z0-9_.\\/>-]")


def _scope_safe_node_names(path: Path) -> int:
    """onnx2tf names TF ops after the ONNX nodes, and TF refuses scope names outside [A-Za-z0-9_./>-]: Paddle's
    exports name nodes "Softmax@0" (the text-direction classifier failed with "'Softmax@0' is not a valid scope
    name"). Rename such nodes in onnx2tf's private copy; tensor names (inputs, outputs) are left as they are."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    taken = {n.name for n in model.graph.node}
    renamed = 0
    for node in model.graph.node:
        if node.name and _TF_SCOPE_BAD.search(node.name):
            base = _TF_SCOPE_BAD.sub("_", node.name)
            new, k = base, 1
            while new in taken:
                new, k = f"{base}_{k}", k + 1
            taken.add(new)
            node.name = new
            renamed += 1
    if renamed:
        onnx.save(model, str(path))
    return renamed


def onnx_to_saved_model(onnx_path: str | Path, out_dir: str | Path, *, keep_nchw: list[str] | None = None,
                        verify: bool = True, timeout_s: float = ONNX2TF_TIMEOUT_S) -> dict:
    """ONNX -> TF SavedModel with onnx2tf (``-tb tf_converter -osd``), written atomically to ``out_dir``.

    ``keep_nchw``: ONNX input names whose layout is kept as is (``-kat``); None = every input (default: the
    SavedModel takes exactly the tensors the ONNX model takes, so the same samples feed every runtime); [] =
    onnx2tf's default (4-D inputs become NHWC: callers must transpose). Output names follow the ONNX graph.
    With ``verify`` the SavedModel is run on random inputs and compared with onnxruntime.

    Returns the io info also written to ``out_dir/io_signature.json``.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    step = "onnx2tf"
    model = load_model(onnx_path, step, load_external_data=False)
    onnx_outputs = [o.name for o in model.graph.output]
    in_names = [i.name for i in graph_inputs(model)]
    keep = list(in_names if keep_nchw is None else keep_nchw)
    unknown = set(keep) - set(in_names)
    if unknown:
        raise ConversionError(f"{step}: keep_nchw names {sorted(unknown)} are not inputs of the model ({in_names})")

    _onnx2tf_precheck(model, step)

    bin_dir = Path(sys.executable).parent
    exe = bin_dir / "onnx2tf"
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2",
               PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    with scratch_dir(out_dir) as tmp, atomic_dir(out_dir) as sm:
        # onnx2tf rewrites its input file in place (onnxsim passes, op renaming): it gets a private copy, never
        # the canonical model other variants are built from.
        private = tmp / "input" / onnx_path.name
        private.parent.mkdir()
        for f in [onnx_path, *onnx_path.parent.glob(f"{onnx_path.name}.data")]:
            shutil.copyfile(f, private.parent / f.name)
        _scope_safe_node_names(private)
        work = tmp / "onnx2tf_out"
        cmd = [str(exe) if exe.exists() else "onnx2tf", "-i", str(private), "-o", str(work),
               "-tb", "tf_converter", "-osd", "-v", "info"]
        if keep:
            cmd += ["-kat", *keep]
        try:
            proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError:
            raise ToolchainMissing(f"{step}: onnx2tf command not found (pip install --no-deps "
                                   "--ignore-requires-python onnx2tf==2.6.9)") from None
        except subprocess.TimeoutExpired:
            raise ConversionError(f"{step}: timed out after {timeout_s:g}s") from None
        log = (proc.stdout or "") + "\n" + (proc.stderr or "")
        (tmp / "onnx2tf.log").write_text(_ANSI.sub("", log))
        if proc.returncode != 0 or not (work / "saved_model.pb").exists():
            op, node, summary = _onnx2tf_failure(log)
            if op:
                raise UnsupportedOp(step, op, f"node {node}: {summary}")
            raise ConversionError(f"{step}: exit code {proc.returncode}: {summary}")
        for name in SAVED_MODEL_FILES:  # the rest (tflite side outputs) is not ours
            if (work / name).exists():
                os.replace(work / name, sm / name)

        _, _, sig_in, sig_out = _signature_io(sm, step)
        in_map = _match_names(in_names, list(sig_in), "inputs", step)
        out_keys = _output_key_order(list(sig_out))
        if len(out_keys) != len(onnx_outputs):
            raise ConversionError(f"{step}: SavedModel has {len(out_keys)} outputs, ONNX has {len(onnx_outputs)}")
        io = {"source": "onnx", "signature": SIGNATURE, "inputs": [], "outputs": [],
              "toolchain": toolchain_versions()}
        for name in in_names:
            spec = sig_in[in_map[name]]
            shape = _shape_list(spec.shape)
            layout = "as_source" if name in keep else ("NHWC" if len(shape) == 4 else "as_onnx2tf")
            io["inputs"].append({"name": name, "signature_key": in_map[name], "dtype": tf_numpy_dtype(spec.dtype),
                                 "shape": shape, "layout": layout, "kept_shape": name in keep})
        for name, key in zip(onnx_outputs, out_keys):
            spec = sig_out[key]
            io["outputs"].append({"name": name, "signature_key": key, "dtype": tf_numpy_dtype(spec.dtype),
                                  "shape": _shape_list(spec.shape)})
        if verify and all(s["kept_shape"] for s in io["inputs"]):
            example = random_inputs(io["inputs"])
            if example is not None:
                write_json(sm / IO_FILE, io)
                sess = ort_session(onnx_path)
                ref = dict(zip(onnx_outputs, sess.run(onnx_outputs, example)))
                io["verify_max_abs_error"] = _verify(sm, example, ref, "onnx2tf verify")
        write_json(sm / IO_FILE, io)
    return io


# ----------------------------------------------------------------------------------------------- Keras -> SavedModel


def keras_to_saved_model(keras_file: str | Path, out_dir: str | Path, *, input_names: list[str] | None = None,
                         output_names: list[str] | None = None, layouts: dict[str, str] | None = None,
                         verify: bool = True) -> dict:
    """Keras 3 ``.keras`` -> SavedModel (``model.export(format="tf_saved_model")``), atomically at ``out_dir``.

    ``input_names``/``output_names``: the recipe's names for the model's inputs/outputs, in the model's order
    (default: the Keras names). ``layouts``: recipe layout per input name, recorded in io_signature.json.
    """
    keras_file, out_dir = Path(keras_file), Path(out_dir)
    step = "keras export"
    model = load_keras(keras_file, step)
    k_in, k_out, r_in, r_out = keras_names(model, input_names, output_names, step)
    with scratch_dir(out_dir) as tmp, atomic_dir(out_dir) as sm:
        export = tmp / "export"
        try:
            model.export(str(export), format="tf_saved_model", verbose=False)
        except TypeError:  # older Keras 3 without `verbose`
            model.export(str(export), format="tf_saved_model")
        except Exception as e:
            raise ConversionError(f"{step}: {type(e).__name__}: {str(e)[:400]}") from None
        for p in export.iterdir():
            os.replace(p, sm / p.name)
        _, _, sig_in, sig_out = _signature_io(sm, step)
        in_map = _match_names(k_in, list(sig_in), "inputs", step)
        out_keys = _output_key_order(list(sig_out))
        if len(out_keys) != len(k_out):
            raise ConversionError(f"{step}: SavedModel has {len(out_keys)} outputs, Keras model {len(k_out)}")
        io = {"source": "keras", "signature": SIGNATURE, "inputs": [], "outputs": [],
              "toolchain": toolchain_versions()}
        for kname, rname in zip(k_in, r_in):
            spec = sig_in[in_map[kname]]
            io["inputs"].append({"name": rname, "signature_key": in_map[kname], "keras_name": kname,
                                 "dtype": tf_numpy_dtype(spec.dtype), "shape": _shape_list(spec.shape),
                                 "layout": (layouts or {}).get(rname, "as_source"), "kept_shape": True})
        for kname, rname, key in zip(k_out, r_out, out_keys):
            spec = sig_out[key]
            io["outputs"].append({"name": rname, "signature_key": key, "keras_name": kname,
                                  "dtype": tf_numpy_dtype(spec.dtype), "shape": _shape_list(spec.shape)})
        write_json(sm / IO_FILE, io)
        if verify:
            example = random_inputs(io["inputs"])
            if example is not None:
                ref = keras_run(model, example, r_in, r_out, batch=len(next(iter(example.values()))))
                io["verify_max_abs_error"] = _verify(sm, example, ref, "keras export verify")
                write_json(sm / IO_FILE, io)
    return io


# ----------------------------------------------------------------------------------------------- prerequisite


def _from_onnx(inputs, dst: Path, r_in, r_out, layouts) -> dict:
    io = onnx_to_saved_model(inputs.canonical_onnx, dst, keep_nchw=None)
    # Record the recipe's layout for kept inputs; rename outputs to the recipe's (canonical ONNX uses them).
    for s in io["inputs"]:
        if s["kept_shape"] and s["name"] in layouts:
            s["layout"] = layouts[s["name"]]
    if r_out and [o["name"] for o in io["outputs"]] != r_out and len(r_out) == len(io["outputs"]):
        for o, name in zip(io["outputs"], r_out):
            o["onnx_name"], o["name"] = o["name"], name
    write_json(dst / IO_FILE, io)
    return io


def _from_keras(inputs, dst: Path, r_in, r_out, layouts) -> dict:
    if inputs.source_file is None:
        raise ConversionError("saved_model: keras source without a source file")
    return keras_to_saved_model(inputs.source_file, dst, input_names=r_in, output_names=r_out, layouts=layouts)


# How each source kind becomes a SavedModel: Keras exports its own (no ONNX detour); the rest go through onnx2tf.
ROUTES = {"keras": _from_keras}


def build_saved_model(inputs, out_dir: Path) -> dict:
    recipe = inputs.recipe
    kind = getattr(getattr(recipe, "source", None), "kind", "onnx")
    r_in = [i.name for i in recipe.inputs] if recipe is not None else None
    r_out = [o.name for o in recipe.outputs] if recipe is not None else None
    layouts = {i.name: i.layout for i in recipe.inputs} if recipe is not None else {}
    io = ROUTES.get(kind, _from_onnx)(inputs, Path(out_dir) / "saved_model", r_in, r_out, layouts)
    return {"saved_model": "saved_model", **{k: io[k] for k in ("source", "inputs", "outputs")},
            "verify_max_abs_error": io.get("verify_max_abs_error")}
