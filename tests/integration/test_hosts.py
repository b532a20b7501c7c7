"""Measurement hosts: a Playwright browser server started by the test stands for another machine (a remote host
of its own device class); the build measures on it and on the local browser, selects per device class and marks
WebGPU decisions from the software adapter provisional."""
import json
import shutil
import time

import luigi
import pytest
import yaml

from browser_validate.browser import CHROMIUM_ARGS
from models import tiny_recipe
from pipeline.hosts import ENV_VAR, HostsError, load_hosts
from pipeline.hosts import browser_server as run_browser_server
from pipeline.release.registry import read_index, validate_index
from pipeline.tasks import BuildAll

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory):
    """`playwright run-server` on a free port: what runs on a GPU machine (README: measurement hosts)."""
    with run_browser_server(tmp_path_factory.mktemp("pwserver") / "server.log") as endpoint:
        yield endpoint


def test_remote_host_measures_by_routing_and_decisions_carry_device_classes(tmp_path, browser_server, monkeypatch):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(yaml.safe_dump({"hosts": [
        {"name": "local", "device_class": "build-machine"},
        {"name": "farm1", "endpoint": browser_server, "device_class": "office-pc", "cpu": "the test's own",
         "launch": {"executablePath": shutil.which("chromium"), "args": CHROMIUM_ARGS, "headless": True}}]}))
    monkeypatch.setenv(ENV_VAR, str(hosts))
    net = {"name": "4g", "download_kbps": 20000, "latency_ms": 40}
    recipe = tiny_recipe("tiny", "1", targets=["wasm", "webgpu"], variants=["fp32", "int8_dynamic"],
                         measure={t: {"runs": 3, "warmup": 1, "qoe_modes": ["worker"] if t == "wasm" else [],
                                      "network_profile": net, "threads": [1],
                                      "screen_margin": 100} for t in ("wasm", "webgpu")})  # both measured in full
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    art = tmp_path / "art"
    assert luigi.build([BuildAll(recipes_dir=str(tmp_path / "recipes"), artifacts_dir=str(art))],
                       local_scheduler=True, log_level="WARNING")

    index = read_index(art / "registry")
    validate_index(index)
    v = index["models"]["tiny"]["versions"]["1"]
    for target in ("wasm", "webgpu"):
        t = v["targets"][target]
        assert set(t["device_classes"]) == {"build-machine", "office-pc"}
        for cls, d in t["device_classes"].items():
            assert d["device_class"] == cls and d["status"] == "chosen", d["reason"]
    # WebGPU here is SwiftShader on both hosts: provisional, never "fastest".
    gpu = v["targets"]["webgpu"]
    assert gpu["provisional"] and "software webgpu adapter" in gpu["provisional_reason"]
    assert all(d["provisional"] and "fastest" not in d["reason"] for d in gpu["device_classes"].values())
    assert "provisional" not in v["targets"]["wasm"]

    # The remote measurement: served by routing, the device it found, figures it could honestly give.
    build = art / "build" / "tiny" / "1"
    full = [p for p in build.glob("Browser-fp32-wasm-*/result.json") if "-screen-" not in p.parent.name]
    remote = json.loads(next(p for p in full if "-farm1-" in p.parent.name).read_text())
    local = json.loads(next(p for p in full if "-farm1-" not in p.parent.name).read_text())
    assert remote["device"] == {**remote["device"], "class": "office-pc", "host": "farm1", "remote": True,
                                "cpu": "the test's own", "gpu_adapter": None}
    assert remote["device"]["cores"] >= 1 and "HeadlessChrome" in remote["device"]["user_agent"]
    assert remote["env"]["crossOriginIsolated"] and "routed" in remote["env"]["served"]
    assert remote["env"]["memory_metric"] == "page" and remote["peak_memory_bytes"] is None
    assert remote["network_download"]["basis"].startswith("modelled")
    assert remote["cold_start"]["download_basis"].startswith("routed")
    assert "error" not in (remote["qoe"] or {}).get("worker", {}), remote["qoe"]  # the worker's files routed too
    assert local["device"]["class"] == "build-machine" and not local["device"]["remote"]
    assert local["env"]["memory_metric"] == "renderer_rss"
    # Same model, same outputs: both hosts agree with the reference alike.
    assert remote["accuracy"]["top1_agreement"] == local["accuracy"]["top1_agreement"] == 1.0
    webgpu = json.loads(next(build.glob("Browser-fp32-webgpu-farm1-*/result.json")).read_text())
    assert webgpu["device"]["software_gpu"] and webgpu["device"]["gpu_adapter"]["architecture"] == "swiftshader"
    report = json.loads((art / "registry" / v["report"]["path"]).read_text())
    assert {(d["target"], d["device_class"]) for d in report["decisions"]} == \
        {(t, c) for t in ("wasm", "webgpu") for c in ("build-machine", "office-pc")}


