"""Build machines with their own artifacts folders sharing a build store on a real S3-API server (moto's, real
HTTP): what one builds, the other fetches (checked by sha256) instead of building; a damaged stored file is not
used."""
import json
import uuid
from pathlib import Path

import luigi
import pytest
import yaml

from models import tiny_recipe
from pipeline.release.registry import read_index
from pipeline.tasks import BuildAll
from s3server import BUCKET

pytestmark = pytest.mark.browser


@pytest.fixture
def store(s3, monkeypatch):
    endpoint, client = s3
    prefix = f"builds-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PIPELINE_BUILD_STORE", f"s3://{BUCKET}/{prefix}")
    monkeypatch.setenv("PIPELINE_S3_ENDPOINT_URL", endpoint)
    return client, prefix


def build(recipes: Path, art: Path) -> bool:
    return luigi.build([BuildAll(recipes_dir=str(recipes), artifacts_dir=str(art))], local_scheduler=True,
                       log_level="WARNING")


def results(art: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in (art / "build").rglob("result.json")}


def test_a_second_machine_fetches_what_the_first_built(tmp_path, store):
    client, prefix = store
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe("tiny", "1", variants=["fp32", "int8_dynamic"])))
    assert build(recipes, tmp_path / "a")
    a = results(tmp_path / "a")
    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])}
    assert {f"{prefix}/build/tiny/1/{name}/result.json" for name in a} <= keys

    assert build(recipes, tmp_path / "b")
    b = results(tmp_path / "b")
    assert set(a) == set(b)
    # Everything fetched byte for byte (a rerun would record other timings); selection ran again only to publish
    # into b's own registry.
    assert [n for n in a if a[n] != b[n] and not n.startswith("SelectAndPublish-")] == []
    ta, tb = (read_index(tmp_path / x / "registry")["models"]["tiny"]["versions"]["1"]["targets"]["wasm"]
              for x in ("a", "b"))
    assert [c["files"] for c in ta["fallbacks"]] == [c["files"] for c in tb["fallbacks"]]

    # A stored file that is not what its result records is not used: that task is built again, correctly.
    variant = next(n for n in a if n.startswith("Variant-fp32-"))
    files = json.loads(a[variant])["outputs"]
    name = next(iter(files))
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/build/tiny/1/{variant}/{name}", Body=b"not a model")
    assert build(recipes, tmp_path / "c")
    c = results(tmp_path / "c")
    assert c[variant] != a[variant] and json.loads(c[variant])["outputs"] == files

