"""browser_validate: static server safety, the runtime table vs the adapters, and end-to-end measurements in
headless Chromium (marked ``browser``).

Uses the real Chromium and onnxruntime-web installed here; WebGPU (SwiftShader) is available on
this machine, so its absence is a failure, not a skip.
"""

from __future__ import annotations

import http.client
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper

from browser_validate import measuring_code_files
from browser_validate.harness import MeasureRequest, close_browser, measure
from browser_validate.memory import renderer_pids
from browser_validate.runtimes import RUNTIMES, RUNTIMES_DIR
from browser_validate.server import StaticServer
from models import onnx_cnn, onnx_mlp, ort_run

BV_DIR = Path(__file__).resolve().parents[2] / "browser_validate"

N_SAMPLES = 6


@pytest.fixture(scope="module", autouse=True)
def _browser():
    yield
    close_browser()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """MatMul + Add + Relu + MatMul + Add with a dynamic batch dimension."""
    return onnx_mlp(tmp_path_factory.mktemp("model") / "model.onnx")


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((N_SAMPLES, 16)).astype(np.float32)}


def native(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return ort_run(model, inputs)


# --------------------------------------------------------------------------- server

def _get(port: int, raw_path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", raw_path)  # http.client sends the path verbatim (no normalisation)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_server_headers_and_traversal_refusal(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.wasm").write_bytes(b"\0asm")
    (root / "inner.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    os.symlink(root / "inner.txt", root / "inner_link.txt")  # symlink inside the root is fine

    srv = StaticServer()
    try:
        srv.mount("/m/", root)
        ok = _get(srv.port, "/m/ok.wasm")
        assert ok.status == 200
        assert ok.getheader("Content-Type") == "application/wasm"
        assert ok.getheader("Cross-Origin-Opener-Policy") == "same-origin"
        assert ok.getheader("Cross-Origin-Embedder-Policy") == "require-corp"
        assert ok.getheader("Cross-Origin-Resource-Policy") == "same-origin"
        assert _get(srv.port, "/m/inner_link.txt").status == 200

        for bad in ["/m/../secret.txt", "/m/%2e%2e/secret.txt", "/m/..%2fsecret.txt",
                    "/m/sub/../../secret.txt", "/m/%2E%2E%2Fsecret.txt", "/m/link.txt",
                    "/m/..%5csecret.txt", "/secret.txt", "/m/", "/m/nope.txt"]:
            status = _get(srv.port, bad).status
            assert status in (400, 403, 404), (bad, status)
        assert srv.resolve("/m/link.txt") != str(tmp_path / "secret.txt")
    finally:
        srv.close()


# --------------------------------------------------------------------------- code layout

def test_measuring_code_files():
    files = measuring_code_files("ort")
    assert files == sorted(files) and files == measuring_code_files("ort")
    assert all(f.is_file() for f in files)
    names = {f.relative_to(BV_DIR).as_posix() for f in files}
    assert {"runtimes/adapter.js", "runtimes/ort.js", "runtimes/__init__.py", "harness.py", "server.py",
            "page/bench.js", "page/worker.js", "page/index.html"} <= names
    assert "runtimes/tfjs.js" not in names and "runtimes/tvm.js" not in names
    assert "runtimes/tvm.js" in {f.relative_to(BV_DIR).as_posix() for f in measuring_code_files("tvm")}
    with pytest.raises(KeyError):
        measuring_code_files("nope")


def _js_exports(text: str, name: str) -> bool:
    return bool(re.search(rf"export\s+(async\s+)?function\s+{name}\b", text)
                or re.search(rf"export\s*\{{[^}}]*\b{name}\b", text))


def test_adapters_follow_the_runtime_table_and_share_adapter_js():
    for name, info in RUNTIMES.items():
        path = RUNTIMES_DIR / info.js
        assert path.is_file(), (name, path)
        text = path.read_text()
        for fn in ("load", "run", "release", "env"):
            assert _js_exports(text, fn), f"{info.js} does not export {fn}"
        # Which targets a runtime runs on is said by RUNTIMES alone; probing is adapter.js's probeTarget.
        assert not _js_exports(text, "probe"), f"{info.js} exports probe"
        # Self-contained: runtime files and helpers come in through load({runtime}), so the loader can import an
        # adapter from an integrity-checked blob URL, where relative imports would not resolve.
        assert not re.search(r"^\s*import\s", text, re.M), f"{info.js} has a static import"
        assert not re.search(r"['\"]/(ort|tfjs|tvmjs)/", text), f"{info.js} has an absolute runtime path"
        assert set(info.targets) <= {"wasm", "webgpu", "webgl"}
    assert not (RUNTIMES_DIR / "probe.js").exists()

    sources = [p for p in BV_DIR.rglob("*") if p.is_file() and "node_modules" not in p.parts
               and p.suffix in {".js", ".mjs", ".py", ".html"}]
    typed = [p.name for p in sources if re.search(r"\bTYPED\s*=", p.read_text())]
    gpu_hooks = [p.name for p in sources if "uncapturederror" in p.read_text()]
    assert typed == ["adapter.js"] and gpu_hooks == ["adapter.js"], (typed, gpu_hooks)


# --------------------------------------------------------------------------- measurements

def _check_ok(res, model: Path, inputs, runs: int):
    assert res.status == "ok", res.error
    expected = native(model, inputs)
    assert set(res.outputs) == set(expected)
    for name, ref in expected.items():
        assert res.outputs[name].shape == ref.shape
        np.testing.assert_allclose(res.outputs[name], ref, rtol=0, atol=1e-5)
    assert len(res.latency_ms) == runs and all(t >= 0 for t in res.latency_ms)
    assert res.session_ms > 0 and res.first_inference_ms > 0
    assert res.download_bytes == model.stat().st_size
    assert res.env["crossOriginIsolated"] is True
    assert res.console_errors == []
    res.to_json()  # serialisable


@pytest.mark.browser
@pytest.mark.parametrize("eval_batch", [1, 4])
def test_wasm_matches_onnxruntime(tiny_model, samples, eval_batch):
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[tiny_model], inputs=samples,
                                 eval_batch=eval_batch, runs=7, timeout_s=120))
    _check_ok(res, tiny_model, samples, runs=7)
    assert res.env["wasmThreads"] == 1
    assert res.env["target"] == "wasm" and res.env["backend"] == "wasm"  # the page's target, ORT's EP
    assert res.peak_memory_bytes is not None and res.peak_memory_bytes > 0
    assert res.baseline_memory_bytes > 0


