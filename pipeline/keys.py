"""Content keys: every task's result is stored under the hash of what it depends on — its own configuration
(a fingerprint), its inputs' keys, the toolchain versions and our own code that produced it. Change a recipe
field, a weights file, a pinned package or a converter's code and exactly the affected results are rebuilt;
change nothing and nothing is.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from pipeline.fsutil import digest_files, sha256_file

CACHE_EPOCH = "3"  # bump to invalidate every cached result after a change the keys below cannot see
BROWSER_METHOD = "2"  # bump when the measuring page/harness changes what a browser measurement means
ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def content_hash(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) within a process."""
    st = path.stat()
    return _content_hash(str(path), st.st_size, st.st_mtime_ns)


def verify_file(path: Path, sha256: str, what: str) -> None:
    """Check, by a fresh read, that `path` still holds the content recorded for it where it crossed a task
    boundary; IntegrityError naming the file otherwise."""
    from pipeline.outcome import IntegrityError

    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{what}: {path} is missing")
    got = sha256_file(path)
    if got != sha256:
        raise IntegrityError(f"{what}: {path} has sha256 {got[:16]}…, but {sha256[:16]}… was recorded for it: "
                             "the file changed after it was written")


# Fields of a task result that say how a run went, not what it produced: left out of its digest, so a rerun
# that produced the same thing does not invalidate the tasks that consumed it.
VOLATILE_FIELDS = ("seconds", "attempt", "seconds_eval", "traceback")


def result_digest(result: dict) -> str:
    stable = {k: v for k, v in result.items() if k not in VOLATILE_FIELDS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_key(task_name: str, fingerprint: object, input_keys: list[str]) -> str:
    blob = json.dumps([CACHE_EPOCH, task_name, fingerprint, input_keys], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def python_toolchain() -> dict[str, str | None]:
    """Versions that shape conversions and native runs: a changed pin reruns what depends on it."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxsim", "onnxconverter-common", "onnxscript"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


@functools.lru_cache(maxsize=None)
def browser_toolchain() -> dict[str, str | None]:
    """The browser and the npm lockfile: measurements depend on both."""
    lock = ROOT / "browser_validate" / "package-lock.json"
    exe = os.environ.get("BROWSER_VALIDATE_CHROMIUM") or shutil.which("chromium") or ""
    try:
        chromium = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        chromium = "unknown"
    return {"chromium": chromium, "npm_lock": content_hash(lock) if lock.exists() else None}


@functools.lru_cache(maxsize=None)
def measuring_code_hash(runtime: str) -> str:
    """Our measuring code for one runtime: harness, server, page, the adapter interface and the runtime's adapter."""
    from browser_validate import measuring_code_files

    return digest_files((f.relative_to(ROOT).as_posix(), f) for f in measuring_code_files(runtime))


def judging(recipe) -> list:
    """How a measurement's accuracy is judged beyond the outputs themselves (those key the canonical ONNX):
    the recipe's detection decoders, by their settings and their code."""
    return [[d.model_dump(mode="json"), d.decode.code_hash()] for d in recipe.detections]