def test_bad_hosts_file_is_refused_with_the_field_named(tmp_path, monkeypatch):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(yaml.safe_dump({"hosts": [{"name": "gpu", "endpoint": "http://x", "device_class": "laptop"}]}))
    monkeypatch.setenv(ENV_VAR, str(hosts))
    with pytest.raises(HostsError, match=r"hosts\.0: Value error, endpoint 'http://x'"):
        load_hosts()
    hosts.write_text(yaml.safe_dump({"hosts": [{"name": "a", "device_class": "x"}, {"name": "a", "device_class": "y"}]}))
    with pytest.raises(HostsError, match="host names repeat"):
        load_hosts()


def test_a_browser_server_on_the_build_machine_takes_its_timing_resource(tmp_path, monkeypatch):
    """One machine standing for two (README: luigid, two workers and a browser server on this machine): measurements
    on its own browser server must not overlap native timings, as a local browser's never do."""
    from pipeline.tasks import BrowserMeasure

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe("tiny", "1", targets=["wasm"], variants=["fp32"])))
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(yaml.safe_dump({"hosts": [
        {"name": "here", "endpoint": "ws://127.0.0.1:3000/", "device_class": "build-machine", "build_machine": True},
        {"name": "farm1", "endpoint": "ws://10.0.0.7:3000/", "device_class": "office-pc"}]}))
    monkeypatch.setenv(ENV_VAR, str(hosts))

    def resources(name):
        return BrowserMeasure(str(recipe), str(tmp_path / "art"), variant="fp32", target="wasm", host=name).resources

    assert resources("here") == {"browser_host_here": 1, "timing": 1}
    assert resources("farm1") == {"browser_host_farm1": 1}
    # ... and, without its own launch options, the server launches the browser a local measurement uses.
    from pipeline.hosts import host

    assert host("here").launch_options() == {"executablePath": shutil.which("chromium"), "args": CHROMIUM_ARGS,
                                             "headless": True}
    assert host("farm1").launch_options() is None


def test_a_remote_browser_that_dies_is_replaced_for_the_next_measurement(tmp_path, browser_server):
    """The server's Chromium killed mid-measurement: that measurement is a (retryable) crash, and the next one on the
    same host gets a fresh browser instead of failing as "closed" (seen: a whole recipe's GPU measurements)."""
    import threading

    import numpy as np
    import psutil

    from browser_validate.harness import MeasureRequest, measure
    from models import onnx_mlp

    model = onnx_mlp(tmp_path / "model.onnx")
    x = {"x": np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)}
    port = browser_server.rstrip("/").rsplit(":", 1)[1]
    server = next(p for p in psutil.process_iter(["cmdline"])
                  if "run-server" in (p.info["cmdline"] or []) and port in (p.info["cmdline"] or []))
    launch = {"executablePath": shutil.which("chromium"), "args": CHROMIUM_ARGS, "headless": True}

    def request(**kw):
        return MeasureRequest(runtime="ort", target="wasm", model_files=[model], inputs=x, runs=2, warmup=1,
                              timeout_s=60, host_endpoint=browser_server, host_launch=launch, **kw)

    def kill_the_servers_browsers():
        time.sleep(4)  # the page is busy-looping in "eval" by then
        for p in server.children(recursive=True):
            if "chromium" in p.name() and not any(a.startswith("--type=") for a in p.cmdline()):
                p.kill()

    killer = threading.Thread(target=kill_the_servers_browsers)
    killer.start()
    dead = measure(request(debug_hang_stage="eval"))
    killer.join()
    assert dead.status == "failed" and dead.error.startswith("browser crashed"), dead.error
    after = measure(request())
    assert after.status == "ok", after.error
