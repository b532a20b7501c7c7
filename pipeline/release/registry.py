"""The artifact registry: files stored content-addressed (sha256) with their Subresource Integrity (sha384), and
index.json (schema version 2, pipeline/schemas/registry-index.schema.json) updated atomically under a lock.

Layout (every path in index.json is relative to the registry root; files 0644, folders 0755):
    index.json
    <model>/<version>/files/<sha256>/<file name>     model files (stored once per version, however many
                                                     candidates share them)
    <model>/<version>/report-<digest>.json           the build report the version was published with
    runtimes/<runtime>-<digest>/<url path>           the runtime files a measurement loaded (adapter, runtime JS,
                                                     wasm), one folder per exact set, shared by every model

Rules: a file is stored only if its content is what was measured (fresh sha256); a frozen version (promoted to an
alias, or published) never changes; the report is named by its own digest, so index.json and the report it names
can never disagree, whatever write fails.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import jsonschema

from pipeline.fsutil import DIR_MODE, copy_atomic, file_lock, sha256_file, write_bytes_atomic, write_json_atomic
from pipeline.outcome import IntegrityError, RegistryError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "registry-index.schema.json"
SCHEMA_VERSION = 2
INDEX = "index.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_index(index: dict) -> None:
    jsonschema.validate(index, load_schema())


def empty_index() -> dict:
    return {"schema_version": SCHEMA_VERSION, "models": {}}


# ------------------------------------------------------------------------------------------------ files


def integrity_of(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def file_record(path: Path, rel: str) -> dict:
    data = Path(path).read_bytes()
    return {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "integrity": integrity_of(data)}


def _readable_path(registry: Path, rel: Path) -> None:
    """Folders on the way to a stored file are 0755 whatever the umask: a web server must be able to serve them."""
    for d in [registry, *(registry / Path(*rel.parent.parts[:i + 1]) for i in range(len(rel.parent.parts)))]:
        if d.is_dir() and (d.stat().st_mode & 0o777) != DIR_MODE:
            os.chmod(d, DIR_MODE)


def _store(registry: Path, rel: Path, src: Path, digest: str) -> dict:
    dst = registry / rel
    if not (dst.is_file() and sha256_file(dst) == digest):
        copy_atomic(src, dst)
        if sha256_file(dst) != digest:
            raise IntegrityError(f"{dst}: the stored copy does not match {src} (sha256 {digest[:16]}…)")
    _readable_path(registry, rel)
    return file_record(dst, rel.as_posix())


def store_file(registry: Path, model: str, version: str, src: Path, sha256: str | None = None) -> dict:
    """Store `src` under its content hash and return its index record. With `sha256` (the content that was
    measured), a file whose content differs is refused. A stored copy that no longer matches its hash (damaged
    on disk) is replaced whole, never edited in place."""
    src = Path(src)
    digest = sha256_file(src)
    if sha256 is not None and digest != sha256:
        raise IntegrityError(f"{src}: sha256 {digest[:16]}… differs from the {sha256[:16]}… that was measured: "
                             "the file changed after it was measured; not publishing it")
    return _store(Path(registry), Path(model) / version / "files" / digest / src.name, src, digest)


def store_runtime(registry: Path, runtime: str, files: list[dict], locate: Callable[[str], Path]) -> list[dict]:
    """Store the runtime files a measurement loaded (``[{url, sha256, bytes}]``) as one bundle folder named by the
    digest of the whole set, keeping their URL layout (so relative imports between them resolve)."""
    lines = "\n".join(f"{f['url']} {f['sha256']}" for f in sorted(files, key=lambda f: f["url"]))
    bundle = Path("runtimes") / f"{runtime}-{hashlib.sha256(lines.encode()).hexdigest()[:16]}"
    out = []
    for f in sorted(files, key=lambda f: f["url"]):
        src = locate(f["url"])
        if sha256_file(src) != f["sha256"]:
            raise IntegrityError(f"{src}: runtime file {f['url']} is not the one the measurement loaded "
                                 f"(sha256 {f['sha256'][:16]}…): was node_modules reinstalled? Rebuild.")
        name = f["url"].lstrip("/")
        out.append({"name": name, **_store(Path(registry), bundle / name, src, f["sha256"])})
    return out


def store_labels(registry: Path, model: str, version: str, output: dict) -> dict:
    """An output's class names (``{"labels": {"data": [...]}}``) as a content-addressed JSON file."""
    if not isinstance(output.get("labels"), dict) or "data" not in output["labels"]:
        return output
    blob = (json.dumps(output["labels"]["data"], ensure_ascii=False) + "\n").encode()
    rel = Path(model) / version / "files" / hashlib.sha256(blob).hexdigest() / f"labels-{output['name']}.json"
    if not ((registry / rel).is_file() and sha256_file(registry / rel) == hashlib.sha256(blob).hexdigest()):
        write_bytes_atomic(registry / rel, blob)
    _readable_path(registry, rel)
    return {**output, "labels": file_record(registry / rel, rel.as_posix())}


