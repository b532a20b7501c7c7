"""Tests for pipeline.convert.onnx: export, checks and the browser variants (tiny models, < 60 s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from pipeline.convert import onnx as conv  # noqa: E402
from pipeline.convert.onnx import ConversionError, NotApplicable  # noqa: E402

DYN = {"input": {0: "batch"}, "logits": {0: "batch"}}


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():  # non-trivial BN statistics, so BN folding is actually exercised
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyMLP(nn.Module):
    """Transformer-ish block: 3-D activations [B, T, D], Linear layers export as MatMul (+Add)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(64)
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        h = x + self.down(nn.functional.gelu(self.up(self.norm(x))))
        return self.head(h.mean(dim=1))


def _make(kind: str):
    torch.manual_seed(0)
    if kind == "cnn":
        return TinyCNN().eval(), (3, 16, 16)
    return TinyMLP().eval(), (4, 64)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def exported(work):
    """{kind: (torch model, sample shape, canonical path, eval inputs, torch reference)}"""
    out = {}
    rng = np.random.default_rng(0)
    for kind in ("cnn", "mlp"):
        model, shape = _make(kind)
        dst = work / kind / "canonical.onnx"
        example = {"input": rng.standard_normal((1, *shape)).astype(np.float32)}
        conv.export_pytorch(model, example, dst, output_names=["logits"], dynamic_axes=DYN)
        x = rng.standard_normal((32, *shape)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        calib = rng.standard_normal((32, *shape)).astype(np.float32)
        out[kind] = dict(model=model, shape=shape, path=dst, x=x, ref=ref, calib=calib)
    return out


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _no_temp_files(d: Path) -> None:
    leftovers = [p.name for p in d.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


# ----------------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_export_names_dynamic_batch_single_file(exported, kind):
    e = exported[kind]
    m = onnx.load(str(e["path"]))
    assert [i.name for i in m.graph.input] == ["input"]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert m.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not list(e["path"].parent.glob("*.data")), "model must be one self-contained file"
    assert all(not onnx.external_data_helper.uses_external_data(t) for t in m.graph.initializer)
    # batch 3, not the exported batch 1
    got = _run(e["path"], e["x"][:3])
    np.testing.assert_allclose(got, e["ref"][:3], rtol=1e-5, atol=1e-5)
    _no_temp_files(e["path"].parent)


def test_export_torchscript_exporter_also_works(tmp_path):
    model, shape = _make("cnn")
    x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
    dst = tmp_path / "ts.onnx"
    conv.export_pytorch(model, {"input": x}, dst, output_names=["logits"], dynamic_axes=DYN, opset=17,
                        exporter="torchscript")
    m = onnx.load(str(dst))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    xb = np.repeat(x, 3, axis=0)
    with torch.no_grad():
        ref = model(torch.from_numpy(xb)).numpy()
    np.testing.assert_allclose(_run(dst, xb), ref, rtol=1e-5, atol=1e-5)


def test_export_failure_leaves_nothing(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    dst = tmp_path / "broken.onnx"
    with pytest.raises(ConversionError, match="export_pytorch"):
        conv.export_pytorch(Broken(), {"input": np.zeros((1, 3), np.float32)}, dst, output_names=["y"])
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []


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
}


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
@pytest.mark.parametrize("name", list(conv.VARIANTS))
def test_variant_matches_pytorch(exported, work, kind, name):
    e = exported[kind]
    v = conv.VARIANTS[name]
    ctx = conv.BuildContext(calibration={"input": e["calib"]} if v.needs_calibration else None, calibration_batch=4)
    dst = work / kind / f"{name}.onnx"
    if name == "int4" and kind == "cnn":
        with pytest.raises(NotApplicable, match="Gemm"):
            v.build(e["path"], dst, ctx)
        assert not dst.exists()
        return
    v.build(e["path"], dst, ctx)
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
    assert set(conv.VARIANTS) == {"fp32", "simplified", "fp16", "int8_dynamic", "int8_qdq", "int4"}
    for name, v in conv.VARIANTS.items():
        assert v.name == name and v.backends and v.description
        assert set(v.backends) <= {"wasm", "webgpu"}
    assert conv.VARIANTS["fp16"].required_features == {"webgpu": ("shader-f16",)}
    assert conv.VARIANTS["int8_qdq"].needs_calibration
    assert not any(v.needs_calibration for n, v in conv.VARIANTS.items() if n != "int8_qdq")


def test_fp16_keeps_float32_io(exported, work):
    dst = work / "mlp" / "fp16_io.onnx"
    conv.to_fp16(exported["mlp"]["path"], dst)
    m = onnx.load(str(dst))
    f32 = onnx.TensorProto.FLOAT
    assert m.graph.input[0].type.tensor_type.elem_type == f32
    assert m.graph.output[0].type.tensor_type.elem_type == f32
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    assert "Cast" in conv.graph_ops(dst)


def test_ops_per_variant(exported, work):
    mlp = exported["mlp"]["path"]
    conv.int4_matmul(mlp, work / "mlp" / "i4.onnx", block_size=32)
    ops = conv.graph_ops(work / "mlp" / "i4.onnx")
    assert "com.microsoft.MatMulNBits" in ops and "MatMul" not in ops
    conv.int8_dynamic(mlp, work / "mlp" / "dyn.onnx")
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= conv.graph_ops(work / "mlp" / "dyn.onnx")
    cnn = exported["cnn"]["path"]
    conv.int8_dynamic(cnn, work / "cnn" / "dyn.onnx")
    assert "ConvInteger" in conv.graph_ops(work / "cnn" / "dyn.onnx")
    conv.int8_qdq(cnn, work / "cnn" / "qdq.onnx", {"input": exported["cnn"]["calib"]}, batch=1)
    assert {"QuantizeLinear", "DequantizeLinear"} <= conv.graph_ops(work / "cnn" / "qdq.onnx")
    conv.simplify(cnn, work / "cnn" / "s.onnx")
    assert "BatchNormalization" not in conv.graph_ops(work / "cnn" / "s.onnx")


def test_int4_not_applicable_without_matmul(exported, tmp_path):
    with pytest.raises(NotApplicable, match="Gemm"):
        conv.int4_matmul(exported["cnn"]["path"], tmp_path / "x.onnx")
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
        conv.check_and_infer(bad, dst)
    assert not dst.exists()


def test_truncated_file_names_the_file(exported, tmp_path):
    data = exported["mlp"]["path"].read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    dst = tmp_path / "out" / "m.onnx"
    with pytest.raises(ConversionError, match="truncated.onnx"):
        conv.check_and_infer(bad, dst)
    assert not dst.exists()
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ConversionError, match="empty.onnx"):
        conv.simplify(empty, dst)
    with pytest.raises(ConversionError, match="missing.onnx"):
        conv.to_fp16(tmp_path / "missing.onnx", dst)


def test_check_and_infer_roundtrip(exported, tmp_path):
    dst = tmp_path / "checked.onnx"
    conv.check_and_infer(exported["cnn"]["path"], dst)
    np.testing.assert_allclose(_run(dst, exported["cnn"]["x"]), exported["cnn"]["ref"], rtol=1e-5, atol=1e-5)
    assert conv.file_sha256(dst) == conv.file_sha256(dst) and len(conv.file_sha256(dst)) == 64


def _broken_model(path: Path) -> None:
    """Structurally loadable model whose op does not exist: onnxsim and onnxruntime must refuse it."""
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 4])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 4])
    node = onnx.helper.make_node("NoSuchOp", ["input"], ["logits"])
    g = onnx.helper.make_graph([node], "broken", [x], [y])
    onnx.save(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(path))


@pytest.mark.parametrize("step", ["simplify", "to_fp16", "check_and_infer", "int8_dynamic", "int4_matmul"])
def test_failure_leaves_no_file_and_no_temp(tmp_path, step):
    src = tmp_path / "src" / "broken.onnx"
    src.parent.mkdir()
    _broken_model(src)
    out = tmp_path / "out"
    dst = out / "result.onnx"
    with pytest.raises(ConversionError) as ei:
        getattr(conv, step)(src, dst)
    assert step in str(ei.value)
    assert type(ei.value) is ConversionError, "a broken model is an error, not 'not applicable'"
    assert not dst.exists()
    assert not out.exists() or list(out.iterdir()) == []
    assert not (Path.cwd() / "sym_shape_infer_temp.onnx").exists()


def test_failure_keeps_previous_dst(exported, tmp_path):
    dst = tmp_path / "m.onnx"
    conv.simplify(exported["cnn"]["path"], dst)
    before = conv.file_sha256(dst)
    src = tmp_path / "broken.onnx"
    _broken_model(src)
    with pytest.raises(ConversionError):
        conv.simplify(src, dst)
    assert conv.file_sha256(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx", "m.onnx"]
