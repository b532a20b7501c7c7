"""Several build machines on one: a real `luigid` started by the test and two worker processes sharing one
artifacts folder (what a shared file system gives several machines). The build splits across them and the
registry holds what a single-worker build publishes."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from models import tiny_recipe
from pipeline.release.registry import read_index, validate_index

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# luigid's own settings for the tests: a dead worker's task comes back within seconds, not minutes.
SCHEDULER_CFG = "[scheduler]\nworker_disconnect_delay = 3\nretry_delay = 1\nretry_count = 3\n"


@pytest.fixture
def luigid(tmp_path):
    port = free_port()
    (tmp_path / "luigid").mkdir()
    (tmp_path / "luigid" / "luigid.cfg").write_text(SCHEDULER_CFG)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "luigid"), "--port", str(port), "--address", "127.0.0.1",
                             "--state-path", str(tmp_path / "luigid" / "state.pickle"),
                             "--logdir", str(tmp_path / "luigid")], cwd=tmp_path / "luigid",
                            env={**os.environ, "LUIGI_CONFIG_PATH": str(tmp_path / "luigid" / "luigid.cfg")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "luigid did not start"
            time.sleep(0.2)
    yield port
    proc.terminate()
    proc.wait(10)


def worker(port: int, recipes: Path, art: Path, log: Path) -> subprocess.Popen:
    """A build worker as the README starts one on each machine (LUIGI_CONFIG_PATH=luigid.cfg)."""
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(ROOT / "luigid.cfg"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    return subprocess.Popen([str(Path(sys.executable).parent / "luigi"), "--module", "pipeline", "BuildAll",
                             "--recipes-dir", str(recipes), "--artifacts-dir", str(art),
                             "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), "--no-lock"],
                            cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_two_workers_on_luigid_split_the_build(tmp_path, luigid):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name in ("tiny_a", "tiny_b"):
        (recipes / f"{name}.yaml").write_text(yaml.safe_dump(tiny_recipe(name, "1", variants=["fp32", "int8_dynamic"])))
    art = tmp_path / "shared"
    procs = [worker(luigid, recipes, art, tmp_path / f"worker{i}.log") for i in (1, 2)]
    for i, p in enumerate(procs, 1):
        assert p.wait(600) == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]

    results = [json.loads(p.read_text()) for p in (art / "build").rglob("result.json")]
    by_worker = {}
    for r in results:
        by_worker.setdefault(r["worker"], []).append(r["task"])
    assert len(by_worker) == 2, by_worker  # both workers built part of it
    assert not list(art.rglob("*.tmp"))  # nothing half-written left visible
    index = read_index(art / "registry")
    validate_index(index)
    for name in ("tiny_a", "tiny_b"):
        t = index["models"][name]["versions"]["1"]["targets"]["wasm"]
        assert t["status"] == "chosen", t["reason"]
        assert t["device_class"] == "build-machine"

    # The same recipes built by one worker with the local scheduler publish the same files.
    single = tmp_path / "single"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    subprocess.run([str(Path(sys.executable).parent / "luigi"), "--module", "pipeline", "BuildAll", "--recipes-dir",
                    str(recipes), "--artifacts-dir", str(single)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    one = read_index(single / "registry")

    def published(ix):
        return {(m, c["variant"], f["sha256"]) for m, e in ix["models"].items()
                for c in e["versions"]["1"]["targets"]["wasm"]["fallbacks"] for f in c["files"]}

    assert published(index) == published(one)


def test_a_worker_killed_mid_task_another_finishes_it(tmp_path, luigid):
    """kill -9 of a worker (and its browser) in the middle of a task: luigid gives the task back, the other worker
    builds it, and the dead worker's half-written folder is removed, never read."""
    import signal

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    recipe = tiny_recipe("slow", "1", source={"kind": "pytorch", "module": {"function": "models:build"},
                                              "weights": {"trainer": {"function": "models:train_slowly"}}})
    (recipes / "slow.yaml").write_text(yaml.safe_dump(recipe))
    art = tmp_path / "shared"
    first = worker(luigid, recipes, art, tmp_path / "worker1.log")
    deadline = time.monotonic() + 120
    while not list((art / "build").rglob(".SourceModel-*.tmp")):
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "worker1.log").read_text()[-2000:]
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    leftovers = list((art / "build").rglob(".*.tmp"))
    assert leftovers
    second = worker(luigid, recipes, art, tmp_path / "worker2.log")
    assert second.wait(600) == 0, (tmp_path / "worker2.log").read_text()[-3000:]
    source = json.loads(next((art / "build").rglob("SourceModel-*/result.json")).read_text())
    assert source["status"] == "ok" and source["worker"].endswith(f":{second.pid}")
    assert not [p for p in leftovers if p.exists()] and not list(art.rglob(".*.tmp"))
    t = read_index(art / "registry")["models"]["slow"]["versions"]["1"]["targets"]["wasm"]
    assert t["status"] == "chosen", t["reason"]
