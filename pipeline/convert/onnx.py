"""ONNX conversion steps for ONNX Runtime Web.

Every public step is a plain function ``step(src, dst, ...)`` that

* reads ``src`` (never modifies it),
* writes ``dst`` atomically: the result is produced in a hidden staging directory next to ``dst`` and
  moved into place with ``os.replace`` only after it passed ``onnx.checker`` and loaded in an
  onnxruntime session; on any error nothing is left at ``dst`` and the staging directory is removed,
* raises :class:`ConversionError` (or its subclass :class:`NotApplicable`) whose message names the step,
  the file and the cause.

Models up to 2 GB are written as one self-contained ``.onnx`` file; larger ones get a single
``<dst name>.data`` external-data file next to them.

``VARIANTS`` is the table of browser variants built from a canonical (checked) model.
"""

from __future__ import annotations

import contextlib
import functools
import io
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter

log = logging.getLogger(__name__)

__all__ = [
    "ConversionError",
    "NotApplicable",
    "export_pytorch",
    "check_and_infer",
    "simplify",
    "to_fp16",
    "int8_dynamic",
    "int8_qdq",
    "int4_matmul",
    "graph_ops",
    "file_sha256",
    "OnnxVariant",
    "BuildContext",
    "VARIANTS",
]

_TWO_GB = 2**31
# Leave headroom below the protobuf 2 GB hard limit (graph structure, names, ...).
_EXTERNAL_DATA_THRESHOLD = _TWO_GB - 64 * 2**20
_CHDIR_LOCK = threading.Lock()


class ConversionError(Exception):
    """A conversion step failed. The message names the step and the cause."""


class NotApplicable(ConversionError):
    """The requested variant makes no sense for this model (e.g. 4-bit MatMul on a graph without MatMul)."""


# --------------------------------------------------------------------------------------------------------------
# helpers: atomic output, loading, saving, checking
# --------------------------------------------------------------------------------------------------------------


def _step(name: str, describe: Callable[..., str] | None = None) -> Callable:
    """Decorator: wrap any non-ConversionError into a ConversionError naming the step and the files."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ConversionError:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised with context
                try:
                    where = describe(*args, **kwargs) if describe else _describe_src_dst(*args, **kwargs)
                except Exception:  # noqa: BLE001
                    where = ""
                raise ConversionError(f"{name} failed{where}: {type(e).__name__}: {e}") from e

        return wrapper

    return deco


def _describe_src_dst(src: Any = None, dst: Any = None, *_: Any, **__: Any) -> str:
    return f" ({src} -> {dst})"


@contextmanager
def _staged_output(dst: Path) -> Iterator[Path]:
    """Yield a path inside a hidden staging dir next to ``dst``; on success move its files into place.

    External-data files written beside the staged model are moved first, the model file last, each with
    ``os.replace`` (atomic on one filesystem). On error the staging dir is removed and ``dst`` untouched.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        staged = stage / dst.name
        yield staged
        if not staged.is_file():
            raise ConversionError(f"internal error: step produced no file at {staged}")
        # Sidecar files (external data) first, the model last: readers never see a model whose data is missing.
        for f in sorted(stage.iterdir()):
            if f != staged and f.is_file():
                os.replace(f, dst.parent / f.name)
        os.replace(staged, dst)
        # A stale external-data file from an earlier run must not linger next to a now self-contained model.
        stale = dst.parent / (dst.name + ".data")
        if stale.exists() and not (stage / stale.name).exists() and not _uses_external_data(dst):
            stale.unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def _scratch_dir(near: Path) -> Iterator[Path]:
    """A temporary working directory on the same filesystem as ``near`` (removed afterwards)."""
    Path(near).parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=".convert-scratch-", dir=Path(near).parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _uses_external_data(path: Path) -> bool:
    m = onnx.load(str(path), load_external_data=False)
    return any(onnx.external_data_helper.uses_external_data(t) for t in _all_tensors(m))


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    return onnx.external_data_helper._get_all_tensors(model)  # noqa: SLF001 - stable helper, used by onnx itself


