"""The ONNX Runtime Web family: each variant built from a tiny exported model and checked against PyTorch in
onnxruntime; clear errors and nothing half-written when a step fails."""

from __future__ import annotations

from pathlib import Path

import json

import numpy as np
import onnx
import pytest

from pipeline.families import BuildInputs, variant
from pipeline.families.ort import VARIANTS, convert as conv
from pipeline.fsutil import sha256_file
from pipeline.onnx_utils import graph_ops
from pipeline.outcome import ConversionError, NotApplicable
from pipeline.sources.onnx import check_and_infer
from models import logits as _run, no_temp_files as _no_temp_files, onnx_broken

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.toolchain


# ----------------------------------------------------------------------------------------------------------------
# variants
# ----------------------------------------------------------------------------------------------------------------

# (max abs error relative to the output range, minimum argmax agreement)
TOLERANCE = {
    "fp32": (1e-5, 1.0),
    "simplified": (1e-5, 1.0),
    "ort_optimized": (1e-4, 1.0),
    "ort_format": (1e-4, 1.0),
    "fp16": (1e-2, 0.9),
    "int8_dynamic": (0.2, 0.75),
    "int8_qdq": (0.2, 0.75),
    "int8_qdq_mixed": (0.2, 0.75),
    "int4": (0.2, 0.75),
    "int4_fp16": (0.2, 0.75),
    "int8_weights": (0.05, 0.9),
    "int8_weights_fp16": (0.05, 0.9),
}
WEIGHT_ONLY = {"int4", "int4_fp16", "int8_weights", "int8_weights_fp16"}
OPTIMIZED = {"ort_optimized": "model.onnx", "ort_format": "model.ort"}  # variant -> its model file


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_variant_matches_pytorch(exported, work, kind, name):
    """Each registered variant, built the way the pipeline builds it (VariantSpec.build into a folder)."""
    e = exported[kind]
    v = variant(name)
    inputs = BuildInputs(canonical_onnx=e["path"], calibration={"input": e["calib"]} if v.needs_calibration
                         else None, calibration_batch=4)
    out = work / kind / name
    out.mkdir()
    if name in WEIGHT_ONLY and kind == "cnn":
        with pytest.raises(NotApplicable, match="Gemm"):
            v.build(inputs, out)
        assert list(out.iterdir()) == []
        return
    files = v.build(inputs, out)
    dst = files[0]
    if name in OPTIMIZED:  # the optimized graph and the session options the browser must load it with
        assert [f.name for f in files] == [OPTIMIZED[name], conv.SESSION_OPTIONS_FILE]
        assert json.loads(files[1].read_text()) == {"graphOptimizationLevel": "disabled"}
    else:
        assert files == [out / "model.onnx"]
    got = _run(dst, e["x"])
    ref = e["ref"]
    assert got.dtype == np.float32 and got.shape == ref.shape
    rel, agree = TOLERANCE[name]
    scale = float(np.abs(ref).max())
    err = float(np.abs(got - ref).max())
    assert err <= rel * max(scale, 1.0), f"{name}/{kind}: max abs err {err:.3g} (output scale {scale:.3g})"
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= agree
    _no_temp_files(dst.parent)


def test_variant_table_shape():
    specs = {v.name: variant(v.name) for v in VARIANTS}
    assert set(specs) == {"fp32", "simplified", "fp16", "int8_dynamic", "int8_qdq", "int8_qdq_mixed"} | WEIGHT_ONLY \
        | set(OPTIMIZED)
    for name, v in specs.items():
        assert v.family == "ort" and v.runtime == "ort" and v.description
        # Optimized for the CPU EP, which is what ORT-web's wasm EP is.
        assert v.targets == (("wasm",) if name in OPTIMIZED else ("wasm", "webgpu")), name
    assert [n for n, v in specs.items() if v.required_features] == ["fp16", "int4_fp16", "int8_weights_fp16"]
    assert all(v.required_features == {"webgpu": ("shader-f16",)} for v in specs.values() if v.required_features)
    assert [n for n, v in specs.items() if v.needs_calibration] == ["int8_qdq", "int8_qdq_mixed"]


