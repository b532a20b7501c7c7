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


# A second try when onnx2tf fails on the model as exported: shape arithmetic onnx2tf 2.6.9 cannot carry. torch's
# dynamo exporter writes a transformer's sizes as graph arithmetic (Shape -> Squeeze -> Slice of the position ids,
# Reshape targets concatenated from Shape outputs, an attention mask gathered with GatherND at indices built from
# Range/Expand over the batch). onnx2tf fails on that ("unsupported op Slice ... 'tuple' object has no attribute
# 'rank'" for all-MiniLM-L6-v2), and with -ois (batch included) it folds the GatherND indices into a 5-D constant it
# then transposes as NCDHW; even with the rewrites below, a fully static [1, 64] copy converts wrong (onnx2tf's strict
# mode, which runs only on static shapes, picks transposes for the square 64x64 attention scores: cosine 0.13 against
# onnxruntime; -dsm: 0.93). The pre-pass below, on onnx2tf's private copy, instead pins the sizes the recipe compiles
# for (compile_shape) except the batch, folds what that makes constant, and replaces what still depends on the batch
# by batch-free equivalents, found by running the model at two batch sizes: a Reshape target by the shape it produced
# with the batch as -1; a GatherND whose indices only enumerate its data in order by a Reshape. The batch stays
# dynamic (onnx2tf converts it without its shape guessing: exact, 3e-7) and the SavedModel is verified as any other.
# Only a model whose first conversion failed gets it: the others keep the SavedModel they had.
_PROBE_BATCHES = (3, 5)  # neither 1 (broadcasts) nor 2 (what the verification feeds): an independent check


def _onnxsim_or_same(model):
    try:
        from onnxsim import simplify

        simplified, ok = simplify(model)
        return simplified if ok else model
    except Exception:  # noqa: BLE001 - best effort; onnx2tf runs onnxsim again anyway
        return model


def _fold_static_shape_ops(model) -> int:
    """Shape ops whose (start:end) dims shape inference knows: a Constant."""
    from onnx import helper, numpy_helper

    infos = {v.name: v for v in [*model.graph.value_info, *model.graph.input]}
    nodes, folded = [], 0
    for node in model.graph.node:
        info = infos.get(node.input[0]) if node.op_type == "Shape" and node.domain in STANDARD_DOMAINS else None
        if info is not None and info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", len(dims))
            sel = dims[slice(start, end)]
            if all(d.HasField("dim_value") for d in sel):
                value = numpy_helper.from_array(np.array([d.dim_value for d in sel], np.int64), node.output[0])
                nodes.append(helper.make_node("Constant", [], [node.output[0]], name=node.name, value=value))
                folded += 1
                continue
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return folded


def _shape_free_of_data(model):
    """A test: does tensor t depend on the graph's inputs only through their shapes (Shape ops)?"""
    producer = {o: n for n in model.graph.node for o in n.output}
    feeds = {i.name for i in graph_inputs(model)}
    memo: dict[str, bool] = {}

    def free(t: str) -> bool:
        if t not in memo:
            memo[t] = True  # no cycles in a valid graph; guards recursion on shared inputs
            node = producer.get(t)
            memo[t] = t not in feeds and (node is None or node.op_type == "Shape"
                                          or all(free(i) for i in node.input if i))
        return memo[t]

    return free