def _load(src: Path, step: str) -> onnx.ModelProto:
    src = Path(src)
    if not src.is_file():
        raise ConversionError(f"{step}: source model {src} does not exist")
    if src.stat().st_size == 0:
        raise ConversionError(f"{step}: source model {src} is empty (0 bytes)")
    try:
        model = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001
        raise ConversionError(
            f"{step}: cannot parse ONNX file {src} (corrupt or truncated?): {type(e).__name__}: {e}"
        ) from e
    if not model.graph.node or not model.graph.output:
        raise ConversionError(
            f"{step}: ONNX file {src} has no nodes or no outputs (corrupt or truncated?)"
        )
    return model


def _model_bytes(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except Exception:  # noqa: BLE001 - protobuf refuses > 2 GB messages
        return _TWO_GB


def _save(model: onnx.ModelProto, path: Path) -> None:
    """Save as one file when it fits, otherwise with one external-data file ``<name>.data``."""
    path = Path(path)
    if _model_bytes(model) < _EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )


def _check_infer_file(path: Path) -> None:
    """checker + shape inference in place (path based, so it also works for > 2 GB models)."""
    onnx.checker.check_model(str(path))
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    onnx.checker.check_model(str(path))


def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_loads(path: Path, step: str) -> None:
    """The produced model must at least load in onnxruntime (CPU EP ~ the ORT-web wasm EP)."""
    try:
        _ort_session(path)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(
            f"{step}: result does not load in onnxruntime: {type(e).__name__}: {e}"
        ) from e


def _finish(model: onnx.ModelProto, staged: Path, step: str, *, infer: bool = False) -> None:
    _save(model, staged)
    if infer:
        _check_infer_file(staged)
    else:
        onnx.checker.check_model(str(staged))
    _ort_loads(staged, step)


def graph_ops(path: Path | str) -> set[str]:
    """Op types used by the model (main graph and subgraphs). Non-default domains are prefixed: ``com.microsoft.X``."""
    model = onnx.load(str(path), load_external_data=False)
    ops: set[str] = set()

    def walk(g: onnx.GraphProto) -> None:
        for n in g.node:
            ops.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}")
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        walk(sg)

    walk(model.graph)
    return ops


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


# --------------------------------------------------------------------------------------------------------------
# export / check
# --------------------------------------------------------------------------------------------------------------