def test_fp16_keeps_float32_io(exported, work):
    dst = work / "mlp" / "fp16_io.onnx"
    conv.to_fp16(exported["mlp"]["path"], dst)
    m = onnx.load(str(dst))
    f32 = onnx.TensorProto.FLOAT
    assert m.graph.input[0].type.tensor_type.elem_type == f32
    assert m.graph.output[0].type.tensor_type.elem_type == f32
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    assert "Cast" in graph_ops(dst)


def test_ops_per_variant(exported, work):
    mlp = exported["mlp"]["path"]
    conv.weight_only(mlp, work / "mlp" / "i4.onnx", bits=4, block_size=32)
    ops = graph_ops(work / "mlp" / "i4.onnx")
    assert "com.microsoft.MatMulNBits" in ops and "MatMul" not in ops
    conv.int8_dynamic(mlp, work / "mlp" / "dyn.onnx")
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= graph_ops(work / "mlp" / "dyn.onnx")
    cnn = exported["cnn"]["path"]
    conv.int8_dynamic(cnn, work / "cnn" / "dyn.onnx")
    assert "ConvInteger" in graph_ops(work / "cnn" / "dyn.onnx")
    conv.int8_qdq(cnn, work / "cnn" / "qdq.onnx", {"input": exported["cnn"]["calib"]}, batch=1)
    assert {"QuantizeLinear", "DequantizeLinear"} <= graph_ops(work / "cnn" / "qdq.onnx")
    conv.simplify(cnn, work / "cnn" / "s.onnx")
    assert "BatchNormalization" not in graph_ops(work / "cnn" / "s.onnx")


