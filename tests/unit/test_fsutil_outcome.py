"""Atomic writes (the one helper), stale temp cleanup, and failures as data."""
import os
import stat
import time

import pytest

from pipeline import fsutil
from pipeline.outcome import (ConversionError, MeasurementError, NotApplicable, SourceError, UnsupportedOp,
                              conversion_step, failure_record, upstream_failure)


def mode(p):
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_dir_replaces_whole_and_is_world_readable(tmp_path):
    final = tmp_path / "out"
    with fsutil.atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"x")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "1"
    assert mode(final) == 0o755 and mode(final / "sub") == 0o755 and mode(final / "a.txt") == 0o644
    with fsutil.atomic_dir(final) as tmp:
        (tmp / "c.txt").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["c.txt"]  # replaced whole
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_failure_leaves_old_result(tmp_path):
    final = tmp_path / "out"
    with fsutil.atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with fsutil.atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("boom")
    assert (final / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_merge_moves_the_entry_last(tmp_path, monkeypatch):
    final = tmp_path / "model"
    final.mkdir()
    (final / "keep.txt").write_text("k")
    order = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append(os.path.basename(b)), real(a, b)))
    with fsutil.atomic_dir(final, merge=True, last="model.json") as tmp:
        for name in ("model.json", "a.bin", "z.bin"):
            (tmp / name).write_text(name)
    assert order == ["a.bin", "z.bin", "model.json"]
    assert sorted(p.name for p in final.iterdir()) == ["a.bin", "keep.txt", "model.json", "z.bin"]


def test_atomic_file_with_sidecar_and_suffix(tmp_path):
    dst = tmp_path / "d" / "m.onnx"
    with fsutil.atomic_file(dst) as tmp:
        tmp.write_bytes(b"model")
        tmp.with_name("m.onnx.data").write_bytes(b"weights")
    assert dst.read_bytes() == b"model" and (dst.parent / "m.onnx.data").read_bytes() == b"weights"
    assert mode(dst) == 0o644
    with fsutil.atomic_file(tmp_path / "model.bin", suffix=".keras") as tmp:
        assert tmp.name.endswith(".keras")
        tmp.write_bytes(b"k")
    assert (tmp_path / "model.bin").read_bytes() == b"k"
    fsutil.write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert mode(tmp_path / "r.json") == 0o644
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(fsutil.TEMP_SUFFIX)]


def test_stale_temps_are_removed_live_ones_kept(tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    build = tmp_path / "build"
    build.mkdir()
    killed = build / f".Task-abc.{fsutil._HOST}-{dead.pid}-x1.tmp"  # a kill -9'd run on this host
    live = build / f"{fsutil.temp_prefix('Task-def')}x2.tmp"        # this process: a live build
    ancient = build / ".Task-ghi.otherhost-12-x3.tmp"                # another worker's, a day old
    recent = build / ".Task-jkl.otherhost-13-x4.tmp"                 # another worker's, just made
    for d in (killed, live, ancient, recent):
        d.mkdir()
        (d / "partial").write_text("x")
    past = time.time() - 2 * 24 * 3600
    os.utime(ancient, (past, past))
    removed = fsutil.remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([killed, ancient])
    assert live.exists() and recent.exists() and not killed.exists() and not ancient.exists()


def test_failure_records():
    r = failure_record(SourceError("package 'x' is not installed"), "source")
    assert r == {"status": "failed", "stage": "source", "error": "package 'x' is not installed", "retry": True}
    r = failure_record(NotApplicable("int4: no MatMul"), "convert")
    assert r["status"] == "unsupported" and r["stage"] == "convert" and r["retry"] is False
    r = failure_record(MeasurementError("browser crashed", retryable=True, details={"env": {"a": 1}}), "browser")
    assert r["retry"] is True and r["env"] == {"a": 1} and r["stage"] == "browser"
    r = failure_record(RuntimeError("exploded\nsecond line"), "convert")
    assert r["error"] == "RuntimeError: exploded" and "traceback" in r and r["retry"] is False
    e = upstream_failure({"status": "failed", "stage": "export", "error": "bad", "retry": True})
    assert e.record("browser") == {"status": "failed", "stage": "export", "error": "bad", "retry": True}
    u = UnsupportedOp("onnx2tf", "com.example:Frob", "node f")
    assert (u.step, u.op, u.ops) == ("onnx2tf", "com.example:Frob", ["com.example:Frob"])
    assert str(u) == "onnx2tf: unsupported op com.example:Frob (node f)" and isinstance(u, ConversionError)


def test_conversion_step_names_the_step_and_files(tmp_path):
    @conversion_step("squash")
    def squash(src, dst):
        raise KeyError("k")

    with pytest.raises(ConversionError, match=r"squash failed \(a -> b\): KeyError"):
        squash("a", "b")


def test_an_exception_without_a_message_still_says_where():
    def check(x):
        if x <= 1:
            raise AssertionError  # like a library's bare `assert` (pytest rewrites the ones in tests)

    try:
        check(0)
    except AssertionError as e:
        r = failure_record(e, "convert")
    assert r["error"].startswith("AssertionError: raised without a message at test_fsutil_outcome.py:")
    assert "in check: `raise AssertionError" in r["error"]


def test_machine_lock_keeps_timed_work_apart_across_processes(tmp_path):
    """Two processes on one machine (e.g. two luigid workers) never hold the timing lock at once."""
    import multiprocessing as mp

    from pipeline.fsutil import machine_lock

    def hold(name, log, seconds):
        with machine_lock(name):
            with open(log, "a") as f:
                f.write(f"in {time.monotonic()}\n")
            time.sleep(seconds)
            with open(log, "a") as f:
                f.write(f"out {time.monotonic()}\n")

    log = tmp_path / "log"
    name = f"test-{os.getpid()}"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=hold, args=(name, log, 0.4)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events == ["in", "out", "in", "out"]


def test_shared_holders_run_together_and_timed_work_waits_for_them(tmp_path):
    """Conversions share the machine's timing lock (several at once); a timing takes it alone, after them."""
    import fcntl
    import tempfile
    import threading
    from pathlib import Path

    from pipeline.fsutil import machine_lock

    name = f"test-shared-{os.getpid()}"
    path = Path(tempfile.gettempdir()) / f"browser-model-release-{name}.lock"

    def try_lock(mode) -> bool:
        with open(path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return True

    with machine_lock(name, shared=True), machine_lock(name, shared=True):  # two conversions at once
        assert try_lock(fcntl.LOCK_SH) and not try_lock(fcntl.LOCK_EX)
    order = []
    release = threading.Event()

    def conversion():
        with machine_lock(name, shared=True):
            order.append("conversion in")
            release.wait(10)
            order.append("conversion out")

    t = threading.Thread(target=conversion)
    t.start()
    while not order:
        time.sleep(0.01)
    threading.Timer(0.3, release.set).start()
    with machine_lock(name):  # the timing waits for the conversion to finish
        order.append("timing")
    t.join(10)
    assert order == ["conversion in", "conversion out", "timing"]