@_step("export_pytorch", lambda model, example, dst, *a, **k: f" (-> {dst})")
def export_pytorch(
    model: Any,
    example: dict[str, np.ndarray],
    dst: Path,
    *,
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    opset: int = 18,
    exporter: str = "auto",
    verify: bool = True,
) -> None:
    """Export a torch module to ONNX at ``dst`` (checked, shape-inferred, single file when < 2 GB).

    ``example`` maps input names to example arrays, passed positionally in dict order.
    ``dynamic_axes`` maps input *and* output names to ``{axis: dim_name}``; the exported graph carries those
    dim names. ``exporter``: ``"dynamo"`` (torch.export based, default since torch 2.9, needs onnxscript),
    ``"torchscript"`` (legacy, deprecated) or ``"auto"`` (dynamo, falling back to torchscript if it raises).
    The dynamo exporter implements opset >= 18 only; a lower ``opset`` triggers a version conversion that can
    silently fail, so 18 is the default. With ``verify`` the ONNX model is run in onnxruntime on ``example`` and
    compared with PyTorch (rtol 1e-3, atol 1e-4); dynamic input axes must come out symbolic.
    """
    import torch

    dst = Path(dst)
    if not example:
        raise ConversionError("export_pytorch: example inputs are empty")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"unknown exporter {exporter!r}")
    input_names = list(example)
    dynamic_axes = {k: dict(v) for k, v in (dynamic_axes or {}).items()}
    unknown = set(dynamic_axes) - set(input_names) - set(output_names)
    if unknown:
        raise ConversionError(f"export_pytorch: dynamic_axes names {sorted(unknown)} are neither inputs nor outputs")
    arrays = {k: np.ascontiguousarray(v) for k, v in example.items()}
    args = tuple(torch.from_numpy(a.copy()) for a in arrays.values())
    model.eval()

    with _staged_output(dst) as staged:
        errors: list[str] = []
        used = None
        order = {"auto": ["dynamo", "torchscript"], "dynamo": ["dynamo"], "torchscript": ["torchscript"]}[exporter]
        for kind in order:
            try:
                for f in staged.parent.iterdir():
                    f.unlink()
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if kind == "dynamo":
                        _export_dynamo(model, args, staged, input_names, output_names, dynamic_axes, opset)
                    else:
                        _export_torchscript(model, args, staged, input_names, output_names, dynamic_axes, opset)
                used = kind
                break
            except Exception as e:  # noqa: BLE001
                errors.append(f"{kind} exporter: {type(e).__name__}: {str(e)[:2000]}")
                log.warning("export_pytorch: %s exporter failed: %s", kind, e)
        if used is None:
            raise ConversionError("export_pytorch: every exporter failed: " + " | ".join(errors))

        m = onnx.load(str(staged))
        _normalize_io(m, input_names, output_names, dynamic_axes)
        m.producer_name = f"{m.producer_name} ({used} exporter)"
        for f in staged.parent.iterdir():
            f.unlink()
        _save(m, staged)
        _check_infer_file(staged)
        got_opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
        if got_opset != opset:
            log.warning("export_pytorch: requested opset %s, model has opset %s", opset, got_opset)
        if verify:
            sess = _ort_session(staged)
            _verify_against_torch(model, sess, arrays, output_names, what="example inputs")
            grown = _grow_dynamic_axes(arrays, dynamic_axes)
            if grown is not None:
                _verify_against_torch(model, sess, grown, output_names, what="inputs with dynamic axes doubled")


def _torch_outputs(model, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        ref = model(*(torch.from_numpy(a.copy()) for a in arrays.values()))
    ref_list = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    return [r.detach().cpu().numpy() for r in ref_list]


def _verify_against_torch(model, sess, arrays, output_names, *, what: str) -> None:
    try:
        ref = _torch_outputs(model, arrays)
    except Exception as e:  # noqa: BLE001 - the model itself rejects these inputs: nothing to compare
        log.warning("export_pytorch: PyTorch cannot run %s (%s); skipped that check", what, e)
        return
    try:
        got = sess.run(None, arrays)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"export_pytorch: exported model fails on {what}: {type(e).__name__}: {e}") from e
    if len(got) != len(ref):
        raise ConversionError(f"export_pytorch: ONNX model has {len(got)} outputs, PyTorch {len(ref)}")
    for name, g, r in zip(output_names, got, ref):
        if g.shape != r.shape or not np.allclose(g, r, rtol=1e-3, atol=1e-4):
            diff = float(np.max(np.abs(g - r))) if g.shape == r.shape else float("nan")
            raise ConversionError(
                f"export_pytorch: output {name!r} on {what} differs from PyTorch "
                f"(shapes {g.shape} vs {r.shape}, max abs diff {diff:g})"
            )


def _grow_dynamic_axes(arrays: dict[str, np.ndarray], dynamic_axes) -> dict[str, np.ndarray] | None:
    """Inputs with every dynamic axis doubled (tiled), to check the export did not specialise on its size."""
    if not any(n in dynamic_axes for n in arrays):
        return None
    out = {}
    for name, a in arrays.items():
        for axis in (dynamic_axes.get(name) or {}):
            a = np.concatenate([a, a], axis=axis)
        out[name] = np.ascontiguousarray(a)
    return out


