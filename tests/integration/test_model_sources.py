"""Tests for model_sources: real weights, real data, deterministic loaders (< 60 s total)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from model_sources import datasets as D
from model_sources import fashion_cnn, mobilenet_v2
from model_sources.packages import PackageNotInstalledError, package_file

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup
TEXT_DIRECTION_MIN_ACC = 0.90  # measured 0.964 (81/84)


# ----------------------------------------------------------------------------------- packages
def test_package_file_finds_files_without_importing_package():
    import sys

    p = package_file("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
    assert p.is_file() and p.is_absolute()
    assert "rapidocr_onnxruntime" not in sys.modules  # its __init__ imports cv2 (not installed)
    assert package_file("skimage", "data/chelsea.png").is_file()


def test_package_file_errors_are_clear():
    with pytest.raises(PackageNotInstalledError, match=r"package 'no_such_pkg_xyz' is not installed \(pip install no-such-pkg-xyz\)"):
        package_file("no_such_pkg_xyz", "a.txt")
    with pytest.raises(FileNotFoundError, match=r"file 'data/nope.png' not found in package 'skimage' \(looked in .*skimage\)"):
        package_file("skimage", "data/nope.png")


# -------------------------------------------------------------------------------- MobileNetV2
@pytest.fixture(scope="module")
def mobilenet():
    return mobilenet_v2.load_pretrained()


def test_mobilenet_state_dict_names_match_weights():
    model = mobilenet_v2.build()
    keys = list(model.state_dict())
    assert len(keys) == 314
    assert keys[0] == "features.0.0.weight" and keys[-1] == "classifier.1.bias"
    state = torch.load(mobilenet_v2.weights_path(), map_location="cpu", weights_only=True)
    assert list(state) == keys
    model.load_state_dict(state, strict=True)


def test_imagenet_photos_shapes_and_determinism():
    es = D.imagenet_photos()
    x = es.inputs["input"]
    assert x.shape == (len(D.IMAGENET_PHOTOS) * len(D.IMAGENET_VARIANTS), 3, 224, 224)
    assert x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    assert es.labels is None and len(es.ids) == len(set(es.ids)) == x.shape[0]
    assert es.ids[0] == "chelsea.center"
    es2 = D.imagenet_photos("data", photos=("chelsea.png",), variants=("center", "hflip"))
    assert list(es2.inputs) == ["data"] and es2.ids == ["chelsea.center", "chelsea.hflip"]
    np.testing.assert_array_equal(es2.inputs["data"], x[:2])
    np.testing.assert_array_equal(es2.inputs["data"][1], es2.inputs["data"][0][:, :, ::-1])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        D.imagenet_photos(photos=("nope.png",))


def test_mobilenet_predicts_real_photos(mobilenet):
    es = D.imagenet_photos(photos=("chelsea.png", "coffee.png"), variants=("center", "hflip"))
    with torch.no_grad():
        top1 = mobilenet(torch.from_numpy(es.inputs["input"])).argmax(1).tolist()
    pred = dict(zip(es.ids, top1))
    assert pred["chelsea.center"] in CAT_CLASSES and pred["chelsea.hflip"] in CAT_CLASSES, pred
    assert pred["coffee.center"] in COFFEE_CLASSES and pred["coffee.hflip"] in COFFEE_CLASSES, pred


# ------------------------------------------------------------------------------ Fashion-MNIST
def test_fashion_mnist_test_split():
    es = D.fashion_mnist()
    x, y = es.inputs["input"], es.labels
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    assert y.shape == (10000,) and y.dtype == np.int64
    assert set(np.unique(y).tolist()) == set(range(10))
    assert np.bincount(y).tolist() == [1000] * 10
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1
    assert es.ids[0] == "test/000000"


def test_fashion_mnist_train_limit_and_errors(tmp_path, monkeypatch):
    es = D.fashion_mnist("img", split="train", limit=256)
    assert es.inputs["img"].shape == (256, 1, 28, 28) and len(es.ids) == 256
    np.testing.assert_array_equal(es.labels, D.fashion_mnist(split="train", limit=300).labels[:256])
    with pytest.raises(ValueError, match="split"):
        D.fashion_mnist(split="val")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        D.fashion_mnist()


@pytest.mark.slow
def test_fashion_cnn_train_atomic_and_better_than_chance(tmp_path):
    out = tmp_path / "sub" / "fashion_cnn.pt"
    stats = fashion_cnn.train(out, epochs=1, seed=0, limit=2000, test_limit=1000)
    assert out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["fashion_cnn.pt"]  # no temp files left
    assert stats["train_samples"] == 2000 and stats["test_samples"] == 1000
    assert stats["test_accuracy"] > 0.5 and np.isfinite(stats["final_loss"])
    model = fashion_cnn.load(out)
    es = D.fashion_mnist(limit=1000)
    acc = fashion_cnn.evaluate(model, es.inputs["input"], es.labels)
    assert acc == pytest.approx(stats["test_accuracy"])
    with torch.no_grad():
        assert model(torch.zeros(fashion_cnn.INPUT_SHAPE)).shape == (1, 10)
    # deterministic with the seed
    stats2 = fashion_cnn.train(tmp_path / "again.pt", epochs=1, seed=0, limit=2000, test_limit=1000)
    a = torch.load(out, weights_only=True)
    b = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert stats2["final_loss"] == stats["final_loss"]


# ----------------------------------------------------------------------------- text direction
def test_text_direction_lines_with_rapidocr_classifier():
    import onnxruntime as ort

    es = D.text_direction_lines()
    x, y = es.inputs["x"], es.labels
    assert x.shape[1:] == (3, 48, 192) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    assert len(es) >= 40 and y.dtype == np.int64
    assert (y == 0).sum() == (y == 1).sum()
    assert es.ids[0].endswith(".rot0") and es.ids[1].endswith(".rot180")
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    sess = ort.InferenceSession(str(D.text_cls_model_path()), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert out.shape == (len(es), 2)
    acc = float((out.argmax(1) == y).mean())
    assert acc >= TEXT_DIRECTION_MIN_ACC, acc
    assert len(D.text_direction_lines(limit=10)) == 10


def test_cls_resize_norm_img_matches_paddle_layout():
    # wide crop -> width capped at 192; narrow crop -> right zero padding
    wide = np.full((20, 400, 3), 255, np.uint8)
    out = D.cls_resize_norm_img(wide)
    assert out.shape == (3, 48, 192) and np.allclose(out, 1.0)
    narrow = np.zeros((48, 96, 3), np.uint8)
    out = D.cls_resize_norm_img(narrow)
    assert np.allclose(out[:, :, :96], -1.0) and np.allclose(out[:, :, 96:], 0.0)
