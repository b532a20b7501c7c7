import pytest

from models import export_tiny_models


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def exported(work):
    """The two tiny PyTorch models exported to canonical ONNX, with inputs, PyTorch outputs and calibration data."""
    return export_tiny_models(work)
