"""The registry: content-addressed files with SRI, index.json schema version 2 (and the migration of version 1),
frozen versions, atomic and consistent writes, readable files."""
import base64
import copy
import hashlib
import json
import os
import stat

import jsonschema
import pytest

from pipeline.fsutil import sha256_file
from pipeline.outcome import IntegrityError, RegistryError
from pipeline.release.registry import (freeze, intact, migrate, publish, read_index, referenced_files,
                                       update_index, validate_index, version_entry)

METRICS = {"latency_ms": {"median": 1.0, "p90": 2.0, "iqr": 0.1}, "native_latency_ms": {"median": 0.5},
           "cold_start_ms": 10.0, "accuracy": {"top1_agreement": 1.0}, "peak_memory_bytes": 1000,
           "download_bytes": 11}


def cand(f, variant="fp32", sha=None, runtime_files=()):
    return {"runtime": "ort", "runtime_version": "1.30.0", "backend": "wasm", "variant": variant,
            "runtime_options": {"threads": 1, "cross_origin_isolated": False}, "required_features": ["wasm"],
            "files": [{"src": f, "sha256": sha}], "runtime_entry": "runtimes/ort.js",
            "runtime_files": list(runtime_files), "metrics": copy.deepcopy(METRICS), "ship_in": {"mode": "worker", "reason": "r"}}


def entry(tmp_path, content=b"model-bytes", key="k1", **cand_args):
    f = tmp_path / "model.onnx"
    f.write_bytes(content)
    return {"build_key": key, "build_inputs": {"recipe.budget": "a", "code": "b"},
            "inputs": [{"name": "x", "shape": ["batch", 3], "dtype": "float32"}],
            "outputs": [{"name": "y", "kind": "logits"}],
            "targets": {"wasm": {"status": "chosen", "reason": "fastest", "fallbacks": [cand(f, **cand_args)],
                                 "runner_up": None},
                        "webgpu": {"status": "unmet", "reason": "nothing inside budget", "fallbacks": []}}}


def test_publish_content_addressed_with_integrity(tmp_path):
    reg = tmp_path / "registry"
    v = publish(reg, "m", "1", entry(tmp_path), {"candidates": []})
    t = v["targets"]["wasm"]
    f = t["files"][0]
    assert t["fallbacks"][0]["files"] == t["files"] and t["variant"] == "fp32"  # the winner at the target level
    assert (reg / f["path"]).read_bytes() == b"model-bytes"
    assert f["path"] == f"m/1/files/{f['sha256']}/model.onnx" and f["bytes"] == 11
    assert f["integrity"] == "sha384-" + base64.b64encode(hashlib.sha384(b"model-bytes").digest()).decode()
    assert v["report"]["path"].startswith("m/1/report-") and v["frozen"] is None
    assert json.loads((reg / v["report"]["path"]).read_text()) == {"candidates": []}
    index = read_index(reg)
    validate_index(index)
    assert index["schema_version"] == 2 and index["models"]["m"]["aliases"] == {}
    assert index["models"]["m"]["versions"]["1"]["targets"]["webgpu"]["status"] == "unmet"
    assert {r["path"] for r in referenced_files(index)} == {f["path"], v["report"]["path"]}
    publish(reg, "n", "2", entry(tmp_path, b"other"), {})
    assert set(read_index(reg)["models"]) == {"m", "n"}
    assert not [p for p in reg.rglob("*") if p.name.endswith(".tmp")]


def test_runtime_files_are_one_shared_bundle(tmp_path):
    rt = tmp_path / "rt"
    (rt / "runtimes").mkdir(parents=True)
    (rt / "runtimes" / "ort.js").write_text("import './adapter.js';")
    (rt / "runtimes" / "adapter.js").write_text("export const TYPED = {};")
    files = [{"url": f"/runtimes/{n}", "sha256": sha256_file(rt / "runtimes" / n), "bytes": 1}
             for n in ("ort.js", "adapter.js")]
    reg = tmp_path / "registry"
    a = publish(reg, "m", "1", entry(tmp_path, runtime_files=files), {}, locate_runtime_file=lambda u: rt / u[1:])
    b = publish(reg, "n", "1", entry(tmp_path, b"x", runtime_files=files), {}, locate_runtime_file=lambda u: rt / u[1:])
    ra, rb = a["targets"]["wasm"]["runtime_files"], b["targets"]["wasm"]["runtime_files"]
    assert ra == rb and {r["name"] for r in ra} == {"runtimes/ort.js", "runtimes/adapter.js"}
    bundles = {tuple(r["path"].split("/")[:2]) for r in ra}
    assert len(bundles) == 1 and bundles.pop()[1].startswith("ort-")  # one folder: relative imports resolve in it
    assert {r["path"].split("/", 2)[2] for r in ra} == {"runtimes/ort.js", "runtimes/adapter.js"}
    (rt / "runtimes" / "ort.js").write_text("changed")
    with pytest.raises(IntegrityError, match="not the one the measurement loaded"):
        publish(reg, "o", "1", entry(tmp_path, runtime_files=files), {}, locate_runtime_file=lambda u: rt / u[1:])


def test_schema_rejects_chosen_without_metrics(tmp_path):
    e = entry(tmp_path)
    del e["targets"]["wasm"]["fallbacks"][0]["metrics"]["peak_memory_bytes"]
    with pytest.raises(jsonschema.ValidationError):
        publish(tmp_path / "reg", "m", "1", e, {})
    assert not (tmp_path / "reg" / "index.json").exists()  # nothing half-published