# ------------------------------------------------------------------------------------------------ index


def migrate(index: dict) -> dict:
    """A version-1 index (models -> versions -> targets with the winner only) as version 2: versions and aliases
    per model, every version a draft, each winner its own only fallback. Integrity strings are computed from the
    registry's files by read_index (which knows where they are)."""
    if index.get("schema_version") == SCHEMA_VERSION:
        return index
    if index.get("schema_version") != 1:
        raise RegistryError(f"unknown registry index schema_version {index.get('schema_version')!r}")
    out = empty_index()
    for model, versions in index.get("models", {}).items():
        vs = {}
        for version, v in versions.items():
            v = copy.deepcopy(v)
            v.setdefault("frozen", None)
            if isinstance(v.get("report"), str):
                v["report"] = {"path": v["report"]}
            for t in v.get("targets", {}).values():
                t.pop("files_v1", None)
                if t.get("status") == "chosen":
                    t.setdefault("required_features", [])
                    t.setdefault("runtime_files", [])
                    opts = t.setdefault("runtime_options", {})
                    opts.setdefault("threads", 1)
                    opts.setdefault("cross_origin_isolated", False)
                    t.setdefault("runtime_version", None)
                    t.setdefault("ship_in", {"mode": None, "reason": "not recorded (schema version 1)"})
                    t["fallbacks"] = [{k: t[k] for k in CANDIDATE_FIELDS if k in t}]
                else:
                    t["fallbacks"] = []
            vs[version] = v
        out["models"][model] = {"versions": vs, "aliases": {}}
    return out


CANDIDATE_FIELDS = ("runtime", "runtime_version", "backend", "variant", "runtime_options", "required_features",
                    "files", "runtime_entry", "runtime_files", "metrics", "ship_in")


def _complete_v1_files(index: dict, registry: Path) -> None:
    """Integrity (and report hashes) for a migrated version-1 index, computed from the stored files."""
    def fill(f: dict) -> None:
        if "integrity" not in f or "sha256" not in f:
            p = registry / f["path"]
            if p.is_file():
                f.update(file_record(p, f["path"]))

    for m in index["models"].values():
        for v in m["versions"].values():
            fill(v["report"])
            for t in v["targets"].values():
                for c in target_candidates(t):
                    for f in c.get("files", []):
                        fill(f)


def parse_index(data: bytes, where: str, registry: Path | None = None) -> dict:
    """index.json bytes -> a validated version-2 index (version 1 migrated). RegistryError naming `where`."""
    try:
        index = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        pos = f" at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise RegistryError(f"{where}: corrupt registry index ({getattr(e, 'msg', e)}{pos}). Restore it from a "
                            "backup, or delete it: the next build republishes every version it builds.") from None
    if not isinstance(index, dict):
        raise RegistryError(f"{where}: not a registry index (expected a JSON object)")
    try:
        if index.get("schema_version") == 1:
            index = migrate(index)
            if registry is not None:
                _complete_v1_files(index, registry)
    except RegistryError as e:
        raise RegistryError(f"{where}: {e}") from None
    try:
        validate_index(index)
    except jsonschema.ValidationError as e:
        at = "/".join(str(p) for p in e.absolute_path) or "<top>"
        raise RegistryError(f"{where}: not a valid registry index at {at}: {e.message}") from None
    return index


def read_index(registry: Path) -> dict:
    """The registry index (an empty one when there is none yet). RegistryError naming the file when it cannot be
    read as a valid index: nothing is published over a file we cannot understand."""
    path = Path(registry) / INDEX
    if not path.exists():
        return empty_index()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RegistryError(f"{path}: cannot read the registry index ({e})") from None
    return parse_index(data, str(path), Path(registry))


def update_index(registry: Path, change: Callable[[dict], object]):
    """Read, change (in place) and write the index under the registry lock; the result is validated before it is
    written (never an index a web app could not read). Returns what `change` returned."""
    registry = Path(registry)
    with file_lock(registry / ".index.lock"):  # several Luigi workers / CLI users may write at once
        index = read_index(registry)
        out = change(index)
        index["updated"] = now()
        validate_index(index)
        write_json_atomic(registry / INDEX, index)
        _readable_path(registry, Path(INDEX))
    return out


def model_entry(index: dict, model: str) -> dict:
    return index["models"].setdefault(model, {"versions": {}, "aliases": {}})


def version_entry(registry: Path, model: str, version: str) -> dict | None:
    return read_index(registry).get("models", {}).get(model, {}).get("versions", {}).get(version)


def target_candidates(t: dict) -> list[dict]:
    """Every candidate record a target entry holds: itself (the winner's fields), its fallbacks, and those of its
    per-device-class decisions."""
    out = [t, *t.get("fallbacks", [])]
    for d in (t.get("device_classes") or {}).values():
        out += target_candidates(d)
    return out