@pytest.mark.browser
def test_webgpu_matches_onnxruntime(tiny_model, samples):
    res = measure(MeasureRequest(runtime="ort", target="webgpu", model_files=[tiny_model], inputs=samples,
                                 eval_batch=4, warmup=1, runs=3, timeout_s=180, software_gpu="full"))
    _check_ok(res, tiny_model, samples, runs=3)
    assert res.env["probe"]["available"] is True
    assert "vendor" in res.env["probe"]["info"] and "correctness_only" not in res.env
    # On the software adapter, by default: the outputs checked and one timed run, no user-experience probe.
    assert res.env["software_gpu"] is True and res.env["evaluated_samples"] == N_SAMPLES
    # On the software adapter, by default: the outputs of the first few samples checked and one timed run, no
    # user-experience probe.
    res = measure(MeasureRequest(runtime="ort", target="webgpu", model_files=[tiny_model], inputs=samples,
                                 eval_batch=4, warmup=1, runs=3, timeout_s=180, qoe_modes=["main"],
                                 software_gpu_samples=5))
    first = {k: v[:5] for k, v in samples.items()}
    _check_ok(res, tiny_model, first, runs=1)
    assert "software GPU" in res.env["correctness_only"] and res.qoe is None
    assert res.env["evaluated_samples"] == 5
    assert {"launch", "page", "session", "first", "eval", "timing"} <= set(res.stage_seconds)
    assert all(s >= 0 for s in res.stage_seconds.values())