def test_failed_write_leaves_old_index(tmp_path, monkeypatch):
    reg = tmp_path / "registry"
    publish(reg, "m", "1", entry(tmp_path), {})
    before = (reg / "index.json").read_text()
    monkeypatch.setattr(os, "fsync", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        publish(reg, "m", "2", entry(tmp_path), {})
    assert (reg / "index.json").read_text() == before
    assert not [p for p in reg.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads(before)["models"]["m"]["versions"].keys() == {"1"}


def test_only_the_measured_content_is_published(tmp_path):
    e = entry(tmp_path)
    measured = sha256_file(tmp_path / "model.onnx")
    (tmp_path / "model.onnx").write_bytes(b"model-bytez")  # changed after it was measured
    e["targets"]["wasm"]["fallbacks"][0]["files"][0]["sha256"] = measured
    with pytest.raises(IntegrityError, match="model.onnx.*differs from the .* that was measured"):
        publish(tmp_path / "reg", "m", "1", e, {})
    assert not (tmp_path / "reg" / "index.json").exists()


def test_a_damaged_published_file_is_replaced_not_trusted(tmp_path):
    reg = tmp_path / "registry"
    v = publish(reg, "m", "1", entry(tmp_path), {})
    stored = reg / v["targets"]["wasm"]["files"][0]["path"]
    assert intact(reg, version_entry(reg, "m", "1"))
    stored.write_bytes(b"model-bytez")  # same size, one byte flipped
    assert not intact(reg, version_entry(reg, "m", "1"))
    publish(reg, "m", "1", entry(tmp_path), {})
    assert stored.read_bytes() == b"model-bytes" and intact(reg, version_entry(reg, "m", "1"))


def test_frozen_versions_never_change(tmp_path):
    reg = tmp_path / "registry"
    publish(reg, "m", "1", entry(tmp_path), {})
    update_index(reg, lambda index: freeze(index, "m", "1", "promoted to stable"))
    before = (reg / "index.json").read_bytes()
    changed = entry(tmp_path, key="k2")
    changed["build_inputs"] = {"recipe.budget": "CHANGED", "code": "b"}
    with pytest.raises(RegistryError, match=r"m 1: version is frozen \(promoted to stable.*differs in: recipe.budget"
                                            r".*Bump `version`"):
        publish(reg, "m", "1", changed, {})
    assert (reg / "index.json").read_bytes() == before
    publish(reg, "m", "1", entry(tmp_path), {})  # the same content again: a no-op
    assert (reg / "index.json").read_bytes() == before or version_entry(reg, "m", "1")["frozen"]


def test_corrupt_index_is_named_and_nothing_is_written(tmp_path):
    reg = tmp_path / "registry"
    reg.mkdir()
    (reg / "index.json").write_text('{"schema_version": 2, "models": {')
    with pytest.raises(RegistryError, match=r"registry/index.json: corrupt registry index .* line 1"):
        read_index(reg)
    with pytest.raises(RegistryError):
        publish(reg, "m", "1", entry(tmp_path), {})
    assert sorted(p.name for p in reg.iterdir()) == ["index.json"]  # no report, no files


def test_version_1_index_is_migrated(tmp_path):
    reg = tmp_path / "registry"
    f = reg / "m" / "1" / "files" / ("a" * 64) / "model.onnx"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"v1")
    (reg / "m" / "1" / "report.json").write_text("{}")
    v1 = {"schema_version": 1, "models": {"m": {"1": {
        "build_key": "k", "report": "m/1/report.json", "inputs": [], "outputs": [],
        "targets": {"wasm": {"status": "chosen", "reason": "r", "runtime": "ort", "backend": "wasm", "variant": "fp32",
                             "runtime_options": {"threads": 1},
                             "files": [{"path": str(f.relative_to(reg)), "sha256": "a" * 64, "bytes": 2}],
                             "metrics": METRICS, "ship_in": {"mode": "main", "reason": "r"}},
                    "webgpu": {"status": "unmet", "reason": "none", "runtime": None, "backend": None, "variant": None,
                               "files": [], "metrics": {}}}}}}}
    (reg / "index.json").write_text(json.dumps(v1))
    index = read_index(reg)
    t = index["models"]["m"]["versions"]["1"]["targets"]["wasm"]
    assert index["schema_version"] == 2 and t["fallbacks"][0]["variant"] == "fp32"
    assert t["files"][0]["integrity"].startswith("sha384-") and index["models"]["m"]["aliases"] == {}
    assert index["models"]["m"]["versions"]["1"]["frozen"] is None
    with pytest.raises(RegistryError, match="unknown registry index schema_version 7"):
        migrate({"schema_version": 7})


def test_registry_is_world_readable_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        reg = tmp_path / "registry"
        v = publish(reg, "m", "1", entry(tmp_path), {})
    finally:
        os.umask(old)
    for rel in ("index.json", v["report"]["path"], v["targets"]["wasm"]["files"][0]["path"]):
        assert stat.S_IMODE((reg / rel).stat().st_mode) == 0o644, rel
    for d in (reg, reg / "m", reg / "m" / "1", (reg / v["targets"]["wasm"]["files"][0]["path"]).parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
