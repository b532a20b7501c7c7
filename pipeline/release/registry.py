"""Artifact registry: chosen files stored content-addressed (by sha256), index.json updated atomically under a lock.

Layout (all paths in index.json are relative to the registry folder):
    index.json
    <model>/<version>/files/<sha256>/<file name>
    <model>/<version>/report.json
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import jsonschema

from pipeline.fsutil import copy_atomic, file_lock, sha256_file, write_json_atomic

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "registry-index.schema.json"


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_index(index: dict) -> None:
    jsonschema.validate(index, load_schema())


def store_file(registry: Path, model: str, version: str, src: Path) -> dict:
    """Copy `src` under its content hash (no-op when already there). Returns the index file entry."""
    digest = sha256_file(src)
    rel = Path(model) / version / "files" / digest / src.name
    dst = registry / rel
    if not (dst.is_file() and dst.stat().st_size == src.stat().st_size):
        copy_atomic(src, dst)
    return {"path": rel.as_posix(), "sha256": digest, "bytes": dst.stat().st_size}


def read_index(registry: Path) -> dict:
    path = registry / "index.json"
    if not path.exists():
        return {"schema_version": 1, "models": {}}
    return json.loads(path.read_text())


def publish(registry: Path, model: str, version: str, entry: dict, report: dict) -> dict:
    """Publish one model version. `entry` is the version object of the index schema, except that each target's
    `files` holds source paths (Path) still to be stored. Returns the stored version object."""
    targets = {}
    for name, t in entry["targets"].items():
        t = dict(t)
        t["files"] = [store_file(registry, model, version, Path(f)) for f in t.get("files", [])]
        targets[name] = t
    report_rel = Path(model) / version / "report.json"
    write_json_atomic(registry / report_rel, report)
    version_obj = {**entry, "targets": targets, "report": report_rel.as_posix()}
    with file_lock(registry / ".index.lock"):  # several Luigi workers may publish at once
        index = read_index(registry)
        index.setdefault("models", {}).setdefault(model, {})[version] = version_obj
        index["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        validate_index(index)  # never publish an index a web app could not read
        write_json_atomic(registry / "index.json", index)
    return version_obj