def _export_dynamo(model, args, path: Path, input_names, output_names, dynamic_axes, opset) -> None:
    import torch

    dynamic_shapes = None
    if any(n in dynamic_axes for n in input_names):
        # Tuple form (one entry per positional arg) with string dim names -> torch.export.Dim.DYNAMIC named dims.
        dynamic_shapes = tuple(dynamic_axes.get(n) or None for n in input_names)
    prog = torch.onnx.export(
        model,
        args,
        None,
        input_names=input_names,
        output_names=list(output_names),
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        optimize=True,
        verbose=False,
        report=False,
    )
    if prog is None:
        raise ConversionError("dynamo exporter returned no program")
    big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) >= _EXTERNAL_DATA_THRESHOLD
    prog.save(str(path), external_data=big)


def _export_torchscript(model, args, path: Path, input_names, output_names, dynamic_axes, opset) -> None:
    import torch

    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=input_names,
        output_names=list(output_names),
        dynamic_axes=dynamic_axes or None,
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )


def _normalize_io(model: onnx.ModelProto, input_names, output_names, dynamic_axes) -> None:
    """Check I/O names; give the requested dynamic axes the requested dim names (inputs and outputs)."""
    ins = [i.name for i in _graph_inputs(model)]
    outs = [o.name for o in model.graph.output]
    if ins != list(input_names):
        raise ConversionError(f"export_pytorch: graph inputs are {ins}, requested {list(input_names)}")
    if outs != list(output_names):
        raise ConversionError(f"export_pytorch: graph outputs are {outs}, requested {list(output_names)}")
    vis = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for name, axes in dynamic_axes.items():
        dims = vis[name].type.tensor_type.shape.dim
        for axis, dim_name in axes.items():
            if axis >= len(dims):
                raise ConversionError(f"export_pytorch: {name!r} has rank {len(dims)}, no axis {axis} to make dynamic")
            d = dims[axis]
            if d.HasField("dim_value") and name in input_names:
                raise ConversionError(
                    f"export_pytorch: input {name!r} axis {axis} was exported as fixed size {d.dim_value}, "
                    "not dynamic (the model specialises on it)"
                )
            if d.HasField("dim_value"):
                log.warning("export_pytorch: output %r axis %s exported as fixed size %s", name, axis, d.dim_value)
                continue
            d.dim_param = str(dim_name)


@_step("check_and_infer")
def check_and_infer(src: Path, dst: Path, *, input_shapes: dict[str, list[int | str]] | None = None) -> None:
    """For ONNX-file sources: load, onnx.checker, shape inference, save (single file when < 2 GB).

    `input_shapes` (from the recipe) replace the file's declared input shapes: old exporters write -1 or '?'
    for dimensions that are really a named batch axis or fixed, which quantizers and browsers handle badly."""
    model = _load(src, "check_and_infer")
    for inp in model.graph.input:
        if input_shapes and inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            want = input_shapes[inp.name]
            if len(dims) != len(want):
                raise ConversionError(f"check_and_infer: input {inp.name!r} of {src} has rank {len(dims)}, "
                                      f"recipe shape {want} has rank {len(want)}")
            for d, w in zip(dims, want):
                if isinstance(w, str):
                    d.dim_param = w
                else:
                    d.dim_value = w
    try:
        onnx.checker.check_model(model if _model_bytes(model) < _EXTERNAL_DATA_THRESHOLD else str(src))
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"check_and_infer: ONNX file {src} is invalid: {type(e).__name__}: {e}") from e
    with _staged_output(Path(dst)) as staged:
        _finish(model, staged, "check_and_infer", infer=True)


# --------------------------------------------------------------------------------------------------------------
# variants
# --------------------------------------------------------------------------------------------------------------


def _test_input_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for i in _graph_inputs(model):
        dims = i.type.tensor_type.shape.dim
        shapes[i.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims]
    return shapes