def _batch_free_shapes(model, dims: dict[str, list[int | None]]) -> dict[str, int]:
    """Rewrite (in place) what depends on the batch through shape arithmetic, from runs at two batch sizes."""
    import onnx
    from onnx import numpy_helper

    constant = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    free = _shape_free_of_data(model)
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape" and n.input[1] not in constant]
    gathers = [n for n in model.graph.node if n.op_type == "GatherND" and free(n.input[1])
               and not any(a.name == "batch_dims" and a.i for a in n.attribute)]
    if not reshapes and not gathers:
        return {"reshape_targets": 0, "gathernd_as_reshape": 0}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inputs = graph_inputs(model)
    wanted = [n.output[0] for n in reshapes] + [t for n in gathers for t in (n.input[0], n.input[1], n.output[0])]
    names = [t for t in dict.fromkeys(wanted) if t not in {i.name for i in inputs}]
    listed = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in listed)
    sess = ort_session(probe.SerializeToString())
    runs = []
    for b in _PROBE_BATCHES:
        feed = {i.name: np.zeros([b if d is None else d for d in dims[i.name]],
                                 onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in inputs}
        runs.append({**feed, **dict(zip(names, sess.run(names, feed)))})

    def batch_free(shapes: list[tuple]) -> list[int] | None:
        """One shape with the dimension that follows the batch as -1; None unless exactly one (or none) does."""
        if len({len(s) for s in shapes}) != 1 or any(0 in s for s in shapes):
            return None
        varying = [k for k in range(len(shapes[0])) if len({s[k] for s in shapes}) > 1]
        return None if len(varying) > 1 else [-1 if k in varying else int(d) for k, d in enumerate(shapes[0])]

    def const_input(node, name: str, value: list[int]) -> None:
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
        node.input[1] = name

    done = {"reshape_targets": 0, "gathernd_as_reshape": 0}
    for node in reshapes:
        target = batch_free([r[node.output[0]].shape for r in runs])
        if target is not None:
            const_input(node, f"{node.output[0]}__batch_free_shape", target)
            done["reshape_targets"] += 1
    for node in gathers:
        in_order = True
        for r in runs:
            data, idx = r[node.input[0]], r[node.input[1]]
            k = idx.shape[-1]
            flat = np.ravel_multi_index(tuple(idx.reshape(-1, k).T), data.shape[:k]) if idx.size else idx
            in_order &= flat.size == int(np.prod(data.shape[:k])) and bool((flat == np.arange(flat.size)).all())
        target = batch_free([r[node.output[0]].shape for r in runs]) if in_order else None
        if target is not None:
            node.op_type, node.domain = "Reshape", ""
            del node.attribute[:]
            const_input(node, f"{node.output[0]}__gathernd_shape", target)
            done["gathernd_as_reshape"] += 1
    return done


def _shape_prepass(path: Path, dims: dict[str, list[int | None]]) -> dict:
    """The pre-pass (see above) on onnx2tf's private copy at `path`: `dims`, per input, the size to pin each
    dimension at (None: left dynamic, the batch). Returns what it did, for io_signature.json."""
    import onnx

    from pipeline.onnx_utils import EXTERNAL_DATA_THRESHOLD, model_bytes, save_model

    model = onnx.load(str(path))
    if model_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
        return {"skipped": "model over 2 GB (onnxsim and the probe runs take it in memory)"}
    pinned = {}
    for i in graph_inputs(model):
        shape = i.type.tensor_type.shape.dim
        want = dims.get(i.name)
        if want is None or len(want) != len(shape):
            dims[i.name] = [d.dim_value if d.HasField("dim_value") else None for d in shape]
            continue
        for k, (d, w) in enumerate(zip(shape, want)):
            if w is not None and not d.HasField("dim_value"):
                d.dim_value = int(w)  # clears dim_param
                pinned.setdefault(i.name, {})[k] = int(w)
        dims[i.name] = [d.dim_value if d.HasField("dim_value") else None for d in shape]
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    folded = _fold_static_shape_ops(model)
    model = _onnxsim_or_same(model)
    rewritten = _batch_free_shapes(model, dims)
    model = _onnxsim_or_same(model)
    save_model(model, path)
    return {"pinned_dims": pinned, "shape_ops_folded": folded, **rewritten}


def onnx_to_saved_model(onnx_path: str | Path, out_dir: str | Path, *, keep_nchw: list[str] | None = None,
                        static_shapes: dict[str, list[int]] | None = None,
                        batch_axes: dict[str, int | None] | None = None, verify: bool = True,
                        timeout_s: float = ONNX2TF_TIMEOUT_S) -> dict:
    """ONNX -> TF SavedModel with onnx2tf (``-tb tf_converter -osd``), written atomically to ``out_dir``.

    ``keep_nchw``: ONNX input names whose layout is kept as is (``-kat``); None = every input (default: the
    SavedModel takes exactly the tensors the ONNX model takes, so the same samples feed every runtime); [] =
    onnx2tf's default (4-D inputs become NHWC: callers must transpose). Output names follow the ONNX graph.
    ``static_shapes``: input name -> the shape to convert for (onnx2tf ``-ois``; the batch too).
    ``batch_axes``: input name -> its batch axis (default 0): the dimension a second try keeps dynamic when onnx2tf
    fails on the model as it is (:func:`_shape_prepass`).
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
    flags = ["-tb", "tf_converter", "-osd", "-v", "info"]
    if keep:
        flags += ["-kat", *keep]
    if any(n.op_type == "Erf" for n in model.graph.node):
        # TFLite has no Erf builtin (and LiteRT.js no Flex ops): all-MiniLM-L6-v2's exact GELU failed every litert
        # variant on it. onnx2tf 2.6.9's fusion of that GELU into tf.nn.gelu (TFLite's GELU builtin) never fires (it
        # tests the constant for `.numpy`, and gets a NumPy array), so Erf becomes onnx2tf's pseudo op instead: a
        # polynomial of builtins (Abramowitz-Stegun 7.1.26, |error| <= 1.5e-7) that tfjs runs as well.
        flags += ["-rtpo", "erf"]
    prepass = None
    with scratch_dir(out_dir) as tmp, atomic_dir(out_dir) as sm:
        def run(tag: str, flags: list[str], prepare=None):
            # onnx2tf rewrites its input file in place (onnxsim passes, op renaming): it gets a private copy, never
            # the canonical model other variants are built from.
            private = tmp / f"input{tag}" / onnx_path.name
            private.parent.mkdir()
            for f in [onnx_path, *onnx_path.parent.glob(f"{onnx_path.name}.data")]:
                shutil.copyfile(f, private.parent / f.name)
            _scope_safe_node_names(private)
            notes = prepare(private) if prepare else None
            work = tmp / f"onnx2tf_out{tag}"
            cmd = [str(exe) if exe.exists() else "onnx2tf", "-i", str(private), "-o", str(work), *flags]
            try:
                proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
            except FileNotFoundError:
                raise ToolchainMissing(f"{step}: onnx2tf command not found (pip install --no-deps "
                                       "--ignore-requires-python onnx2tf==2.6.9)") from None
            except subprocess.TimeoutExpired:
                raise ConversionError(f"{step}: timed out after {timeout_s:g}s") from None
            log = (proc.stdout or "") + "\n" + (proc.stderr or "")
            (tmp / f"onnx2tf{tag}.log").write_text(_ANSI.sub("", log))
            if proc.returncode != 0 or not (work / "saved_model.pb").exists():
                return work, _onnx2tf_failure(log) + (proc.returncode,), notes
            return work, None, notes

        ois = ["-ois", *(f"{n}:{','.join(str(int(d)) for d in shape)}" for n, shape in static_shapes.items())] \
            if static_shapes else []
        work, failed, _ = run("", flags + ois)
        if failed:
            # The second try (see _shape_prepass): the recipe's static sizes but the batch pinned in the ONNX copy,
            # no -ois (the batch stays dynamic).
            axes = batch_axes or {}
            dims = {n: [None if k == axes.get(n, 0) else int(d) for k, d in enumerate(shape)]
                    for n, shape in (static_shapes or {}).items()}
            try:
                work, again, prepass = run("_prepass", flags, lambda p: _shape_prepass(p, dims))
            except (ToolchainMissing, ConversionError):
                raise
            except Exception as e:  # noqa: BLE001 - the pre-pass itself failed: report the first failure
                again = (None, None, f"pre-pass: {type(e).__name__}: {str(e)[:200]}", None)
            if again:
                op, node, summary, code = failed
                also = f" (also after the shape pre-pass: {again[0] or 'error'} {again[1] or ''}: {again[2][:200]})"
                if op:
                    raise UnsupportedOp(step, op, f"node {node}: {summary}{also}")
                raise ConversionError(f"{step}: exit code {code}: {summary}{also}")
        for name in SAVED_MODEL_FILES:  # the rest (tflite side outputs) is not ours
            if (work / name).exists():
                os.replace(work / name, sm / name)

        _, _, sig_in, sig_out = _signature_io(sm, step)
        in_map = _match_names(in_names, list(sig_in), "inputs", step)
        out_keys = _output_key_order(list(sig_out))
        if len(out_keys) != len(onnx_outputs):
            raise ConversionError(f"{step}: SavedModel has {len(out_keys)} outputs, ONNX has {len(onnx_outputs)}")
        io = {"source": "onnx", "signature": SIGNATURE, "inputs": [], "outputs": [],
              "toolchain": toolchain_versions(), **({"onnx2tf_prepass": prepass} if prepass is not None else {})}
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


def _static_shapes(recipe) -> dict[str, list[int]]:
    """Inputs to convert at the recipe's compile_shape: those with a dynamic size besides the batch. onnx2tf does
    not carry such a size through a model's shape arithmetic: PP-OCRv4's recognizer came out with a Reshape baked
    at the width onnx2tf tried, failing at every other width and at batch 1 (never verified, as its random inputs
    need a static shape). Static, the SavedModel is verified, and static-shape runtimes pad up to it."""
    out = {}
    for i in (recipe.inputs if recipe is not None else []):
        if i.compile_shape and any(isinstance(d, str) for k, d in enumerate(i.shape) if k != i.batch_axis):
            out[i.name] = list(i.compile_shape)
    return out


def _from_onnx(inputs, dst: Path, r_in, r_out, layouts) -> dict:
    specs = {i.name: i for i in (inputs.recipe.inputs if inputs.recipe is not None else [])}
    static = _static_shapes(inputs.recipe)
    io = onnx_to_saved_model(inputs.canonical_onnx, dst, keep_nchw=None, static_shapes=static or None,
                             batch_axes={n: i.batch_axis for n, i in specs.items()})
    # Record the recipe's layout for kept inputs; rename outputs to the recipe's (canonical ONNX uses them).
    for s in io["inputs"]:
        if s["kept_shape"] and s["name"] in layouts:
            s["layout"] = layouts[s["name"]]
        if s["name"] in static:  # where the batch is, and how a smaller input fits (tfjs adapter: runStatic)
            s.update(batch_axis=specs[s["name"]].batch_axis, pad=specs[s["name"]].compile_pad)
    if r_out and [o["name"] for o in io["outputs"]] != r_out and len(r_out) == len(io["outputs"]):
        for o, name in zip(io["outputs"], r_out):
            o["onnx_name"], o["name"] = o["name"], name
    if static:
        out_axes = {o.name: o.batch_axis for o in inputs.recipe.outputs}
        for o in io["outputs"]:
            o["batch_axis"] = out_axes.get(o["name"], 0)
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
