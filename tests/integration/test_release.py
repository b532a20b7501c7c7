"""The release workflow on two real builds of a tiny model: list, diff, promote through the release gate (a
deliberately worse version is blocked; --force records why), rollback, frozen versions refused a changed rebuild,
publish to a folder and to a real S3-API server, verify both (and see tampering named)."""
import json
import subprocess
from pathlib import Path

import luigi
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.release.registry import read_index
from models import tiny_recipe
from pipeline.tasks import BuildAll
from s3server import BUCKET

pytestmark = [pytest.mark.browser, pytest.mark.toolchain, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

RECIPE = tiny_recipe("rel", "1.0.0", measure={"wasm": {"runs": 5, "warmup": 1, "qoe_modes": [], "threads": [1]}},
                     release={"max_size_increase": 0.10})
# Version 2: a 16x wider model (a bigger download): the gate must block it against version 1.
WORSE = {**RECIPE, "version": "2.0.0",
         "source": {"kind": "pytorch", "module": {"function": "models:build", "args": {"width": 128}},
                    "weights": {"trainer": {"function": "models:train", "args": {"width": 128}}}}}


def build(project: Path, recipe: dict):
    (project / "recipes").mkdir(exist_ok=True)
    (project / "recipes" / "rel.yaml").write_text(yaml.safe_dump(recipe))
    luigi.task_register.Register.clear_instance_cache()
    return luigi.build([BuildAll(recipes_dir=str(project / "recipes"), artifacts_dir=str(project / "art"))],
                       local_scheduler=True, detailed_summary=True, log_level="WARNING")


def cli(project: Path, *args: str, registry: str | None = None, endpoint: str | None = None):
    opts = ["--registry", registry or str(project / "art" / "registry")]
    if endpoint:
        opts += ["--endpoint-url", endpoint]
    return CliRunner().invoke(main, [*opts, *args], catch_exceptions=False)


def test_release_workflow(tmp_path, s3):
    endpoint, client = s3
    assert build(tmp_path, RECIPE).scheduling_succeeded
    out = cli(tmp_path, "list")
    assert out.exit_code == 0 and "rel" in out.output and "1.0.0" in out.output and "draft" in out.output
    assert "ort/fp32" in out.output

    # First holder of `stable`: only the budget applies. Promoting freezes the version.
    p = cli(tmp_path, "promote", "rel", "1.0.0", "--alias", "stable")
    assert p.exit_code == 0, p.output
    assert "no holder to compare with" in p.output and "stable → 1.0.0; 1.0.0 is frozen" in p.output
    index = read_index(tmp_path / "art" / "registry")
    assert index["models"]["rel"]["versions"]["1.0.0"]["frozen"]["why"] == "promoted to stable"

    # A frozen version is never rebuilt with other content: refused before anything is written.
    before = (tmp_path / "art" / "registry" / "index.json").read_bytes()
    with pytest.raises(SystemExit) as refused:
        build(tmp_path, {**RECIPE, "budget": {"min_top1_agreement": 0.8}})
    msg = str(refused.value.code)
    assert "rel 1.0.0: version is frozen (promoted to stable" in msg and "recipe.budget" in msg
    assert "Bump `version` in the recipe" in msg
    assert (tmp_path / "art" / "registry" / "index.json").read_bytes() == before
    assert build(tmp_path, RECIPE).scheduling_succeeded  # the same content again: a no-op
    assert (tmp_path / "art" / "registry" / "index.json").read_bytes() == before

    # Version 2 is worse: diff shows it, the gate blocks it and names both numbers.
    assert build(tmp_path, WORSE).scheduling_succeeded
    d = cli(tmp_path, "diff", "rel", "1.0.0", "2.0.0", "--json")
    rows = {(r["target"], r["figure"]): r for r in json.loads(d.output)["rows"]}
    assert rows[("wasm", "size")]["change"] > 1.0 and rows[("wasm", "winner")]["change"] == "same"
    table = cli(tmp_path, "diff", "rel", "1.0.0", "2.0.0").output
    assert "download" in table and "(worse)" in table
    blocked = cli(tmp_path, "promote", "rel", "2.0.0", "--alias", "stable")
    assert blocked.exit_code == 1
    assert "FAIL  wasm: download" in blocked.output and "allowed up to +10%" in blocked.output
    assert "not promoted to stable" in blocked.output
    assert read_index(tmp_path / "art" / "registry")["models"]["rel"]["aliases"]["stable"]["version"] == "1.0.0"
    assert cli(tmp_path, "promote", "rel", "2.0.0", "--alias", "stable", "--force").exit_code == 1  # no reason
    forced = cli(tmp_path, "promote", "rel", "2.0.0", "--alias", "stable", "--force", "--reason", "bigger, on purpose")
    assert forced.exit_code == 0 and "(forced: bigger, on purpose)" in forced.output
    alias = read_index(tmp_path / "art" / "registry")["models"]["rel"]["aliases"]["stable"]
    assert alias["version"] == "2.0.0"
    last = alias["history"][-1]
    assert last["forced"] and last["reason"] == "bigger, on purpose" and last["previous"] == "1.0.0"
    assert any("download" in g for g in last["gate"])

    # Rollback moves it back, and says so in the history.
    rb = cli(tmp_path, "rollback", "rel", "--alias", "stable", "--reason", "too big")
    assert rb.exit_code == 0 and "stable → 1.0.0 (was 2.0.0)" in rb.output
    alias = read_index(tmp_path / "art" / "registry")["models"]["rel"]["aliases"]["stable"]
    assert alias["version"] == "1.0.0" and alias["history"][-1]["action"] == "rollback"

    # A draft (never promoted) rebuilds freely until it is published.
    assert build(tmp_path, {**RECIPE, "version": "3.0.0"}).scheduling_succeeded
    assert read_index(tmp_path / "art" / "registry")["models"]["rel"]["versions"]["3.0.0"]["frozen"] is None
    assert build(tmp_path, {**RECIPE, "version": "3.0.0", "budget": {"min_top1_agreement": 0.8}}).scheduling_succeeded

    # Verify the build's registry; publish it to a folder and to S3; verify both; tampering is named.
    assert cli(tmp_path, "verify").exit_code == 0
    www = tmp_path / "www"
    pub = cli(tmp_path, "publish", "--to", str(www))
    assert pub.exit_code == 0 and "index.json written last" in pub.output
    s3_url = f"s3://{BUCKET}/models"
    pub = cli(tmp_path, "publish", "--to", s3_url, endpoint=endpoint)
    assert pub.exit_code == 0, pub.output
    for reg in (str(www), s3_url):
        v = cli(tmp_path, "verify", registry=reg, endpoint=endpoint)
        assert v.exit_code == 0 and "all match the index" in v.output, v.output
        assert "rel" in cli(tmp_path, "list", registry=reg, endpoint=endpoint).output
    published = read_index(www)["models"]["rel"]["versions"]
    assert all(v["frozen"] for v in published.values())
    local = read_index(tmp_path / "art" / "registry")["models"]["rel"]["versions"]
    assert all(v["frozen"] for v in local.values()) and local["3.0.0"]["frozen"]["why"].startswith("published to")
    runtime = published["1.0.0"]["targets"]["wasm"]["runtime_files"]
    wasm = next(f for f in runtime if f["name"].endswith(".wasm"))
    client.put_object(Bucket=BUCKET, Key=f"models/{wasm['path']}", Body=b"not the runtime")
    bad = cli(tmp_path, "verify", registry=s3_url, endpoint=endpoint)
    assert bad.exit_code == 1 and wasm["path"] in bad.output and "resized" in bad.output

    # The installed console script, as a user runs it.
    run = subprocess.run([str(Path(ROOT / ".venv" / "bin" / "pipeline-release")), "--registry", str(www), "list"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "[stable]" in run.stdout
    missing = subprocess.run([str(Path(ROOT / ".venv" / "bin" / "pipeline-release")), "--registry", str(www),
                              "diff", "rel", "1.0.0", "9.9.9"], capture_output=True, text=True)
    assert missing.returncode == 1 and "rel has no version '9.9.9'" in missing.stderr and "Traceback" not in \
        missing.stderr
