"""A shared store of task results, for several build machines with their own local artifacts folders.

    [build_store]                 # luigi.cfg, or PIPELINE_BUILD_STORE=s3://bucket/prefix (wins)
    url = s3://bucket/builds      # or a folder (a shared mount): the same storage layer as `pipeline-release publish`

Every task result a worker writes is also stored under its content key (``build/<recipe>/<version>/<task>-<key>/``,
its files first, result.json last, each checked by sha256 on the way in); a worker that lacks a result locally
fetches it from the store into its own artifacts folder (its local cache) before deciding to build it, checking
every file against the sha256 its result recorded, and writes it into place with one rename. So the work is
done once by whichever worker gets it, and read by every other. The registry stays the job of the worker that
runs selection (it republishes from the fetched results when its own registry lacks the build).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import luigi

from pipeline.fsutil import atomic_dir

log = logging.getLogger("luigi-interface")
ENV_VAR = "PIPELINE_BUILD_STORE"
RESULT_FILE = "result.json"


class build_store(luigi.Config):  # noqa: N801 - luigi.cfg section name
    url = luigi.Parameter(default="", description="s3://bucket/prefix or a folder shared by the build machines")


def store_url() -> str:
    return os.environ.get(ENV_VAR) or build_store().url


@functools.lru_cache(maxsize=4)
def _open(url: str):
    from pipeline.release.store import open_store

    return open_store(url, endpoint_url=os.environ.get("PIPELINE_S3_ENDPOINT_URL"))


def store():
    url = store_url()
    return _open(url) if url else None


def _rel(out_dir: Path, artifacts_dir: Path) -> str:
    return Path(out_dir).resolve().relative_to(Path(artifacts_dir).resolve()).as_posix()


def push(out_dir: Path, artifacts_dir: Path, res: dict) -> None:
    """Store a task's files, then its result.json (so a stored result always finds its files)."""
    s = store()
    if s is None:
        return
    rel = _rel(out_dir, artifacts_dir)
    for name, sha in (res.get("outputs") or {}).items():
        path = Path(out_dir) / name
        if not s.exists_with(f"{rel}/{name}", path.stat().st_size, sha):
            s.put_file(f"{rel}/{name}", path, sha)
    s.put_bytes(f"{rel}/{RESULT_FILE}", (Path(out_dir) / RESULT_FILE).read_bytes(), immutable=True)


def pull(out_dir: Path, artifacts_dir: Path) -> bool:
    """Fetch a task's stored result and files into `out_dir` (whole, by one rename, every file checked against
    the sha256 its result records). False when the store does not hold it or a file does not match."""
    s = store()
    if s is None:
        return False
    rel = _rel(out_dir, artifacts_dir)
    data = s.read_bytes(f"{rel}/{RESULT_FILE}")
    if data is None:
        return False
    res = json.loads(data)
    try:
        with atomic_dir(Path(out_dir)) as tmp:
            for name, sha in (res.get("outputs") or {}).items():
                blob = s.read_bytes(f"{rel}/{name}")
                if blob is None or hashlib.sha256(blob).hexdigest() != sha:
                    raise ValueError(f"{rel}/{name}: {'missing' if blob is None else 'not the recorded content'}")
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(blob)
            (tmp / RESULT_FILE).write_bytes(data)
    except ValueError as e:
        log.warning("build store %s: not used: %s", s.url, e)
        return False
    log.info("fetched %s from the build store %s", rel, s.url)
    return True
