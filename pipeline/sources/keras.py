"""Keras 3 sources: a ``.keras`` model (a file, a file inside a package, or a trainer that writes one).

The canonical ONNX comes from tf2onnx (batch axis dynamic, inputs/outputs renamed to the recipe's names, checked
against Keras); the reference outputs are Keras's own (TensorFlow backend, inference mode). TensorFlow is imported
through :func:`tensorflow` only, so its environment (oneDNN off) is set before the first import.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from pipeline.evaluate.samples import random_inputs
from pipeline.fsutil import write_bytes_atomic
from pipeline.onnx_utils import graph_inputs, ort_session
from pipeline.outcome import ConversionError, SourceError, ToolchainMissing, UnsupportedOp
from pipeline.sources import SourceKind

# Must be set before TensorFlow is first imported in this process: with oneDNN, grappler fuses conv+hardswish
# into an op no TensorFlow.js backend implements.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tensorflow():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ToolchainMissing(f"import tensorflow: {e} (pip install tensorflow-cpu==2.21.0)") from None
    return tf


def tf_numpy_dtype(tf_dtype) -> str:
    return np.dtype(tf_dtype.as_numpy_dtype).name


def load_keras(keras_file: Path, step: str = "load Keras model"):
    """A Keras 3 model file under any name (a ``.keras`` zip is recognised by content)."""
    tensorflow()
    import keras

    keras_file = Path(keras_file)
    try:
        if keras_file.suffix == ".keras":
            return keras.saving.load_model(str(keras_file), compile=False)
        with tempfile.TemporaryDirectory(prefix="keras-load-") as d:
            link = Path(d) / "model.keras"
            os.symlink(keras_file.resolve(), link)
            return keras.saving.load_model(str(link), compile=False)
    except Exception as e:
        raise SourceError(f"{step}: cannot load Keras model {keras_file}: {type(e).__name__}: {str(e)[:300]}") \
            from None


def keras_names(model, input_names, output_names, step):
    """(Keras input names, Keras output names, recipe input names, recipe output names), in the model's order."""
    k_in = [t.name if hasattr(t, "name") else str(t) for t in model.inputs]
    k_out = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
    if input_names is not None and len(input_names) != len(k_in):
        raise ConversionError(f"{step}: model has {len(k_in)} inputs {k_in}, recipe names {list(input_names)}")
    if output_names is not None and len(output_names) != len(k_out):
        raise ConversionError(f"{step}: model has {len(k_out)} outputs {k_out}, recipe names {list(output_names)}")
    return k_in, k_out, list(input_names or k_in), list(output_names or k_out)


def keras_run(model, inputs: dict[str, np.ndarray], input_names: list[str], output_names: list[str],
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
    """The model (TF backend, inference mode) on ``inputs`` in batches.

    ``inputs`` are keyed by the recipe's input names (``input_names`` in the model's input order; default: the
    order of ``inputs``); outputs come back keyed by ``output_names`` (the recipe's, in the model's output order).
    """
    step = "keras reference"
    model = load_keras(Path(keras_file), step)
    names = list(input_names or inputs)
    keras_names(model, names, output_names, step)
    missing = [k for k in names if k not in inputs]
    if missing:
        raise ConversionError(f"{step}: inputs {missing} missing (got {list(inputs)})")
    return keras_run(model, inputs, names, list(output_names), batch)


def keras_to_onnx(keras_file: str | Path, dst: str | Path, *, opset: int = 18, input_names: list[str] | None = None,
                  output_names: list[str] | None = None, verify: bool = True) -> Path:
    """Keras 3 ``.keras`` -> ONNX with tf2onnx (``from_keras``), atomically at ``dst``; batch axis dynamic.

    Graph inputs/outputs are renamed to the recipe's names (defaults: the Keras names). With ``verify`` the ONNX
    model is run in onnxruntime on random inputs and compared with Keras.
    """
    import onnx

    keras_file, dst = Path(keras_file), Path(dst)
    step = "keras->onnx (tf2onnx)"
    model = load_keras(keras_file, step)
    k_in, k_out, r_in, r_out = keras_names(model, input_names, output_names, step)
    tf = tensorflow()
    try:
        import tf2onnx
    except ImportError as e:
        raise ToolchainMissing(f"{step}: {e} (pip install --no-deps tf2onnx==1.17.0)") from None
    spec = tuple(tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=r) for t, r in zip(model.inputs, r_in))
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    except Exception as e:
        m = re.search(r"[Uu]nsupported ops?:?\s*(?:Counter\()?\{?'?([A-Za-z0-9_]+)", str(e))
        if m:
            raise UnsupportedOp(step, m.group(1), str(e)[:300]) from None
        raise ConversionError(f"{step}: {type(e).__name__}: {str(e)[:400]}") from None
    rename = dict(zip([i.name for i in graph_inputs(proto)], r_in))
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
        raise ConversionError(f"{step}: invalid ONNX: {str(e)[:300]}") from None
    if verify:
        io_specs = [{"name": r, "dtype": tf_numpy_dtype(t.dtype) if hasattr(t.dtype, "as_numpy_dtype")
                     else np.dtype(t.dtype).name, "shape": [None, *t.shape[1:]]} for t, r in zip(model.inputs, r_in)]
        example = random_inputs(io_specs)
        if example is not None:
            sess = ort_session(proto.SerializeToString())
            got = dict(zip(r_out, sess.run(r_out, example)))
            ref = keras_run(model, example, r_in, r_out, batch=2)
            for k in r_out:
                if not np.allclose(got[k], ref[k], rtol=1e-3, atol=1e-4):
                    err = float(np.max(np.abs(got[k] - ref[k])))
                    raise ConversionError(f"{step}: output {k} differs from Keras (max abs error {err:.3g})")
    write_bytes_atomic(dst, proto.SerializeToString())
    return dst


def to_onnx(recipe, source_file: Path, example: dict[str, np.ndarray], dst: Path) -> None:
    keras_to_onnx(source_file, dst, opset=recipe.source.opset, input_names=[i.name for i in recipe.inputs],
                  output_names=[o.name for o in recipe.outputs])


def outputs(recipe, source_file: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return keras_outputs(source_file, inputs, recipe.data.eval_batch, [o.name for o in recipe.outputs],
                         [i.name for i in recipe.inputs])


SOURCE = SourceKind(kind="keras", framework="keras", file_ref=lambda source: source, trained_file="model.keras",
                    to_onnx=to_onnx, outputs=outputs)