def test_offline_optimization_is_portable_to_wasm(exported, work):
    """ORT_ENABLE_ALL as such writes NCHWc nodes on this x86 machine, which the wasm build lacks; the variant's graph
    has none, keeps the fusions (FusedConv), and runs with optimizations off like its source."""
    import onnxruntime as ort

    src = exported["cnn"]["path"]
    raw = work / "cnn" / "raw_all.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(raw)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    raw_ops = graph_ops(raw)
    dst = work / "cnn" / "portable.onnx"
    conv.ort_optimize(src, dst)
    ops = graph_ops(dst)
    assert not any(o.startswith("com.microsoft.nchwc.") for o in ops), ops
    assert "com.microsoft.FusedConv" in ops and "BatchNormalization" not in ops, ops
    if any(o.startswith("com.microsoft.nchwc.") for o in raw_ops):  # x86/ARM builds with NCHWc blocks
        assert conv.OFFLINE_DISABLED_OPTIMIZERS == ("NchwcTransformer",)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"]).run(None, {"input": exported["cnn"]["x"]})[0]
    np.testing.assert_allclose(got, exported["cnn"]["ref"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ConversionError, match="fmt"):
        conv.ort_optimize(src, work / "cnn" / "x.bin", fmt="bin")


@pytest.mark.browser
def test_optimized_variants_run_in_chromium_with_their_options(exported, work):
    """Each optimized variant, as built, in ORT-web's wasm bundle with the options file it ships; the adapter reads
    that file (a level ORT-web does not know fails the session, an unknown option is refused) and never hands
    it to ORT as external data."""
    from browser_validate.harness import MeasureRequest, close_browser, measure

    e = exported["cnn"]
    samples = {"input": e["x"][:8]}

    def run(files):
        return measure(MeasureRequest(runtime="ort", target="wasm", model_files=list(files), inputs=samples,
                                      eval_batch=4, warmup=0, runs=2, timeout_s=120))

    try:
        for name in OPTIMIZED:
            out = work / "cnn" / f"browser_{name}"
            out.mkdir()
            files = variant(name).build(BuildInputs(canonical_onnx=e["path"]), out)
            res = run(files)
            assert res.status == "ok", (name, res.error, res.console_errors)
            np.testing.assert_allclose(res.outputs["logits"], e["ref"][:8], rtol=1e-4, atol=1e-4)
        for options, error in (({"graphOptimizationLevel": "nonsense"}, "nonsense"),
                               ({"enableProfiling": True}, "unknown session option")):
            bad = work / "cnn" / f"bad_{error.split()[0]}"
            bad.mkdir()
            opts = conv.write_session_options(bad, options)
            res = run([files[0], opts])
            assert res.status == "failed" and error in res.error, res.error
    finally:
        close_browser()


# ----------------------------------------------------------------------------------------------------------------
# int8 with layers kept in float
# ----------------------------------------------------------------------------------------------------------------


def _two_convs(path: Path) -> Path:
    """input -> conv_a -> Relu -> conv_b -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits (conv_b is fed by
    a quantized tensor once conv_a is quantized: the case onnxruntime re-quantizes)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [helper.make_node("Conv", ["input", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             helper.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
             helper.make_node("GlobalAveragePool", ["rb"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wc", "bc"], ["logits"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "two_convs", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 4])],
                          [init("wa", 8, 3, 3, 3), init("ba", 8), init("wb", 8, 8, 3, 3), init("bb", 8),
                           init("wc", 4, 8), init("bc", 4)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _session_ops(path: Path, work: Path) -> list[str]:
    """The op of every node once onnxruntime has optimized the graph for its CPU EP (as a session does)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(work / f"{path.stem}.session.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(conv.OFFLINE_DISABLED_OPTIMIZERS))
    m = onnx.load(so.optimized_model_filepath)
    return sorted(n.op_type for n in m.graph.node if "Conv" in n.op_type)


def test_excluded_node_stays_float(tmp_path):
    """A node kept in float is still float after onnxruntime optimized the session (which otherwise quantizes the
    weights of a float Conv fed by a DequantizeLinear), and the record says which and why."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src = _two_convs(tmp_path / "two.onnx")
    calib = {"input": np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)}
    plain = tmp_path / "plain.onnx"  # onnxruntime's own exclusion: conv_b comes back int8 in the session
    quantize_static(str(src), str(plain), conv._StackedReader(calib, 4), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=["conv_b"])
    assert _session_ops(plain, tmp_path) == ["QLinearConv", "QLinearConv"]

    record = {"float_nodes": [{"node": "conv_b", "why": "test"}]}
    dst = tmp_path / "q.onnx"
    conv.int8_qdq(src, dst, calib, batch=4, exclude=["conv_b"], record=record)
    m = onnx.load(str(dst))
    b = next(n for n in m.graph.node if n.name == "conv_b")
    assert next(n for n in m.graph.node if b.input[0] in n.output).op_type == "DequantizeLinear"
    assert conv.quantization_record(dst) == record
    assert sorted(_session_ops(dst, tmp_path)) in (["Conv", "QLinearConv"], ["FusedConv", "QLinearConv"])
    with pytest.raises(ConversionError, match="no_such_node"):
        conv.int8_qdq(src, tmp_path / "x.onnx", calib, batch=4, exclude=["no_such_node"])


def test_sensitivity_pass_is_measured_on_calibration_and_deterministic(tmp_path):
    src = _two_convs(tmp_path / "two.onnx")
    # 22 samples in batches of 4: onnxruntime's Percentile calibration breaks on a smaller last batch (fed 2 x 11)
    calib = {"input": np.random.default_rng(2).standard_normal((22, 3, 8, 8)).astype(np.float32)}
    rec = [conv.int8_qdq_sensitive(src, tmp_path / f"s{i}.onnx", calib, batch=4, samples=8, min_gain=0.0)
           for i in range(2)]
    assert rec[0] == rec[1] == conv.quantization_record(tmp_path / "s0.onnx")
    r = rec[0]
    assert r["candidates"] == 3 and r["calibration"]["sensitivity_samples"] == 8
    assert r["error"] <= r["error_all_int8"]
    kept = [f["node"] for f in r["float_nodes"]]
    assert kept and len(kept) <= conv.SENSITIVITY_MAX_FLOAT
    for f in r["float_nodes"]:
        assert f["error_after"] < f["error_before"] and "kept float" in f["why"]
    m = onnx.load(str(tmp_path / "s0.onnx"))
    for name in kept:  # its weight is a float initializer, not a DequantizeLinear output
        node = next(n for n in m.graph.node if n.name == name)
        assert node.input[1] in {i.name for i in m.graph.initializer}


def test_calibration_collects_in_strides_with_the_same_ranges(tmp_path):
    """onnxruntime's calibrators hold every intermediate tensor of every batch one collect_data call sees (the
    8-recipe build was OOM-killed at 22 GB on text_recognition's Percentile calibration): ranges are collected a few
    samples at a time, and MinMax ranges come out identical to one pass over everything."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    assert conv.calibration_stride(44, 1) == 4 and conv.calibration_stride(11, 2) == 1 and conv.calibration_stride(42, 1) == 3
    assert conv.calibration_stride(6, 2) == 2 and conv.calibration_stride(7, 16) == 1
    reader = conv._StackedReader({"x": np.arange(10)[:, None]}, 3)
    reader.set_range(1, 3)
    assert [b["x"][:, 0].tolist() for b in iter(reader.get_next, None)] == [[3, 4, 5], [6, 7, 8]]
    reader.set_range(3, 4)
    assert [b["x"][:, 0].tolist() for b in iter(reader.get_next, None)] == [[9]]

    src = _two_convs(tmp_path / "two.onnx")
    calib = {"input": np.random.default_rng(3).standard_normal((24, 3, 8, 8)).astype(np.float32)}
    ranges = {}
    for stride in (None, 2):
        cache = tmp_path / f"cache-{stride}.json"
        quantize_static(str(src), str(tmp_path / f"q-{stride}.onnx"), conv._StackedReader(calib, 4),
                        quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibStridedMinMax": stride} if stride else {},
                        calibration_cache_path=str(cache))
        data = load_tensors_data(cache)
        ranges[stride] = {k: [np.asarray(r).tolist() for r in v.range_value] for k, v in data.data.items()}
    assert ranges[None] == ranges[2]
    conv.int8_qdq(src, tmp_path / "p.onnx", calib, batch=4, calibrate="percentile")  # strided Percentile runs


def test_mixed_int8_needs_the_recipes_own_calibration(exported, tmp_path):
    """Choosing float layers on the evaluation samples would tune the variant to the data its budget is judged on."""
    from types import SimpleNamespace

    recipe = SimpleNamespace(name="r", path="recipes/r.yaml", data=SimpleNamespace(calibration=None))
    e = exported["cnn"]
    with pytest.raises(NotApplicable, match=r"recipes/r.yaml: int8_qdq_mixed .* give data.calibration"):
        variant("int8_qdq_mixed").build(BuildInputs(canonical_onnx=e["path"], calibration={"input": e["calib"]},
                                                    calibration_batch=4, recipe=recipe), tmp_path)
    assert not list(tmp_path.iterdir())


def test_imagenet_calibration_never_holds_an_evaluation_photo():
    from model_sources import datasets as ds

    cal = ds.imagenet_calibration(views=3, limit=9)
    assert cal.inputs["input"].shape == (9, 3, 224, 224) and cal.labels is None
    assert not {i.split(".")[0] for i in cal.ids} & {p.split(".")[0] for p in ds.IMAGENET_PHOTOS}
    np.testing.assert_array_equal(cal.inputs["input"], ds.imagenet_calibration(views=3, limit=9).inputs["input"])
    assert not np.array_equal(cal.inputs["input"], ds.imagenet_calibration(views=3, limit=9, seed=1).inputs["input"])
    with pytest.raises(ValueError, match="evaluation photos"):
        ds.imagenet_calibration(images=("chelsea.png",))


def test_int4_not_applicable_without_matmul(exported, tmp_path):
    with pytest.raises(NotApplicable, match="Gemm"):
        conv.weight_only(exported["cnn"]["path"], tmp_path / "x.onnx", bits=4)
    assert list(tmp_path.iterdir()) == []


def test_int8_qdq_needs_matching_calibration(exported, tmp_path):
    src = exported["cnn"]["path"]
    with pytest.raises(ConversionError, match="calibration"):
        conv.int8_qdq(src, tmp_path / "q.onnx", None)
    with pytest.raises(ConversionError, match="calibration"):
        conv.int8_qdq(src, tmp_path / "q.onnx", {"wrong": exported["cnn"]["calib"]})
    assert list(tmp_path.iterdir()) == []


def test_int8_qdq_on_an_old_opset_model(tmp_path):
    """Opset-11 files (e.g. Paddle exports) have no per-channel DequantizeLinear: converted up first."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))
    x = torch.randn(16, 3, 8, 8)
    old = tmp_path / "old.onnx"
    torch.onnx.export(model.eval(), (x[:1],), str(old), input_names=["input"], output_names=["logits"],
                      opset_version=11, dynamo=False, dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    assert onnx.load(str(old)).opset_import[0].version == 11
    conv.int8_qdq(old, tmp_path / "q.onnx", {"input": x.numpy()}, batch=4)
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)
    with torch.no_grad():
        ref = model(x).numpy()
    assert (_run(tmp_path / "q.onnx", x.numpy()).argmax(1) == ref.argmax(1)).mean() >= 0.75


# ----------------------------------------------------------------------------------------------------------------
# failures: clear errors, nothing half-written
# ----------------------------------------------------------------------------------------------------------------


def test_corrupt_file_names_the_file(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07\xff\xfe this is not a protobuf \x00\x01" * 10)
    dst = tmp_path / "out" / "m.onnx"
    with pytest.raises(ConversionError, match="corrupt.onnx"):
        check_and_infer(bad, dst)
    assert not dst.exists()


def test_truncated_file_names_the_file(exported, tmp_path):
    data = exported["mlp"]["path"].read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    dst = tmp_path / "out" / "m.onnx"
    with pytest.raises(ConversionError, match="truncated.onnx"):
        check_and_infer(bad, dst)
    assert not dst.exists()
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ConversionError, match="empty.onnx"):
        conv.simplify(empty, dst)
    with pytest.raises(ConversionError, match="missing.onnx"):
        conv.to_fp16(tmp_path / "missing.onnx", dst)


def test_check_and_infer_roundtrip(exported, tmp_path):
    dst = tmp_path / "checked.onnx"
    check_and_infer(exported["cnn"]["path"], dst)
    np.testing.assert_allclose(_run(dst, exported["cnn"]["x"]), exported["cnn"]["ref"], rtol=1e-5, atol=1e-5)
    assert sha256_file(dst) == sha256_file(dst) and len(sha256_file(dst)) == 64


@pytest.mark.parametrize("step", ["simplify", "to_fp16", "check_and_infer", "int8_dynamic", "weight_only"])
def test_failure_leaves_no_file_and_no_temp(tmp_path, step):
    src = tmp_path / "src" / "broken.onnx"
    src.parent.mkdir()
    onnx_broken(src)
    out = tmp_path / "out"
    dst = out / "result.onnx"
    with pytest.raises(ConversionError) as ei:
        extra = {"bits": 4} if step == "weight_only" else {}
        (check_and_infer if step == "check_and_infer" else getattr(conv, step))(src, dst, **extra)
    assert step in str(ei.value)
    assert type(ei.value) is ConversionError, "a broken model is an error, not 'not applicable'"
    assert not dst.exists()
    assert not out.exists() or list(out.iterdir()) == []
    assert not (Path.cwd() / "sym_shape_infer_temp.onnx").exists()


def test_failure_keeps_previous_dst(exported, tmp_path):
    dst = tmp_path / "m.onnx"
    conv.simplify(exported["cnn"]["path"], dst)
    before = sha256_file(dst)
    src = tmp_path / "broken.onnx"
    onnx_broken(src)
    with pytest.raises(ConversionError):
        conv.simplify(src, dst)
    assert sha256_file(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx", "m.onnx"]