@pytest.mark.browser
def test_nodes_left_to_the_cpu_on_webgpu_are_named(tmp_path):
    """ORT Web's WebGPU provider has no integer-convolution kernel: a dynamically quantized conv runs partly on the
    CPU. The page reads onnxruntime's own placement log (a second, verbose session after the measurement) and the
    record names what fell back; the verbose log itself never reaches the console as an error."""
    from onnxruntime.quantization import quantize_dynamic

    from pipeline.evaluate.browser import cpu_fallback

    src = onnx_cnn(tmp_path / "cnn.onnx")
    q = tmp_path / "conv_int8.onnx"
    quantize_dynamic(str(src), str(q), op_types_to_quantize=["Conv"])
    x = {"input": np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    res = measure(MeasureRequest(runtime="ort", target="webgpu", model_files=[q], inputs=x, runs=1,
                                 timeout_s=180))
    assert res.status == "ok" and not res.console_errors, (res.error, res.console_errors)
    placed = res.env["placement"]
    assert placed["providers"]["CPUExecutionProvider"] >= 1 and placed["no_gpu_kernel"].get("ConvInteger", 0) >= 1
    assert "placement" in res.stage_seconds
    assert "no GPU kernel for" in cpu_fallback("webgpu", res.env) and "ConvInteger x" in cpu_fallback("webgpu", res.env)
    # A model the GPU provider takes whole: no placement stage at all.
    res = measure(MeasureRequest(runtime="ort", target="webgpu", model_files=[src], inputs=x, runs=1, timeout_s=180))
    assert res.status == "ok" and "placement" not in res.env and "placement" not in res.stage_seconds


@pytest.mark.browser
def test_int64_inputs(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["f", "two"], ["y"])],
        "ids", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "ids.onnx"
    onnx.save(model, path)
    ids = np.array([[1, 2, 3], [4, 5, 6], [2**40, -7, 0]], dtype=np.int64)
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[path], inputs={"ids": ids},
                                 eval_batch=2, runs=2, timeout_s=120))
    _check_ok(res, path, {"ids": ids}, runs=2)


@pytest.mark.browser
def test_corrupt_model_fails_in_session_stage(tiny_model, samples, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[bad], inputs=samples,
                                 runs=2, timeout_s=120))
    assert res.status == "failed"
    assert res.error.startswith("session:"), res.error
    assert res.outputs is None


@pytest.mark.browser
def test_missing_required_feature_is_unsupported(tiny_model, samples):
    res = measure(MeasureRequest(runtime="ort", target="webgpu", model_files=[tiny_model], inputs=samples,
                                 required_features=["shader-f16"], timeout_s=120))
    assert res.status == "unsupported", res.error
    assert "shader-f16" in res.error
    assert res.session_ms == 0  # never loaded


@pytest.mark.browser
def test_timeout_then_next_measure_works(tiny_model, samples):
    t0 = time.monotonic()
    # The page busy-loops synchronously in the eval stage (like a runaway wasm loop).
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[tiny_model], inputs=samples,
                                 runs=2, timeout_s=8, debug_hang_stage="eval"))
    assert res.status == "failed"
    assert "timeout after 8s in stage eval" in res.error, res.error
    # ... and says where the time went: the stages reached, the hung one last and open-ended.
    assert re.search(r"first \d+\.\ds, eval >\d+\.\ds\)$", res.error), res.error
    assert time.monotonic() - t0 < 30

    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[tiny_model], inputs=samples,
                                 runs=2, timeout_s=0.05))
    assert res.status == "failed" and "timeout" in res.error, res.error

    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[tiny_model], inputs=samples,
                                 runs=2, timeout_s=120))
    assert res.status == "ok", res.error


def test_bad_requests_do_not_raise(tiny_model, samples):
    res = measure(MeasureRequest(runtime="nope", target="wasm", model_files=[tiny_model], inputs=samples))
    assert res.status == "failed" and "runtime" in res.error
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[tiny_model],
                                 inputs={"x": np.zeros((2, 16), np.complex64)}))
    assert res.status == "failed" and res.error.startswith("inputs:")
    # The runtime table decides which targets a runtime runs on, before any page is opened.
    res = measure(MeasureRequest(runtime="ort", target="webgl", model_files=[tiny_model], inputs=samples))
    assert res.status == "unsupported" and "does not run on target webgl" in res.error, res.error


def measure_while_killing_renderers(model, samples, before_kill=lambda: None):
    """A measurement whose page hangs in "eval" while another thread kills its renderer processes by pid."""
    def kill_renderers():
        time.sleep(4)  # the page is busy-looping in "eval" by then
        before_kill()
        for pid in renderer_pids():
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass

    killer = threading.Thread(target=kill_renderers)
    killer.start()
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[model], inputs=samples,
                                 runs=2, timeout_s=30, debug_hang_stage="eval"))
    killer.join()
    return res


