"""Artifact registry: chosen files stored content-addressed (by sha256), index.json updated atomically under a lock.

Layout (all paths in index.json are relative to the registry folder; files 0644, folders 0755):
    index.json
    <model>/<version>/files/<sha256>/<file name>
    <model>/<version>/report-<digest>.json      the build report the index entry was published with

A file is stored only if its content is the content that was measured (sha256 checked on a fresh read, and again
on the stored copy). The report is named by its own digest, so index.json and the report it names can never
disagree, whatever write fails.
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import jsonschema

from pipeline.fsutil import DIR_MODE, copy_atomic, file_lock, sha256_file, write_bytes_atomic, write_json_atomic
from pipeline.outcome import IntegrityError, RegistryError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "registry-index.schema.json"


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_index(index: dict) -> None:
    jsonschema.validate(index, load_schema())


def _readable_path(registry: Path, rel: Path) -> None:
    """Folders on the way to a stored file are 0755 whatever the umask: a web server must be able to serve them."""
    for d in [registry, *(registry / Path(*rel.parent.parts[:i + 1]) for i in range(len(rel.parent.parts)))]:
        if d.is_dir() and (d.stat().st_mode & 0o777) != DIR_MODE:
            os.chmod(d, DIR_MODE)


def store_file(registry: Path, model: str, version: str, src: Path, sha256: str | None = None) -> dict:
    """Store `src` under its content hash and return its index entry. With `sha256` (the content that was
    measured), a file whose content differs is refused. A stored copy that no longer matches its hash (damaged
    on disk) is replaced whole, never edited in place."""
    src = Path(src)
    digest = sha256_file(src)
    if sha256 is not None and digest != sha256:
        raise IntegrityError(f"{src}: sha256 {digest[:16]}… differs from the {sha256[:16]}… that was measured: "
                             "the file changed after it was measured; not publishing it")
    rel = Path(model) / version / "files" / digest / src.name
    dst = registry / rel
    if not (dst.is_file() and sha256_file(dst) == digest):
        copy_atomic(src, dst)
        if sha256_file(dst) != digest:
            raise IntegrityError(f"{dst}: the stored copy does not match {src} (sha256 {digest[:16]}…)")
    _readable_path(registry, rel)
    return {"path": rel.as_posix(), "sha256": digest, "bytes": dst.stat().st_size}


def read_index(registry: Path) -> dict:
    """The registry index (an empty one when there is none yet). RegistryError naming the file when it cannot be
    read as a valid index: nothing is published over a file we cannot understand."""
    path = Path(registry) / "index.json"
    if not path.exists():
        return {"schema_version": 1, "models": {}}
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path}: corrupt registry index ({e.msg} at line {e.lineno}, column {e.colno}). "
                            "Restore it from a backup, or delete it: the next build republishes every version it "
                            "builds.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(f"{path}: cannot read the registry index ({e})") from None
    try:
        validate_index(index)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "<top>"
        raise RegistryError(f"{path}: not a valid registry index at {where}: {e.message}") from None
    return index


def version_entry(registry: Path, model: str, version: str) -> dict | None:
    return read_index(registry).get("models", {}).get(model, {}).get(version)


def intact(registry: Path, entry: dict) -> bool:
    """Every file a published version names is there with its recorded content (report included)."""
    from pipeline.keys import content_hash

    for t in entry.get("targets", {}).values():
        for f in t.get("files", []):
            p = Path(registry) / f["path"]
            if not p.is_file() or content_hash(p) != f["sha256"]:
                return False
    return (Path(registry) / entry["report"]).is_file() if entry.get("report") else False


def publish(registry: Path, model: str, version: str, entry: dict, report: dict) -> dict:
    """Publish one model version. `entry` is the version object of the index schema, except that each target's
    `files` holds ``{"src": path, "sha256": measured}`` still to be stored. Returns the stored version object."""
    registry = Path(registry)
    read_index(registry)  # a corrupt index stops the publish before anything is written
    targets = {}
    for name, t in entry["targets"].items():
        t = dict(t)
        t["files"] = [store_file(registry, model, version, Path(f["src"]), f.get("sha256")) for f in t.get("files", [])]
        targets[name] = t
    blob = (json.dumps(report, indent=2, sort_keys=True, default=str) + "\n").encode()
    report_rel = Path(model) / version / f"report-{hashlib.sha256(blob).hexdigest()[:16]}.json"
    write_bytes_atomic(registry / report_rel, blob)
    _readable_path(registry, report_rel)
    version_obj = {**entry, "targets": targets, "report": report_rel.as_posix()}
    with file_lock(registry / ".index.lock"):  # several Luigi workers may publish at once
        index = read_index(registry)
        index.setdefault("models", {}).setdefault(model, {})[version] = version_obj
        index["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        validate_index(index)  # never publish an index a web app could not read
        write_json_atomic(registry / "index.json", index)
    return version_obj
