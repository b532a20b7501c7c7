"""A sentence-embedding transformer end to end, as real ones ship (tests/models.py: transformers' BERT, a safetensors
checkpoint with a pooler the module does not use, a tokenizer.json): exported (the dynamo exporter also names an
inner value 'embedding'), weight-only variants built, evaluated in Chromium on real sentences tokenized with the
recipe's tokenizer (cosine and retrieval agreement), the tokenizer published with the version, and handed to the
app by the loader, sha256-checked."""
import json
import shutil
from pathlib import Path

import luigi
import onnx
import pytest
import yaml
from click.testing import CliRunner

from models import embedder_recipe, write_tokenizer
from pipeline.cli import main
from pipeline.fsutil import sha256_file
from pipeline.release.registry import read_index
from pipeline.tasks import BuildAll, EvalData

pytestmark = [pytest.mark.browser, pytest.mark.toolchain, pytest.mark.slow]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    project = tmp_path_factory.mktemp("embedder")
    recipes = project / "recipes"
    recipes.mkdir()
    write_tokenizer(recipes / "tokenizer.json")
    (recipes / "embedder.yaml").write_text(yaml.safe_dump(embedder_recipe()))
    art = project / "art"
    luigi.task_register.Register.clear_instance_cache()
    res = luigi.build([BuildAll(recipes_dir=str(recipes), artifacts_dir=str(art))], local_scheduler=True,
                      detailed_summary=True, log_level="WARNING")
    assert res.scheduling_succeeded, res.summary_text
    out = CliRunner().invoke(main, ["--registry", str(art / "registry"), "promote", "embedder", "1",
                                    "--alias", "stable"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return recipes, art


def test_embedder_is_judged_by_cosine_and_retrieval(built):
    recipes, art = built
    v = read_index(art / "registry")["models"]["embedder"]["versions"]["1"]
    t = v["targets"]["wasm"]
    assert t["status"] == "chosen", t["reason"]
    emb = t["metrics"]["accuracy"]["outputs"]["embedding"]
    assert emb["kind"] == "embedding" and emb["min_cosine"] >= 0.99 and emb["retrieval_agreement"] >= 0.9
    assert t["metrics"]["accuracy"]["samples"] == 12
    # The weight-only variants are what they say: MatMulNBits, and 4-bit token embeddings.
    build = art / "build" / "embedder" / "1"
    ops = {v: {n.op_type for n in onnx.load(next(build.glob(f"Variant-{v}-*/model.onnx"))).graph.node}
           for v in ("int8_weights", "int4")}
    assert "MatMulNBits" in ops["int8_weights"] and "GatherBlockQuantized" not in ops["int8_weights"]
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops["int4"]
    report = json.loads((art / "registry" / v["report"]["path"]).read_text())
    status = {c["variant"]: c["status"] for c in report["candidates"]}
    assert set(status) == {"fp32", "int8_weights", "int4", "int4_fp16"}
    # float16 compute after quantizing: BERT's attention-mask Cast must produce float16 too, or nothing loads.
    assert status["int4_fp16"] == "ok", report["candidates"]


def test_tokenizer_is_published_and_keys_the_data(built):
    recipes, art = built
    a = read_index(art / "registry")["models"]["embedder"]["versions"]["1"]["assets"]["tokenizer"]
    assert a["sha256"] == sha256_file(recipes / "tokenizer.json")
    assert (art / "registry" / a["path"]).read_bytes() == (recipes / "tokenizer.json").read_bytes()
    out = CliRunner().invoke(main, ["--registry", str(art / "registry"), "verify"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    # Another tokenizer is other data: the evaluation samples' key changes with the file's content.
    task = lambda: EvalData(recipe_path=str(recipes / "embedder.yaml"), artifacts_dir=str(art))  # noqa: E731
    before = task().key
    saved = (recipes / "tokenizer.json").read_bytes()
    try:
        tok = json.loads(saved)
        tok["normalizer"]["lowercase"] = False
        (recipes / "tokenizer.json").write_text(json.dumps(tok))
        luigi.task_register.Register.clear_instance_cache()
        assert task().key != before
    finally:
        (recipes / "tokenizer.json").write_bytes(saved)
        luigi.task_register.Register.clear_instance_cache()


def test_loader_hands_the_app_the_tokenizer_checked(built, tmp_path):
    from test_loader import Site

    recipes, art = built
    expected = list((recipes / "tokenizer.json").read_bytes())
    get = """async (name) => {
        const {loadModel} = await import('/web/loader/index.js');
        const model = await loadModel({registry: '/registry/', name: 'embedder', alias: 'stable'});
        try { return {bytes: Array.from(new Uint8Array(await model.asset(name)))}; }
        catch (e) { return {error: e.message, name: e.name}; }
        finally { await model.release(); }
    }"""
    s = Site(art / "registry")
    try:
        assert s.page.evaluate(get, "tokenizer")["bytes"] == expected
        missing = s.page.evaluate(get, "vocab")
        assert "no asset" in missing["error"] and "tokenizer" in missing["error"]
    finally:
        s.close()
    # An altered tokenizer is refused by name, like an altered model file.
    reg = tmp_path / "reg"
    shutil.copytree(art / "registry", reg)
    a = read_index(reg)["models"]["embedder"]["versions"]["1"]["assets"]["tokenizer"]
    (reg / a["path"]).write_bytes((reg / a["path"]).read_bytes().replace(b"[UNK]", b"[UNX]"))
    s = Site(reg)
    try:
        out = s.page.evaluate(get, "tokenizer")
        assert out["name"] == "IntegrityError" and a["path"] in out["error"], out
    finally:
        s.close()
