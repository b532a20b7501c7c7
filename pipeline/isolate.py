"""Third-party native code that can abort the whole process (a C++ CHECK failing inside a converter) runs in a child
process: its crash becomes that variant's recorded failure instead of the end of the build (seen: TensorFlow's TFLite
full-integer quantizer aborting on face_onet, which killed the Luigi worker and every task after it)."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from pipeline.outcome import ConversionError


def _child(fn, args, kwargs, err_path: str):
    # What the child writes (a native library's last words) is kept in a file the parent reads back.
    fd = os.open(err_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return fn(*args, **kwargs)


@contextlib.contextmanager
def _main_the_child_can_import():
    """A spawned child re-runs the parent's main script by its path (`__main__.__file__`). A script read from stdin
    (`python - <<EOF`) or `-c` has no such file and every child would die before running anything: the child then
    starts as from an interactive session, which imports nothing of `__main__` (`fn` must live in a module)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or getattr(getattr(main, "__spec__", None), "name", None) or path is None or os.path.isfile(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def run_isolated(fn, *args, what: str, **kwargs):
    """`fn(*args, **kwargs)` in a fresh (spawned) Python process; its return value, or the exception it raised. A
    child that dies (abort, segfault, killed) raises ConversionError naming `what` and the end of its stderr.
    `fn`, its arguments and its result must pickle."""
    with tempfile.NamedTemporaryFile(prefix="isolated-", suffix=".log", delete=False) as f:
        err = Path(f.name)
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                with _main_the_child_can_import():  # the child is spawned here
                    future = pool.submit(_child, fn, args, kwargs, str(err))
                return future.result()
            except BrokenProcessPool:
                lines = [ln for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
                raise ConversionError(f"{what}: the converter's process died (a native crash, not a Python error); "
                                      f"its last output: {' | '.join(lines[-4:])[-600:] or 'none'}") from None
    finally:
        err.unlink(missing_ok=True)
