"""Sources: PyTorch export (dynamo and TorchScript, dynamic batch, verified against PyTorch) and the ONNX-file
check, on tiny models."""

from __future__ import annotations


import numpy as np
import onnx
import pytest

from pipeline.outcome import ConversionError
from pipeline.sources.onnx import check_and_infer
from pipeline.sources.pytorch import export_pytorch
from models import DYN, logits as _run, no_temp_files as _no_temp_files, tiny as _make

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.toolchain

nn = torch.nn


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
    export_pytorch(model, {"input": x}, dst, output_names=["logits"], dynamic_axes=DYN, opset=17,
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
        export_pytorch(Broken(), {"input": np.zeros((1, 3), np.float32)}, dst, output_names=["y"])
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []




def test_check_and_infer_sets_the_recipe_shapes(exported, tmp_path):
    dst = tmp_path / "checked.onnx"
    check_and_infer(exported["cnn"]["path"], dst, input_shapes={"input": ["n", 3, 16, 16]})
    m = onnx.load(str(dst))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "n"
    np.testing.assert_allclose(_run(dst, exported["cnn"]["x"]), exported["cnn"]["ref"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConversionError, match="rank"):
        check_and_infer(exported["cnn"]["path"], tmp_path / "bad.onnx", input_shapes={"input": ["n", 3]})