@_step("simplify")
def simplify(src: Path, dst: Path, *, fuse_matmul_add_into_gemm: bool = True) -> None:
    """onnxsim.simplify with a numerical check (3 random inputs, dynamic dims set to 1 for the check only).

    ``fuse_matmul_add_into_gemm=False`` skips onnxsim's MatMul+Add -> Gemm fusion (keeps MatMul for int4).
    """
    import onnxsim

    model = _load(src, "simplify")
    skipped = None if fuse_matmul_add_into_gemm else ["fuse_matmul_add_bias_into_gemm"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(
                model,
                check_n=3,
                test_input_shapes=_test_input_shapes(model),
                skipped_optimizers=skipped,
                certify=False,
            )
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"simplify: onnxsim failed on {src}: {type(e).__name__}: {e}") from e
    if not ok:
        raise ConversionError(f"simplify: onnxsim check failed on {src}: simplified outputs differ from the original")
    with _staged_output(Path(dst)) as staged:
        _finish(simplified, staged, "simplify")


FP16_EXTRA_BLOCK_LIST: tuple[str, ...] = ()


@_step("to_fp16")
def to_fp16(src: Path, dst: Path, *, op_block_list: tuple[str, ...] | list[str] = ()) -> None:
    """float32 -> float16 weights and compute, float32 inputs/outputs (keep_io_types=True).

    ``op_block_list`` adds op types that must stay float32 to onnxconverter-common's default block list
    (Resize, Range, CumSum, TopK, NonMaxSuppression, Min, Max, ...).
    """
    from onnxconverter_common import float16

    model = _load(src, "to_fp16")
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_EXTRA_BLOCK_LIST) | set(op_block_list))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated" noise
        converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    with _staged_output(Path(dst)) as staged:
        _finish(converted, staged, "to_fp16")


def _preprocess_for_quant(src: Path, work: Path, step: str) -> Path:
    """onnxruntime quant_pre_process (symbolic shape inference + basic ORT optimisation); best effort."""
    from onnxruntime.quantization import quant_pre_process

    out = work / "preprocessed.onnx"
    try:
        # onnxruntime's symbolic shape inference dumps "sym_shape_infer_temp.onnx" into the *current directory*
        # when it cannot infer every shape: run it from the scratch dir (paths above are absolute).
        with _CHDIR_LOCK, contextlib.chdir(work):
            quant_pre_process(str(Path(src).resolve()), str(out.resolve()), skip_optimization=False)
        return out
    except Exception as e:  # noqa: BLE001
        log.warning("%s: quant_pre_process failed (%s), quantizing the model as is", step, e)
        return Path(src)


_QUANT_MARKERS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                  "QLinearConv", "QLinearMatMul", "com.microsoft.DynamicQuantizeMatMul",
                  "com.microsoft.MatMulIntegerToFloat"}


