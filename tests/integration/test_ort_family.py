"""The ONNX Runtime Web family: each variant built from a tiny exported model and checked against PyTorch in
onnxruntime; clear errors and nothing half-written when a step fails."""

from __future__ import annotations

from pathlib import Path

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
    "fp16": (1e-2, 0.9),
    "int8_dynamic": (0.2, 0.75),
    "int8_qdq": (0.2, 0.75),
    "int4": (0.2, 0.75),
    "int4_fp16": (0.2, 0.75),
    "int8_weights": (0.05, 0.9),
    "int8_weights_fp16": (0.05, 0.9),
}
WEIGHT_ONLY = {"int4", "int4_fp16", "int8_weights", "int8_weights_fp16"}


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
    [dst] = v.build(inputs, out)
    assert dst == out / "model.onnx"
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
    assert set(specs) == {"fp32", "simplified", "fp16", "int8_dynamic", "int8_qdq"} | WEIGHT_ONLY
    for name, v in specs.items():
        assert v.family == "ort" and v.runtime == "ort" and v.targets == ("wasm", "webgpu") and v.description
    assert [n for n, v in specs.items() if v.required_features] == ["fp16", "int4_fp16", "int8_weights_fp16"]
    assert all(v.required_features == {"webgpu": ("shader-f16",)} for v in specs.values() if v.required_features)
    assert [n for n, v in specs.items() if v.needs_calibration] == ["int8_qdq"]


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