@pytest.mark.browser
def test_renderer_crash_is_reported_and_recovered(tiny_model, samples):
    from browser_validate import harness

    res = measure_while_killing_renderers(tiny_model, samples)
    assert res.status == "failed" and res.error.startswith("browser crashed"), res.error

    assert harness._BROWSER.browser is None  # a crashed browser is dropped: the next call launches afresh
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[tiny_model], inputs=samples,
                                 runs=2, timeout_s=120))
    assert res.status == "ok", res.error


def test_console_classification():
    from browser_validate.harness import is_console_failure

    ort_warning = ("\x1b[0;93m2026-11-23 11:48:13 [W:onnxruntime:, session_state.cc:1397 VerifyEachNodeIsAssignedToAnEp]"
                   " Some nodes were not assigned to the preferred execution providers")
    assert not is_console_failure("error", ort_warning, "webgpu")
    assert is_console_failure("error", "[E:onnxruntime:, ...] Non-zero status code returned", "wasm")
    assert is_console_failure("warning", "Error while parsing WGSL: f16 not enabled", "webgpu")
    assert is_console_failure("warning", "GPUValidationError: Invalid BindGroup", "webgpu")
    assert not is_console_failure("log", "validation of inputs done", "wasm")


@pytest.mark.browser
@pytest.mark.parametrize("target", ["wasm", "webgpu"])
def test_qoe_main_thread_and_worker(tiny_model, samples, target):
    res = measure(MeasureRequest(runtime="ort", target=target, model_files=[tiny_model], inputs=samples,
                                 runs=2, warmup=1, timeout_s=120, qoe_modes=["main", "worker"], qoe_duration_ms=1200,
                                 software_gpu="full"))
    assert res.status == "ok", res.error
    for mode in ("main", "worker"):
        q = res.qoe[mode]
        assert "error" not in q, q
        assert q["inferences"] >= 1 and q["duration_ms"] >= 1200
        assert q["fps"] > 0 and q["dropped_frames"] >= 0 and q["longest_frame_ms"] > 0
        assert q["event_loop_lag_ms"]["median"] is not None
        assert q["input_delay_ms"]["n"] >= 1, q  # the synthetic clicks reached the page


@pytest.mark.browser
def test_qoe_worker_only_when_the_main_thread_is_not_responsive(tiny_model, samples):
    def probe(enough):
        res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[tiny_model], inputs=samples, runs=2,
                                     warmup=1, timeout_s=120, qoe_modes=["main", "worker"], qoe_duration_ms=600,
                                     qoe_enough=enough))
        assert res.status == "ok", res.error
        return res

    easy = probe({"fps": 1, "input_delay_ms": 10_000})
    assert easy.qoe["main"]["fps"] > 0 and "worker" not in easy.qoe
    assert easy.env["qoe_skipped"].startswith("worker: the main thread stayed responsive")
    strict = probe({"fps": 10_000, "input_delay_ms": 0})  # no page meets it: both modes are probed
    assert strict.qoe["main"]["fps"] > 0 and strict.qoe["worker"]["fps"] > 0 and "qoe_skipped" not in strict.env
    # The page's verdicts are what ship_mode reads (one rule): responsive under the easy bound, not under the strict.
    from pipeline.evaluate.metrics import ship_mode

    assert easy.qoe["main"]["responsive"] is True and ship_mode(easy.qoe)["mode"] == "main"
    assert strict.qoe["main"]["responsive"] is False and strict.qoe["worker"]["responsive"] is False
    assert ship_mode(strict.qoe)["mode"] == "worker"  # the main thread fails the bound; the worker keeps the page free


@pytest.mark.browser
def test_memory_to_load_the_model_is_its_own_phase(tmp_path):
    """The memory an app pays to have a model ready (download + session + first inference) is measured apart from
    the run's evaluation data, and the QoE worker's copy apart again: both at least the weights' size."""
    side = 2048  # 16 MiB of float32 weights
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((side, side)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", side])], [w])
    model = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(model))
    x = {"x": np.random.default_rng(1).standard_normal((4, side)).astype(np.float32)}
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[model], inputs=x, runs=2, warmup=1,
                                 timeout_s=180, qoe_modes=["worker"], qoe_duration_ms=800))
    assert res.status == "ok", res.error
    weights = side * side * 4
    grown = res.memory_phases["model_load_bytes"]
    assert weights <= grown <= res.peak_memory_bytes + weights, (grown, res.peak_memory_bytes)
    assert res.memory_phases["qoe_worker_bytes"] >= weights, res.memory_phases


