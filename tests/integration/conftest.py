import boto3
import pytest

from models import export_tiny_models
from s3server import BUCKET, FAKE_AWS, _start_moto, _stop


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def exported(work):
    """The two tiny PyTorch models exported to canonical ONNX, with inputs, PyTorch outputs and calibration data."""
    return export_tiny_models(work)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real moto S3 server on a free port, fake credentials in the environment, and one bucket."""
    proc, endpoint = _start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in FAKE_AWS.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "PIPELINE_S3_ENDPOINT_URL"):
            mp.delenv(k, raising=False)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    _stop(proc)
