"""ONNX Runtime Web conversions: plain functions ``step(src, dst, ...)`` that

* read ``src`` (never modify it),
* write ``dst`` atomically (``pipeline.fsutil.atomic_file``): the result appears only after it passed
  ``onnx.checker`` and loaded in an onnxruntime session; on any error nothing is left at ``dst``,
* raise :class:`~pipeline.outcome.ConversionError` (or :class:`~pipeline.outcome.NotApplicable`) naming the step,
  the file and the cause.

Models up to 2 GB are written as one self-contained ``.onnx`` file; larger ones get a single
``<dst name>.data`` external-data file next to them. The family's variant table is in ``__init__.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

from pipeline.fsutil import atomic_file, scratch_dir
from pipeline.onnx_utils import (graph_inputs, graph_ops, load_model, opset_of, ort_session, save_model,
                                 uses_external_data)
from pipeline.outcome import ConversionError, NotApplicable, conversion_step

log = logging.getLogger(__name__)

_CHDIR_LOCK = threading.Lock()


@contextlib.contextmanager
def model_output(dst: Path) -> Iterator[Path]:
    """Where a step writes its model: an atomic file at ``dst`` (external data moves with it, the model last).
    A stale external-data file of an earlier run must not linger next to a now self-contained model."""
    dst = Path(dst)
    with atomic_file(dst) as staged:
        yield staged
        if not staged.is_file():
            raise ConversionError(f"internal error: step produced no file at {staged}")
        fresh_data = staged.with_name(dst.name + ".data").exists()
    stale = dst.with_name(dst.name + ".data")
    if stale.exists() and not fresh_data:
        stale.unlink()


def _ort_loads(path: Path, step: str) -> None:
    """The produced model must at least load in onnxruntime (CPU EP ~ the ORT-web wasm EP)."""
    try:
        ort_session(path)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{step}: result does not load in onnxruntime: {type(e).__name__}: {e}") from e


def _finish(model: onnx.ModelProto, staged: Path, step: str) -> None:
    save_model(model, staged)
    onnx.checker.check_model(str(staged))
    _ort_loads(staged, step)


def _test_input_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for i in graph_inputs(model):
        dims = i.type.tensor_type.shape.dim
        shapes[i.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims]
    return shapes


@conversion_step("simplify")
def simplify(src: Path, dst: Path, *, fuse_matmul_add_into_gemm: bool = True) -> None:
    """onnxsim.simplify with a numerical check (3 random inputs, dynamic dims set to 1 for the check only).

    ``fuse_matmul_add_into_gemm=False`` skips onnxsim's MatMul+Add -> Gemm fusion (keeps MatMul for int4).
    """
    import onnxsim

    model = load_model(src, "simplify")
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
    with model_output(Path(dst)) as staged:
        _finish(simplified, staged, "simplify")


FP16_EXTRA_BLOCK_LIST: tuple[str, ...] = ()


@conversion_step("to_fp16")
def to_fp16(src: Path, dst: Path, *, op_block_list: tuple[str, ...] | list[str] = ()) -> None:
    """float32 -> float16 weights and compute, float32 inputs/outputs (keep_io_types=True).

    ``op_block_list`` adds op types that must stay float32 to onnxconverter-common's default block list
    (Resize, Range, CumSum, TopK, NonMaxSuppression, Min, Max, ...).
    """
    from onnxconverter_common import float16

    model = load_model(src, "to_fp16")
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_EXTRA_BLOCK_LIST) | set(op_block_list))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated" noise
        converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    _cast_to_declared_type(converted)
    with model_output(Path(dst)) as staged:
        _finish(converted, staged, "to_fp16")


def _cast_to_declared_type(model: onnx.ModelProto) -> int:
    """onnxconverter-common retypes a Cast's output to float16 but leaves the Cast's own `to=FLOAT` (seen on the
    attention mask of transformers' BERT: Cast(bool -> float) feeding float16 arithmetic), which onnxruntime
    refuses to load. Make such Casts produce the type the converted graph declares for their output."""
    declared = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    fixed = 0
    for node in model.graph.node:
        if node.op_type != "Cast" or declared.get(node.output[0]) != onnx.TensorProto.FLOAT16:
            continue
        for a in node.attribute:
            if a.name == "to" and a.i == onnx.TensorProto.FLOAT:
                a.i = onnx.TensorProto.FLOAT16
                fixed += 1
    return fixed


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


@conversion_step("int8_dynamic")
def int8_dynamic(src: Path, dst: Path) -> None:
    """Dynamic (weights int8, activations quantized at run time) quantization of MatMul/Gemm/Conv/...

    Weights are QInt8, except for graphs with Conv: ONNX Runtime's CPU (and wasm) ConvInteger kernel only
    takes uint8 weights, so those get QUInt8. Conv becomes ConvInteger, which is slow; measure.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = load_model(src, "int8_dynamic")
    _ort_loads(Path(src), "int8_dynamic (source model)")  # a broken source must not look like "not applicable"
    has_conv = any(n.op_type == "Conv" for n in model.graph.node)
    weight_type = QuantType.QUInt8 if has_conv else QuantType.QInt8
    with scratch_dir(Path(dst)) as work, model_output(Path(dst)) as staged:
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
        self.i, self.end = 0, self.n

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.end:
            return None
        chunk = {k: v[self.i : min(self.i + self.batch, self.end)] for k, v in self.data.items()}
        self.i += self.batch
        return chunk

    def rewind(self) -> None:
        self.i, self.end = 0, self.n

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feed only batches [start_index, end_index) (onnxruntime's strided calibration, CalibStridedMinMax)."""
        self.i, self.end = start_index * self.batch, min(end_index * self.batch, self.n)

    def __len__(self) -> int:
        return -(-self.n // self.batch)


# onnxruntime's calibrators keep every intermediate tensor of every batch a collect_data call sees until it ends:
# over a whole calibration set that is gigabytes (text_recognition's 1000-px lines: the build was OOM-killed at
# 22 GB). Ranges are collected over strides of at most this many samples instead (histograms merge across strides).
CALIBRATION_STRIDE_SAMPLES = 4


def calibration_stride(batches: int, batch: int, max_samples: int = CALIBRATION_STRIDE_SAMPLES) -> int:
    """The most batches per collect_data call that divides `batches` (onnxruntime requires it) and holds at most
    `max_samples` samples (at least one batch)."""
    limit = max(1, max_samples // batch)
    return max(d for d in range(1, min(batches, limit) + 1) if batches % d == 0)


def _validate_calibration(model: onnx.ModelProto, calibration: dict[str, np.ndarray] | None, batch: int, src) -> dict:
    if not calibration:
        raise ConversionError("int8_qdq: needs calibration data, none given")
    if batch < 1:
        raise ConversionError(f"int8_qdq: calibration batch must be >= 1, got {batch}")
    inputs = {i.name: i for i in graph_inputs(model)}
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


@conversion_step("int8_qdq")
def int8_qdq(src: Path, dst: Path, calibration: dict[str, np.ndarray] | None, *, batch: int = 1,
             exclude: tuple[str, ...] | list[str] = (), calibrate: str = "minmax",
             record: dict | None = None) -> None:
    """Static int8 quantization, QDQ format, per-channel int8 weights, uint8 activations (the pair ORT-web's wasm
    kernels take: its quantized GEMM wants unsigned activations, weights of either sign).

    Graph outputs stay float (their trailing Q/DQ pair is removed) so logits are not clipped to the
    calibration range. ``exclude`` names nodes (of the model after quant_pre_process, which keeps node names)
    kept in float, robustly (:func:`_keep_float`); ``calibrate`` is ``"minmax"`` or ``"percentile"``;
    ``record`` (JSON) is stored in the model's metadata as ``pipeline.quantization``.

    ``calibration`` holds stacked samples ``{input_name: [N, ...]}``; they are fed in chunks of ``batch``.
    """
    model = load_model(src, "int8_qdq")
    data = _validate_calibration(model, calibration, batch, src)
    with scratch_dir(Path(dst)) as work, model_output(Path(dst)) as staged:
        pre, per_channel = _quant_input(Path(src), work)
        _quantize_qdq(pre, staged, data, batch, per_channel, exclude, calibrate, cache=None)
        if not graph_ops(staged) & _QUANT_MARKERS:
            raise NotApplicable(f"int8_qdq: {src} has no op that static quantization handles")
        if record is not None:
            q = onnx.load(str(staged))
            _set_metadata(q, QUANT_RECORD_KEY, record)
            save_model(q, staged)
        onnx.checker.check_model(str(staged))
        _ort_loads(staged, "int8_qdq")


QUANT_RECORD_KEY = "pipeline.quantization"
CALIBRATION_METHODS = ("minmax", "percentile")


def _quant_input(src: Path, work: Path) -> tuple[Path, bool]:
    """quant_pre_process, then opset >= 13 where possible: (model to quantize, per-channel possible)."""
    pre = _preprocess_for_quant(Path(src), work, "int8_qdq")
    # Per-channel QDQ needs DequantizeLinear's `axis` (opset >= 13). Older models (e.g. Paddle exports at
    # opset 11) are converted up first; where that fails, per-tensor scales still work at their opset.
    return _at_least_opset13(pre, work)


def _quantize_qdq(pre: Path, out: Path, data: dict, batch: int, per_channel: bool, exclude, calibrate: str,
                  cache: Path | None) -> None:
    """One QDQ quantization of ``pre`` into ``out`` (uint8 activations, int8 weights), ``exclude`` kept float.
    With ``cache`` the calibration ranges are computed once and reused (the sensitivity pass)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calibrate not in CALIBRATION_METHODS:
        raise ConversionError(f"int8_qdq: calibrate must be one of {CALIBRATION_METHODS}, got {calibrate!r}")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[calibrate]
    known = {n.name for n in onnx.load(str(pre), load_external_data=False).graph.node}
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise ConversionError(f"int8_qdq: nodes to keep in float not in the model: {unknown}")
    n = len(next(iter(data.values())))
    if calibrate == "percentile" and n % batch:
        # onnxruntime's histogram collector stacks every batch's tensors: a smaller last batch breaks it. Validated
        # above: a fixed batch dimension divides the samples, so here the batch dimension is dynamic.
        batch = max(d for d in range(1, batch + 1) if n % d == 0)
    reader = _StackedReader(data, batch)
    quantize_static(
        str(pre),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        nodes_to_exclude=list(exclude),
        extra_options={"CalibStridedMinMax": calibration_stride(len(reader), batch)},
        **({"calibration_cache_path": str(cache)} if cache is not None else {}),
    )
    q = onnx.load(str(out))
    changed = _drop_output_qdq(q)
    changed += _keep_float(q, set(exclude))
    if changed:
        save_model(q, out)


def _keep_float(model: onnx.ModelProto, names: set[str]) -> int:
    """Make excluded Conv/Gemm nodes stay float in onnxruntime. Since 1.21 its WeightBiasQuantization transformer
    (run at session start, natively and in ORT-web) quantizes the float weights of every Conv/ConvTranspose/Gemm
    whose input comes from a per-tensor DequantizeLinear, per tensor: an excluded node next to quantized ones comes
    back int8, with a coarser weight scale than the quantizer would have used. Feeding it through its own
    DequantizeLinear with a per-channel scale (the same value on every channel: the same numbers) leaves it out of
    that rule. Returns how many nodes were rewired."""
    from onnx import numpy_helper

    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    done = 0
    for node in list(g.node):
        if node.name not in names or node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        if scale.ndim:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w_shape = list(inits[node.input[1]].dims)
        if node.op_type == "Gemm":
            if attrs.get("transA", 0):
                continue
            channels = w_shape[1] if attrs.get("transB", 0) else w_shape[0]
        elif node.op_type == "Conv":
            channels = w_shape[1] * attrs.get("group", 1)
        else:
            channels = w_shape[0]
        new_inputs = [dq.input[0]]
        for k, arr in ((1, scale), (2, numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 else None)):
            if arr is None:
                continue
            t = numpy_helper.from_array(np.full(channels, arr, arr.dtype), f"{node.name}_float_in_{k}")
            g.initializer.append(t)
            new_inputs.append(t.name)
        out = f"{node.name}_float_input"
        per_channel = onnx.helper.make_node("DequantizeLinear", new_inputs, [out], name=f"{node.name}_float_dq", axis=1)
        g.node.insert(list(g.node).index(node), per_channel)
        node.input[0] = out
        done += 1
    return done


def _set_metadata(model: onnx.ModelProto, key: str, value: dict) -> None:
    for p in list(model.metadata_props):
        if p.key == key:
            model.metadata_props.remove(p)
    model.metadata_props.add(key=key, value=json.dumps(value, sort_keys=True))


def quantization_record(path: Path) -> dict | None:
    """What a quantized variant says of itself (which nodes were kept float and why), from its metadata."""
    m = onnx.load(str(path), load_external_data=False)
    return next((json.loads(p.value) for p in m.metadata_props if p.key == QUANT_RECORD_KEY), None)


# The sensitivity pass: which nodes to keep in float, measured on calibration samples only (never the evaluation
# data). Candidates are the nodes with weights (Conv, Gemm, MatMul); MobileNetV2 has 53.
SENSITIVITY_SAMPLES = 32     # calibration samples the error is measured on (evenly spread over the set)
SENSITIVITY_MAX_FLOAT = 8    # at most this many nodes kept float: past that it is no longer an int8 model
SENSITIVITY_MIN_GAIN = 0.02  # a node is kept float only if it lowers the error by at least 2 % (relative)


def _output_error(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Mean over outputs of the relative squared error ||got - ref||^2 / ||ref||^2: any output kind."""
    errs = [float(((g.astype(np.float64) - r) ** 2).sum() / max(float((r.astype(np.float64) ** 2).sum()), 1e-30))
            for r, g in zip(ref, got)]
    return float(np.mean(errs))


@conversion_step("int8_qdq_sensitive")
def int8_qdq_sensitive(src: Path, dst: Path, calibration: dict[str, np.ndarray] | None, *, batch: int = 1,
                       calibrate: str = "percentile", samples: int = SENSITIVITY_SAMPLES,
                       max_float: int = SENSITIVITY_MAX_FLOAT, min_gain: float = SENSITIVITY_MIN_GAIN) -> dict:
    """Static int8 QDQ (:func:`int8_qdq`) with the layers where int8 hurts most kept in float, chosen by measurement
    on the calibration set: calibrate once; quantize everything and measure the output error against the float
    model on ``samples`` calibration samples; then, for each candidate node alone, the error with that node kept
    float; then greedily keep float the candidates in order of that error while each lowers the error by at least
    ``min_gain`` (relative), at most ``max_float`` of them. Deterministic (fixed samples, one thread). Returns
    the record also stored in the model's metadata (``pipeline.quantization``): every node kept float, why, and
    the errors measured."""
    model = load_model(src, "int8_qdq_sensitive")
    data = _validate_calibration(model, calibration, batch, src)
    n = len(next(iter(data.values())))
    pick = np.unique(np.linspace(0, n - 1, min(samples, n)).round().astype(int))
    probe = {k: v[pick] for k, v in data.items()}
    probe_batch = batch if any(d.HasField("dim_value") for i in graph_inputs(model)
                               for d in i.type.tensor_type.shape.dim[:1]) else len(pick)
    with scratch_dir(Path(dst)) as work:
        pre, per_channel = _quant_input(Path(src), work)
        cache = work / "calibration.json"

        def outputs(path: Path) -> list[np.ndarray]:
            sess = ort_session(path, 1)
            chunks = [sess.run(None, {k: v[i:i + probe_batch] for k, v in probe.items()})
                      for i in range(0, len(pick), probe_batch)]
            return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]

        ref = outputs(pre)
        trial = work / "trial.onnx"

        def error(exclude: list[str]) -> float:
            _quantize_qdq(pre, trial, data, batch, per_channel, exclude, calibrate, cache)
            return _output_error(ref, outputs(trial))

        pre_model = onnx.load(str(pre), load_external_data=False)
        inits = {i.name for i in pre_model.graph.initializer}
        candidates = [nd for nd in pre_model.graph.node if nd.op_type in ("Conv", "Gemm", "MatMul")
                      and any(i in inits for i in nd.input[1:2])]
        ops = {nd.name: nd.op_type for nd in candidates}
        full = error([])
        alone = {nd.name: error([nd.name]) for nd in candidates}
        kept, current, steps = [], full, []
        for name in sorted(alone, key=lambda c: (alone[c], c)):
            if len(kept) >= max_float or alone[name] >= full:
                break
            e = error(kept + [name])
            if e <= current * (1 - min_gain):
                steps.append({"node": name, "op": ops[name], "error_alone": alone[name], "error_before": current,
                              "error_after": e,
                              "why": f"kept float: output error on {len(pick)} calibration samples "
                                     f"{current:.4g} -> {e:.4g} ({100 * (1 - e / current):.1f} % lower)"})
                kept.append(name)
                current = e
        record = {"calibration": {"method": calibrate, "samples": n, "sensitivity_samples": len(pick),
                                  "per_channel_weights": per_channel, "activations": "uint8", "weights": "int8"},
                  "error_metric": "mean over outputs of ||int8 - float||^2 / ||float||^2 on calibration samples",
                  "error_all_int8": full, "error": current, "candidates": len(candidates),
                  "float_nodes": steps,
                  "rule": {"max_float": max_float, "min_gain": min_gain}}
        with model_output(Path(dst)) as staged:
            _quantize_qdq(pre, staged, data, batch, per_channel, kept, calibrate, cache)
            q = onnx.load(str(staged))
            _set_metadata(q, QUANT_RECORD_KEY, record)
            save_model(q, staged)
            onnx.checker.check_model(str(staged))
            _ort_loads(staged, "int8_qdq_sensitive")
    return record


def _at_least_opset13(path: Path, work: Path) -> tuple[Path, bool]:
    """(model path, per-channel possible): the model itself when its opset is >= 13, else a converted copy."""
    model = onnx.load(str(path))
    opset = opset_of(model)
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


def _weight_only_candidates(model: onnx.ModelProto) -> tuple[int, int, int]:
    """(MatMul nodes with a constant 2-D weight as input B, Gather nodes reading a constant 2-D table (token
    embeddings), Gemm nodes) in the main graph."""
    inits = {i.name: i for i in model.graph.initializer}

    def const_2d(name: str) -> bool:
        return name in inits and len(inits[name].dims) == 2

    std = [n for n in model.graph.node if n.domain in ("", "ai.onnx")]
    n_mm = sum(1 for n in std if n.op_type == "MatMul" and len(n.input) == 2 and const_2d(n.input[1]))
    n_gather = sum(1 for n in std if n.op_type == "Gather" and const_2d(n.input[0]))
    return n_mm, n_gather, sum(1 for n in std if n.op_type == "Gemm")


def _import_matmul_nbits():
    """onnxruntime's matmul_nbits_quantizer calls logging.basicConfig() at import, which adds a root handler and
    makes every Luigi log line print twice: import it with the root logger's handlers and level restored."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    return matmul_nbits_quantizer


@conversion_step("weight_only")
def weight_only(src: Path, dst: Path, *, bits: int, block_size: int = 32, is_symmetric: bool = True,
                fp16: bool = False) -> None:
    """Block-wise weight-only quantization, onnxruntime's MatMulNBitsQuantizer: each MatMul with a constant 2-D
    weight -> com.microsoft MatMulNBits (`bits` 4 or 8); with 4 bits, constant embedding tables read by Gather
    -> GatherBlockQuantized as well (the quantizer has no 8-bit Gather: those tables stay float). Activations
    stay float, so attention (MatMul of two activations) is never quantized. With `fp16`, the quantized model is
    then converted to float16 compute (quantizing first: the quantizer skips float16 weights).

    MatMulNBitsQuantizer handles MatMul and Gather only: a model whose matrix products are all Gemm/Conv raises
    :class:`NotApplicable`.
    """
    mnb = _import_matmul_nbits()
    step = f"weight_only int{bits}{' fp16' if fp16 else ''}"
    if bits not in (4, 8):
        raise ConversionError(f"{step}: bits must be 4 or 8, got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ConversionError(f"{step}: block_size must be a power of two >= 16, got {block_size}")
    model = load_model(src, step)
    _ort_loads(Path(src), f"{step} (source model)")
    n_mm, n_gather, n_gemm = _weight_only_candidates(model)
    if n_mm == 0:
        why = (f"; it has {n_gemm} Gemm node(s), which MatMulNBitsQuantizer does not handle" if n_gemm else "")
        raise NotApplicable(f"{step}: {src} has no MatMul with a constant 2-D weight{why}")

    def quantize(m: onnx.ModelProto, ops: tuple[str, ...], b: int) -> onnx.ModelProto:
        q = mnb.MatMulNBitsQuantizer(m, bits=b, block_size=block_size, is_symmetric=is_symmetric,
                                     quant_format=mnb.QuantFormat.QOperator, op_types_to_quantize=ops,
                                     quant_axes=(("MatMul", 0), ("Gather", 1)))
        q.process()
        return q.model.model

    out = quantize(model, ("MatMul", "Gather") if bits == 4 and n_gather else ("MatMul",), bits)
    if not any(n.op_type == "MatMulNBits" for n in out.graph.node):
        raise NotApplicable(f"{step}: quantizer replaced no MatMul of {src}")
    if not fp16:
        with model_output(Path(dst)) as staged:
            _finish(out, staged, step)
        return
    with scratch_dir(Path(dst)) as work:
        save_model(out, work / "quantized.onnx")
        to_fp16(work / "quantized.onnx", dst)


@conversion_step("copy")
def copy_model(src: Path, dst: Path) -> None:
    model = load_model(src, "fp32")
    with model_output(Path(dst)) as staged:
        if uses_external_data(Path(src)):
            save_model(model, staged)  # re-save: external data must follow the new file name
        else:
            shutil.copyfile(src, staged)
        _ort_loads(staged, "fp32")


def via_simplified(step: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    """Run ``step`` on a simplified copy of src (falls back to src itself if onnxsim fails)."""

    def run(src: Path, dst: Path) -> None:
        with scratch_dir(Path(dst)) as work:
            simp = work / "simplified.onnx"
            try:
                simplify(src, simp)
                base = simp
            except ConversionError as e:
                log.warning("%s: simplify failed (%s); starting from the canonical model", Path(dst).name, e)
                base = Path(src)
            step(base, dst)

    return run


# ------------------------------------------------------------------------------------------------------------------
# offline graph optimization: what ORT-web would do at every session start, done once here
# ------------------------------------------------------------------------------------------------------------------

# A variant may ship session options beside its model: browser_validate/runtimes/ort.js reads a file of this name
# among the model files (the measuring page and the web app's loader both hand it every file).
SESSION_OPTIONS_FILE = "ort-session-options.json"
# ORT_ENABLE_ALL with the optimizers that write layouts only some CPU builds have left out. On this machine's x86
# build NchwcTransformer rewrites every Conv into com.microsoft.nchwc nodes (NCHWc blocks sized for AVX/AVX-512);
# the wasm build has no NCHWc kernels (Chromium: "com.microsoft.nchwc:Conv(-1) is not a registered function/op"),
# so ORT_ENABLE_LAYOUT / ORT_ENABLE_ALL as such are not portable. Everything else at those levels is (the fusions
# for the CPU EP, FusedConv with a residual Add at level 3, the channels-last rewrite of quantized convolutions):
# the wasm EP is ORT's CPU EP compiled to WebAssembly, with the same kernel registry minus NCHWc.
OFFLINE_DISABLED_OPTIMIZERS: tuple[str, ...] = ("NchwcTransformer",)
NOT_PORTABLE_DOMAINS = ("com.microsoft.nchwc",)
# What the browser session then does itself: nothing (its optimizations ran here).
OPTIMIZED_SESSION_OPTIONS = {"graphOptimizationLevel": "disabled"}


@conversion_step("ort_optimize")
def ort_optimize(src: Path, dst: Path, *, fmt: str = "onnx") -> None:
    """onnxruntime's graph optimizations (ORT_ENABLE_ALL less :data:`OFFLINE_DISABLED_OPTIMIZERS`, CPU EP) run
    once, the optimized graph saved as ``fmt`` ``"onnx"`` or ``"ort"`` (ORT's flatbuffer format: no protobuf
    parse, initializers used in place). A browser session loading it should skip its own optimizations
    (:data:`OPTIMIZED_SESSION_OPTIONS`). The result is checked: no node of a domain the wasm build lacks, and
    run with optimizations off it gives the source model's outputs on a test input."""
    import onnxruntime as ort

    if fmt not in ("onnx", "ort"):
        raise ConversionError(f"ort_optimize: fmt must be 'onnx' or 'ort', got {fmt!r}")
    step = f"ort_optimize ({fmt})"
    model = load_model(src, step, load_external_data=False)
    _ort_loads(Path(src), f"{step} (source model)")
    external = uses_external_data(Path(src))
    if external and fmt == "ort":
        raise NotApplicable(f"{step}: {src} keeps its weights in external data; the ORT format holds one file < 2 GB")
    with model_output(Path(dst)) as staged:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.optimized_model_filepath = str(staged)
        if fmt == "ort":
            so.add_session_config_entry("session.save_model_format", "ORT")
        elif external:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                        Path(dst).name + ".data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(OFFLINE_DISABLED_OPTIMIZERS))
        if fmt == "onnx":
            bad = sorted(n for n in graph_ops(staged) if n.rsplit(".", 1)[0] in NOT_PORTABLE_DOMAINS)
            if bad:
                raise ConversionError(f"{step}: optimized graph holds nodes the wasm build lacks: {bad}")
        _same_outputs(Path(src), staged, step, model)


def _same_outputs(src: Path, optimized: Path, step: str, model: onnx.ModelProto, rtol: float = 1e-3) -> None:
    """The optimized file, run with ORT's optimizations off (as the browser will), against the source on one
    random input (dynamic dims set to 1). Skipped when the source itself cannot run on that input."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feeds = {}
    for i in graph_inputs(model):
        shape = _test_input_shapes(model)[i.name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        feeds[i.name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                         else np.ones(shape, dtype=dtype))
    try:
        want = ort_session(src).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - e.g. a spatial dim of 1 is too small for the model's pooling
        log.info("%s: numerical check skipped (the source does not run on the test input: %s)", step, e)
        return
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        got = ort.InferenceSession(str(optimized), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{step}: the optimized model does not run with optimizations off: {e}") from e
    for w, g in zip(want, got):
        w, g = np.asarray(w), np.asarray(g)
        if w.shape != g.shape or not np.allclose(g, w, rtol=rtol, atol=rtol * max(1.0, float(np.abs(w).max()))):
            raise ConversionError(f"{step}: optimized outputs differ from the source's "
                                  f"(max abs diff {float(np.abs(g - w).max()) if w.shape == g.shape else 'shape'})")


def write_session_options(out_dir: Path, options: dict) -> Path:
    """The session options a variant ships (:data:`SESSION_OPTIONS_FILE`), written atomically."""
    dst = Path(out_dir) / SESSION_OPTIONS_FILE
    with atomic_file(dst) as staged:
        staged.write_text(json.dumps(options, sort_keys=True) + "\n")
    return dst