@_step("int8_dynamic")
def int8_dynamic(src: Path, dst: Path) -> None:
    """Dynamic (weights int8, activations quantized at run time) quantization of MatMul/Gemm/Conv/...

    Weights are QInt8, except for graphs with Conv: ONNX Runtime's CPU (and wasm) ConvInteger kernel only
    takes uint8 weights, so those get QUInt8. Conv becomes ConvInteger, which is slow; measure.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _load(src, "int8_dynamic")
    _ort_loads(Path(src), "int8_dynamic (source model)")  # a broken source must not look like "not applicable"
    has_conv = any(n.op_type == "Conv" for n in model.graph.node)
    weight_type = QuantType.QUInt8 if has_conv else QuantType.QInt8
    with _scratch_dir(Path(dst)) as work, _staged_output(Path(dst)) as staged:
        pre = _preprocess_for_quant(Path(src), work, "int8_dynamic")
        quantize_dynamic(str(pre), str(staged), weight_type=weight_type, per_channel=False)
        if not graph_ops(staged) & _QUANT_MARKERS:
            raise NotApplicable(f"int8_dynamic: {src} has no op that dynamic quantization handles (MatMul, Gemm, Conv, ...)")
        onnx.checker.check_model(str(staged))
        _ort_loads(staged, "int8_dynamic")


class _StackedReader:
    """CalibrationDataReader over stacked samples ``{input: [N, ...]}`` fed in chunks of ``batch`` rows."""

    def __init__(self, data: dict[str, np.ndarray], batch: int):
        self.data = data
        self.batch = batch
        self.n = len(next(iter(data.values())))
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.n:
            return None
        chunk = {k: v[self.i : self.i + self.batch] for k, v in self.data.items()}
        self.i += self.batch
        return chunk

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return -(-self.n // self.batch)


def _validate_calibration(model: onnx.ModelProto, calibration: dict[str, np.ndarray] | None, batch: int, src) -> dict:
    if not calibration:
        raise ConversionError("int8_qdq: needs calibration data, none given")
    if batch < 1:
        raise ConversionError(f"int8_qdq: calibration batch must be >= 1, got {batch}")
    inputs = {i.name: i for i in _graph_inputs(model)}
    missing = set(inputs) - set(calibration)
    extra = set(calibration) - set(inputs)
    if missing or extra:
        raise ConversionError(
            f"int8_qdq: calibration inputs {sorted(calibration)} do not match the inputs of {src} {sorted(inputs)}"
        )
    sizes = {k: len(v) for k, v in calibration.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise ConversionError(f"int8_qdq: calibration arrays need the same non-zero sample count, got {sizes}")
    out = {}
    for name, arr in calibration.items():
        arr = np.asarray(arr)
        elem = inputs[name].type.tensor_type.elem_type
        want = onnx.helper.tensor_dtype_to_np_dtype(elem)
        out[name] = np.ascontiguousarray(arr.astype(want, copy=False))
        dims = inputs[name].type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value not in (batch,):
            raise ConversionError(
                f"int8_qdq: input {name!r} has fixed batch {dims[0].dim_value}, calibration batch is {batch}"
            )
        if dims and dims[0].HasField("dim_value") and sizes[name] % batch:
            raise ConversionError(
                f"int8_qdq: {sizes[name]} calibration samples do not split into fixed batches of {batch}"
            )
    return out


@_step("int8_qdq")
def int8_qdq(src: Path, dst: Path, calibration: dict[str, np.ndarray] | None, *, batch: int = 1) -> None:
    """Static int8 quantization, QDQ format, per-channel int8 weights, uint8 activations (MinMax calibration).

    Graph outputs stay float (their trailing Q/DQ pair is removed) so logits are not clipped to the
    calibration range.

    ``calibration`` holds stacked samples ``{input_name: [N, ...]}``; they are fed in chunks of ``batch``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = _load(src, "int8_qdq")
    data = _validate_calibration(model, calibration, batch, src)
    with _scratch_dir(Path(dst)) as work, _staged_output(Path(dst)) as staged:
        pre = _preprocess_for_quant(Path(src), work, "int8_qdq")
        # Per-channel QDQ needs DequantizeLinear's `axis` (opset >= 13). Older models (e.g. Paddle exports at
        # opset 11) are converted up first; where that fails, per-tensor scales still work at their opset.
        pre, per_channel = _at_least_opset13(pre, work)
        quantize_static(
            str(pre),
            str(staged),
            _StackedReader(data, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        q = onnx.load(str(staged))
        if _drop_output_qdq(q):
            _save(q, staged)
        if not graph_ops(staged) & _QUANT_MARKERS:
            raise NotApplicable(f"int8_qdq: {src} has no op that static quantization handles")
        onnx.checker.check_model(str(staged))
        _ort_loads(staged, "int8_qdq")


def _at_least_opset13(path: Path, work: Path) -> tuple[Path, bool]:
    """(model path, per-channel possible): the model itself when its opset is >= 13, else a converted copy."""
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= 13:
        return path, True
    try:
        up = onnx.version_converter.convert_version(model, 13)
        onnx.checker.check_model(up)
    except Exception as e:  # noqa: BLE001
        log.warning("int8_qdq: opset %d -> 13 conversion failed (%s); using per-tensor scales", opset, e)
        return path, False
    out = work / "opset13.onnx"
    onnx.save(up, str(out))
    return out, True


def _drop_output_qdq(model: onnx.ModelProto) -> int:
    """Remove QuantizeLinear -> DequantizeLinear pairs that only feed graph outputs.

    MinMax calibration clips graph outputs (e.g. logits) to the range seen in calibration; nothing downstream
    benefits from their quantization, so the producing op writes the float output directly. Returns the count.
    """
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    removed = 0
    for out in g.output:
        dq = producers.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear" or consumers.get(out.name):
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or len(consumers.get(q.output[0], [])) != 1:
            continue
        src = q.input[0]
        p = producers.get(src)
        if p is None or len(consumers.get(src, [])) != 1 or any(o.name == src for o in g.output):
            continue
        p.output[list(p.output).index(src)] = out.name
        g.node.remove(q)
        g.node.remove(dq)
        removed += 1
    if removed:
        used = {i for n in g.node for i in n.input}
        keep = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(keep)
    return removed


def _int4_candidates(model: onnx.ModelProto) -> tuple[int, int]:
    """(MatMul nodes with a constant 2-D weight as input B, Gemm nodes) in the main graph."""
    inits = {i.name: i for i in model.graph.initializer}
    n_mm = 0
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
            w = inits.get(node.input[1])
            if w is not None and len(w.dims) == 2:
                n_mm += 1
    n_gemm = sum(1 for n in model.graph.node if n.op_type == "Gemm")
    return n_mm, n_gemm


def _import_matmul_nbits():
    """onnxruntime's matmul_nbits_quantizer calls logging.basicConfig() at import, which adds a root handler and
    makes every Luigi log line print twice: import it with the root logger's handlers and level restored."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    return matmul_nbits_quantizer


@_step("int4_matmul")
def int4_matmul(src: Path, dst: Path, *, block_size: int = 32, is_symmetric: bool = True) -> None:
    """4-bit weight-only quantization: MatMul with a constant 2-D weight -> com.microsoft MatMulNBits.

    onnxruntime's MatMulNBitsQuantizer handles MatMul only (and Gather, not used here): Gemm is left in float,
    so a model whose only matrix products are Gemm/Conv raises :class:`NotApplicable`.
    """
    mnb = _import_matmul_nbits()

    if block_size < 16 or block_size & (block_size - 1):
        raise ConversionError(f"int4_matmul: block_size must be a power of two >= 16, got {block_size}")
    model = _load(src, "int4_matmul")
    _ort_loads(Path(src), "int4_matmul (source model)")
    n_mm, n_gemm = _int4_candidates(model)
    if n_mm == 0:
        why = (f"; it has {n_gemm} Gemm node(s), which MatMulNBitsQuantizer does not handle" if n_gemm else "")
        raise NotApplicable(f"int4_matmul: {src} has no MatMul with a constant 2-D weight{why}")
    q = mnb.MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=block_size,
        is_symmetric=is_symmetric,
        quant_format=mnb.QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
    )
    q.process()
    out = q.model.model
    n_nbits = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")
    if n_nbits == 0:
        raise NotApplicable(f"int4_matmul: quantizer replaced no MatMul of {src}")
    with _staged_output(Path(dst)) as staged:
        _finish(out, staged, "int4_matmul")


# --------------------------------------------------------------------------------------------------------------
# variant table
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BuildContext:
    calibration: dict[str, np.ndarray] | None = None
    calibration_batch: int = 1


@dataclass(frozen=True)
class OnnxVariant:
    name: str
    build: Callable[[Path, Path, BuildContext], None]  # (canonical src, dst, ctx)
    needs_calibration: bool
    backends: tuple[str, ...]
    required_features: dict[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    base: str = "canonical"  # what the build starts from internally: "canonical" or "simplified"


@_step("copy")
def _copy_model(src: Path, dst: Path) -> None:
    model = _load(src, "fp32")
    with _staged_output(Path(dst)) as staged:
        if _uses_external_data(Path(src)):
            _save(model, staged)  # re-save: external data must follow the new file name
        else:
            shutil.copyfile(src, staged)
        _ort_loads(staged, "fp32")


def _via_simplified(step: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    """Run ``step`` on a simplified copy of src (falls back to src itself if onnxsim fails)."""

    def run(src: Path, dst: Path) -> None:
        with _scratch_dir(Path(dst)) as work:
            simp = work / "simplified.onnx"
            try:
                simplify(src, simp)
                base = simp
            except ConversionError as e:
                log.warning("%s: simplify failed (%s); starting from the canonical model", Path(dst).name, e)
                base = Path(src)
            step(base, dst)

    return run


def _build_qdq(src: Path, dst: Path, ctx: BuildContext) -> None:
    _via_simplified(lambda s, d: int8_qdq(s, d, ctx.calibration, batch=ctx.calibration_batch))(src, dst)


VARIANTS: dict[str, OnnxVariant] = {
    v.name: v
    for v in [
        OnnxVariant(
            name="fp32",
            build=lambda src, dst, ctx: _copy_model(src, dst),
            needs_calibration=False,
            backends=("wasm", "webgpu"),
            description="The canonical (exported, checked, shape-inferred) float32 model, unchanged.",
        ),
        OnnxVariant(
            name="simplified",
            build=lambda src, dst, ctx: simplify(src, dst),
            needs_calibration=False,
            backends=("wasm", "webgpu"),
            description="onnxsim: constant folding, BN folding, MatMul+Add->Gemm on 2-D, numerically checked.",
            base="canonical",
        ),
        OnnxVariant(
            name="fp16",
            build=lambda src, dst, ctx: _via_simplified(to_fp16)(src, dst),
            needs_calibration=False,
            # wasm too: whether ORT's CPU kernels take float16 is measured, not assumed.
            backends=("wasm", "webgpu"),
            required_features={"webgpu": ("shader-f16",)},
            description=(
                "float16 weights and compute, float32 I/O (Cast at the boundary). Starts from the simplified "
                "model (folded constants need no Casts). Worth it only on WebGPU with shader-f16: without it "
                "ORT-web returns garbage silently; wasm has almost no fp16 kernels."
            ),
            base="simplified",
        ),
        OnnxVariant(
            name="int8_dynamic",
            build=lambda src, dst, ctx: int8_dynamic(src, dst),
            needs_calibration=False,
            # WebGPU lacks these ops; ORT-web may place them on its CPU kernels instead: measured, not assumed.
            backends=("wasm", "webgpu"),
            description=(
                "Dynamic int8 (onnxruntime quantize_dynamic after quant_pre_process): MatMulInteger/ConvInteger + "
                "DynamicQuantizeLinear. WebGPU/WebGL have no DynamicQuantizeLinear (ORT-web runs those nodes on its CPU "
                "kernels); ConvInteger is slow natively and in wasm."
            ),
            base="canonical",
        ),
        OnnxVariant(
            name="int8_qdq",
            build=_build_qdq,
            needs_calibration=True,
            # Measured on WebGPU too: wrong values there are what the accuracy gate exists to catch.
            backends=("wasm", "webgpu"),
            description=(
                "Static int8, QDQ format (QuantizeLinear/DequantizeLinear around Conv/MatMul/Gemm), per-channel "
                "int8 weights, uint8 activations, MinMax calibration. Starts from the simplified model (fewer "
                "tensors to quantize). QDQ on ORT-web WebGPU was seen to give wrong values without an error: the "
                "accuracy gate decides."
            ),
            base="simplified",
        ),
        OnnxVariant(
            name="int4",
            build=lambda src, dst, ctx: int4_matmul(src, dst),
            needs_calibration=False,
            backends=("wasm", "webgpu"),
            description=(
                "4-bit weight-only (block 32, symmetric) for MatMul with constant 2-D weights -> com.microsoft "
                "MatMulNBits; other ops stay float32. Starts from the canonical model, not the simplified one "
                "(onnxsim fuses 2-D MatMul+Add into Gemm, which the quantizer skips). NotApplicable without such MatMul."
            ),
            base="canonical",
        ),
    ]
}