def referenced_files(index: dict) -> list[dict]:
    """Every file the index references (model files, runtime files, reports), once each: what publishing copies
    and verifying re-hashes. ``[{path, sha256, bytes}]``."""
    seen: dict[str, dict] = {}
    for m in index.get("models", {}).values():
        for v in m.get("versions", {}).values():
            files = [v["report"], *(o["labels"] for o in v.get("outputs", []) if o.get("labels")),
                     *v.get("assets", {}).values()]
            for t in v.get("targets", {}).values():
                for c in target_candidates(t):
                    files += c.get("files", []) + c.get("runtime_files", [])
            for f in files:
                if "sha256" in f:
                    seen.setdefault(f["path"], {k: f[k] for k in ("path", "sha256", "bytes")})
    return sorted(seen.values(), key=lambda f: f["path"])


def intact(registry: Path, entry: dict) -> bool:
    """Every file a published version names is there with its recorded content."""
    from pipeline.keys import content_hash

    for f in referenced_files({"models": {"m": {"versions": {"v": entry}, "aliases": {}}}}):
        p = Path(registry) / f["path"]
        if not p.is_file() or content_hash(p) != f["sha256"]:
            return False
    return True


# ------------------------------------------------------------------------------------------------ publish


def frozen_conflict(entry: dict | None, build_key: str, build_inputs: dict | None = None) -> str | None:
    """Why a build with `build_key` may not replace the registry's `entry` (None: it may). A frozen version never
    changes: the message says what changed and to bump the version."""
    if not entry or not entry.get("frozen") or entry.get("build_key") == build_key:
        return None
    changed = [k for k in sorted(set(entry.get("build_inputs") or {}) | set(build_inputs or {}))
               if (entry.get("build_inputs") or {}).get(k) != (build_inputs or {}).get(k)]
    what = ", ".join(changed) if changed else "the build key"
    return (f"version is frozen ({entry['frozen']['why']}, {entry['frozen']['at']}) and this build differs in: "
            f"{what}. Bump `version` in the recipe to release the change as a new version.")


def publish(registry: Path, model: str, version: str, entry: dict, report: dict,
            locate_runtime_file: Callable[[str], Path] | None = None) -> dict:
    """Publish one model version (a draft). `entry` is the version object of the index schema, except that each
    candidate's `files` holds ``{"src": path, "sha256": measured}`` and `runtime_files` ``{"url", "sha256",
    "bytes"}`` still to be stored. A frozen version with another build key is refused before anything is written.
    Returns the stored version object."""
    registry = Path(registry)
    current = read_index(registry).get("models", {}).get(model, {}).get("versions", {}).get(version)
    conflict = frozen_conflict(current, entry["build_key"], entry.get("build_inputs"))
    if conflict:
        raise RegistryError(f"{model} {version}: {conflict}")

    def store_candidate(c: dict) -> dict:
        c = dict(c)
        c["files"] = [store_file(registry, model, version, Path(f["src"]), f.get("sha256")) for f in c["files"]]
        if c.get("runtime_files") and locate_runtime_file is not None:
            c["runtime_files"] = store_runtime(registry, c["runtime"], c["runtime_files"], locate_runtime_file)
        return c

    def store_target(t: dict) -> dict:
        t = dict(t)
        t["fallbacks"] = [store_candidate(c) for c in t.get("fallbacks", [])]
        if t["fallbacks"]:
            t.update({k: t["fallbacks"][0][k] for k in CANDIDATE_FIELDS if k in t["fallbacks"][0]})
        if "device_classes" in t:
            t["device_classes"] = {k: store_target(d) for k, d in t["device_classes"].items()}
        return t

    targets = {name: store_target(t) for name, t in entry["targets"].items()}
    outputs = [store_labels(registry, model, version, o) for o in entry.get("outputs", [])]
    assets = {name: store_file(registry, model, version, Path(a["src"]), a.get("sha256"))
              for name, a in entry.get("assets", {}).items()}
    blob = (json.dumps(report, indent=2, sort_keys=True, default=str) + "\n").encode()
    report_rel = Path(model) / version / f"report-{hashlib.sha256(blob).hexdigest()[:16]}.json"
    write_bytes_atomic(registry / report_rel, blob)
    _readable_path(registry, report_rel)
    version_obj = {**entry, "targets": targets, "outputs": outputs, "assets": assets,
                   "report": file_record(registry / report_rel, report_rel.as_posix()),
                   "created": now(), "frozen": current.get("frozen") if current else None}

    def put(index: dict) -> None:
        latest = model_entry(index, model)["versions"].get(version)
        conflict = frozen_conflict(latest, entry["build_key"], entry.get("build_inputs"))
        if conflict:  # frozen by someone else meanwhile
            raise RegistryError(f"{model} {version}: {conflict}")
        if latest and latest.get("frozen"):
            return  # the same content again: a frozen version is never rewritten
        model_entry(index, model)["versions"][version] = version_obj

    update_index(registry, put)
    return version_obj


def freeze(index: dict, model: str, version: str, why: str) -> None:
    v = index["models"][model]["versions"][version]
    if not v.get("frozen"):
        v["frozen"] = {"at": now(), "why": why}
