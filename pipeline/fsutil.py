"""Files: content hashes, locks, and the one way results are written — whole or not at all.

Every result (a task's folder, a converted model, a registry file, a trained weights file) is written into a
fresh temp folder beside its final place, named ``.<final name>.<host>-<pid>-<random>.tmp``, and moved into place
by rename only when complete. A crash or kill leaves at most such a temp folder, which ``remove_stale_temps``
clears on the next start (when its process is gone). Results are made world-readable (files 0644, folders 0755) like any release artifact: a web server
running as another user must be able to serve them.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

TEMP_SUFFIX = ".tmp"
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40]
_TEMP_OWNER = re.compile(r"\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[^.]*\.tmp$")
FILE_MODE, DIR_MODE = 0o644, 0o755


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def digest_files(named_files, seed: bytes = b"") -> str:
    """Short content hash of (name, path) pairs, in the order given: names count, so a rename changes it.
    Used for cache keys over our own code (family packages, measuring code, TVM runtime headers)."""
    h = hashlib.sha256(seed)
    for name, path in named_files:
        h.update(name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """An advisory lock (flock) on `path`, held for the block: exclusive (several workers, one writer), or `shared`
    (any number of shared holders; an exclusive one waits for them all, and they for it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def machine_lock(name: str, shared: bool = False) -> contextlib.AbstractContextManager:
    """A lock shared by every process on this machine (whatever folder it builds in): e.g. "timing", held
    exclusively by timed work and shared by the rest, so a timing never overlaps other work here however a central
    scheduler hands tasks out."""
    return file_lock(Path(tempfile.gettempdir()) / f"browser-model-release-{name}.lock", shared=shared)


def _make_readable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, DIR_MODE)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, FILE_MODE)


def temp_prefix(name: str) -> str:
    """Temp names say who made them (host, pid), so a later run can tell a live temp from a killed run's."""
    return f".{name}.{_HOST}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_dir(final: Path, *, merge: bool = False, last: str | None = None) -> Iterator[Path]:
    """Yield a fresh temp folder beside `final` to write into. On success:

    * default: the folder becomes `final` in one rename (an older `final` is replaced whole);
    * ``merge=True``: its entries move into the folder `final` (created if missing), which may hold other
      files; `last` (the entry file) moves at the end, so whoever finds the entry finds what it references.

    On any error the temp folder is removed and `final` is left as it was."""
    final = Path(final)
    parent = final if merge else final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=temp_prefix(final.name), suffix=TEMP_SUFFIX))
    try:
        yield tmp
        _make_readable(tmp)
        if merge:
            names = sorted(p.name for p in tmp.iterdir())
            if last in names:
                names.remove(last)
                names.append(last)
            for name in names:
                dst = final / name
                if dst.is_dir() and not dst.is_symlink():
                    shutil.rmtree(dst)
                os.replace(tmp / name, dst)
            tmp.rmdir()
        elif final.exists():  # a stale result with the same key: replace it whole
            old = Path(tempfile.mkdtemp(dir=parent, prefix=temp_prefix(final.name) + "old", suffix=TEMP_SUFFIX))
            old.rmdir()
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path to write one file (plus any sidecar files beside it, e.g. ONNX external data); on
    success they move beside `final`, the file itself last. `suffix` is for writers that insist on an
    extension (Keras wants '.keras'); it is dropped on the way."""
    final = Path(final)
    with atomic_dir(final.parent, merge=True, last=final.name) as tmp:
        inner = tmp / (final.name + suffix)
        yield inner
        if suffix and inner.exists():
            os.replace(inner, tmp / final.name)


@contextlib.contextmanager
def scratch_dir(near: Path) -> Iterator[Path]:
    """A temporary working folder beside `near` (same filesystem, so results can be renamed out of it), always
    removed afterwards. For converters' intermediate files, never for results."""
    parent = Path(near).parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=temp_prefix(Path(near).name) + "scratch", suffix=TEMP_SUFFIX,
                                     dir=parent) as d:
        yield Path(d)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def copy_atomic(src: Path, dst: Path) -> None:
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)


def remove_stale_temps(root: Path, max_age_s: float = 24 * 3600.0) -> list[Path]:
    """Remove temp folders/files (``.*.tmp``) under `root` left by killed runs: those whose process (on this
    host) is gone, and any older than `max_age_s` (another host's, or an unknown owner's). A live run's temps,
    here or on another worker sharing the folder, are left alone."""
    root = Path(root)
    if not root.is_dir():
        return []
    cutoff = time.time() - max_age_s
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in list(dirnames) + filenames:
            if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
                continue
            p = Path(dirpath) / name
            owner = _TEMP_OWNER.search(name)
            try:
                dead = owner is not None and owner["host"] == _HOST and not _pid_alive(int(owner["pid"]))
                if not dead and p.lstat().st_mtime > cutoff:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                    dirnames.remove(name)
                else:
                    p.unlink()
                removed.append(p)
            except FileNotFoundError:
                continue
    return removed