@pytest.mark.browser
def test_memory_views_and_network_profile(tiny_model, samples):
    # As the recipe schema hands it over: upload_kbps present but None (falls back to the download rate).
    profile = {"name": "slow", "download_kbps": 400, "upload_kbps": None, "latency_ms": 300}
    # software_gpu="full": a correctness check models the download (it does not depend on the GPU)
    res = measure(MeasureRequest(runtime="ort", target="webgpu", model_files=[tiny_model], inputs=samples,
                                 runs=2, warmup=1, timeout_s=120, network_profile=profile, software_gpu="full"))
    assert res.status == "ok", res.error
    assert res.gpu_process_peak_bytes is not None and res.gpu_process_peak_bytes >= 0
    assert res.page_memory_bytes is None or res.page_memory_bytes > 0
    # At least one round trip of emulated latency, and far slower than the unthrottled download.
    assert "error" not in res.network_download, res.network_download
    assert res.network_download["ms"] >= 300 and res.network_download["ms"] > res.download_ms
    # The model used where timing it would take long (or on a remote browser) agrees with Chrome's throttling.
    from browser_validate.harness import THROTTLED_DOWNLOAD_LIMIT_MS, _modelled_download

    modelled = _modelled_download(profile, [tiny_model])
    assert "basis" not in res.network_download and modelled["ms"] < THROTTLED_DOWNLOAD_LIMIT_MS
    assert 0.7 * modelled["ms"] <= res.network_download["ms"] <= 1.5 * modelled["ms"] + 100, (modelled, res.network_download)
    big = _modelled_download({"download_kbps": 20000, "latency_ms": 40}, [tiny_model] * 1000)
    assert big["ms"] == pytest.approx(40 * 1000 + 1000 * tiny_model.stat().st_size * 8 / 20000)


@pytest.mark.browser
def test_job_folders_removed_after_timeout_and_crash(tiny_model, samples, tmp_path, monkeypatch):
    # A temp root of our own: other builds on this machine create bv-job-* folders of their own meanwhile.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def job_dirs() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("bv-job-*"))

    seen: set[Path] = set()
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[tiny_model], inputs=samples,
                                 runs=2, timeout_s=6, debug_hang_stage="eval"),
                  on_stage=lambda stage: seen.update(job_dirs()))
    assert res.status == "failed" and "timeout" in res.error, res.error
    assert seen, "no job folder existed during the measurement"
    assert job_dirs() == set()

    seen_at_crash: set[Path] = set()
    res = measure_while_killing_renderers(tiny_model, samples, before_kill=lambda: seen_at_crash.update(job_dirs()))
    assert res.status == "failed" and res.error.startswith("browser crashed"), res.error
    assert seen_at_crash, "no job folder existed when the renderer was killed"
    assert job_dirs() == set()


@pytest.mark.browser
def test_qoe_window_follows_the_latency_and_a_repeated_download_is_modelled(tiny_model, samples):
    """A sub-millisecond model is probed for the window's floor, not the recipe's 20 s ceiling; a download already
    watched at another thread count (network_watch false) is modelled, and says so."""
    from browser_validate.harness import QOE_MIN_WINDOW_MS

    profile = {"name": "lan", "download_kbps": 100000, "latency_ms": 5}
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[tiny_model], inputs=samples, runs=3,
                                 warmup=1, timeout_s=120, qoe_modes=["main"], qoe_duration_ms=20000,
                                 network_profile=profile, network_watch=False))
    assert res.status == "ok", res.error
    q = res.qoe["main"]
    assert QOE_MIN_WINDOW_MS <= q["duration_ms"] < QOE_MIN_WINDOW_MS + 1500, q
    assert q["inferences"] >= 30 and q["input_delay_ms"]["n"] >= 3, q
    assert res.network_download["basis"].startswith("modelled"), res.network_download
