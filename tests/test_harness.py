"""browser_validate: static server safety and end-to-end measurements in headless Chromium.

Uses the real Chromium and onnxruntime-web installed here; WebGPU (SwiftShader) is available on
this machine, so its absence is a failure, not a skip.
"""

from __future__ import annotations

import http.client
import os
import sys
import re
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from browser_validate.harness import MeasureRequest, close_browser, measure  # noqa: E402
from browser_validate.server import StaticServer  # noqa: E402

N_SAMPLES = 6


@pytest.fixture(scope="module", autouse=True)
def _browser():
    yield
    close_browser()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """MatMul + Add + Relu with a dynamic batch dimension."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("Add", ["h", "B"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((N_SAMPLES, 16)).astype(np.float32)}


def native(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


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


@pytest.mark.parametrize("eval_batch", [1, 4])
def test_wasm_matches_onnxruntime(tiny_model, samples, eval_batch):
    res = measure(MeasureRequest(runtime="ort", backend="wasm", model_files=[tiny_model], inputs=samples,
                                 eval_batch=eval_batch, runs=7, timeout_s=120))
    _check_ok(res, tiny_model, samples, runs=7)
    assert res.env["wasmThreads"] == 1
    assert res.peak_memory_bytes is not None and res.peak_memory_bytes > 0
    assert res.baseline_memory_bytes > 0


def test_webgpu_matches_onnxruntime(tiny_model, samples):
    res = measure(MeasureRequest(runtime="ort", backend="webgpu", model_files=[tiny_model], inputs=samples,
                                 eval_batch=4, warmup=1, runs=3, timeout_s=180))
    _check_ok(res, tiny_model, samples, runs=3)
    assert res.env["probe"]["available"] is True
    assert "vendor" in res.env["probe"]["info"]


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
    res = measure(MeasureRequest(runtime="ort", backend="wasm", model_files=[path], inputs={"ids": ids},
                                 eval_batch=2, runs=2, timeout_s=120))
    _check_ok(res, path, {"ids": ids}, runs=2)


def test_corrupt_model_fails_in_session_stage(tiny_model, samples, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    res = measure(MeasureRequest(runtime="ort", backend="wasm", model_files=[bad], inputs=samples,
                                 runs=2, timeout_s=120))
    assert res.status == "failed"
    assert res.error.startswith("session:"), res.error
    assert res.outputs is None


def test_missing_required_feature_is_unsupported(tiny_model, samples):
    res = measure(MeasureRequest(runtime="ort", backend="webgpu", model_files=[tiny_model], inputs=samples,
                                 required_features=["shader-f16"], timeout_s=120))
    assert res.status == "unsupported", res.error
    assert "shader-f16" in res.error
    assert res.session_ms == 0  # never loaded


def test_timeout_then_next_measure_works(tiny_model, samples):
    t0 = time.monotonic()
    # The page busy-loops synchronously in the eval stage (like a runaway wasm loop).
    res = measure(MeasureRequest(runtime="ort", backend="wasm", model_files=[tiny_model], inputs=samples,
                                 runs=2, timeout_s=8, debug_hang_stage="eval"))
    assert res.status == "failed"
    assert "timeout after 8s in stage eval" in res.error, res.error
    # ... and says where the time went: the stages reached, the hung one last and open-ended.
    assert re.search(r"first \d+\.\ds, eval >\d+\.\ds\)$", res.error), res.error
    assert time.monotonic() - t0 < 30

    res = measure(MeasureRequest(runtime="ort", backend="wasm", model_files=[tiny_model], inputs=samples,
                                 runs=2, timeout_s=0.05))
    assert res.status == "failed" and "timeout" in res.error, res.error

    res = measure(MeasureRequest(runtime="ort", backend="wasm", model_files=[tiny_model], inputs=samples,
                                 runs=2, timeout_s=120))
    assert res.status == "ok", res.error


def test_bad_requests_do_not_raise(tiny_model, samples):
    res = measure(MeasureRequest(runtime="nope", backend="wasm", model_files=[tiny_model], inputs=samples))
    assert res.status == "failed" and "runtime" in res.error
    res = measure(MeasureRequest(runtime="ort", backend="wasm", model_files=[tiny_model],
                                 inputs={"x": np.zeros((2, 16), np.complex64)}))
    assert res.status == "failed" and res.error.startswith("inputs:")


def test_renderer_crash_is_reported_and_recovered(tiny_model, samples):
    import threading

    import psutil

    from browser_validate import harness

    def kill_renderers():
        time.sleep(4)  # the page is busy-looping in "eval" by then
        for pid in harness._renderer_pids():
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass

    killer = threading.Thread(target=kill_renderers)
    killer.start()
    res = measure(MeasureRequest(runtime="ort", backend="wasm", model_files=[tiny_model], inputs=samples,
                                 runs=2, timeout_s=30, debug_hang_stage="eval"))
    killer.join()
    assert res.status == "failed" and res.error.startswith("browser crashed"), res.error

    harness._BROWSER.browser.close()  # the whole browser gone: next call relaunches it
    res = measure(MeasureRequest(runtime="ort", backend="wasm", model_files=[tiny_model], inputs=samples,
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


@pytest.mark.parametrize("backend", ["wasm", "webgpu"])
def test_qoe_main_thread_and_worker(tiny_model, samples, backend):
    res = measure(MeasureRequest(runtime="ort", backend=backend, model_files=[tiny_model], inputs=samples,
                                 runs=2, warmup=1, timeout_s=120, qoe_modes=["main", "worker"], qoe_duration_ms=1200))
    assert res.status == "ok", res.error
    for mode in ("main", "worker"):
        q = res.qoe[mode]
        assert "error" not in q, q
        assert q["inferences"] >= 1 and q["duration_ms"] >= 1200
        assert q["fps"] > 0 and q["dropped_frames"] >= 0 and q["longest_frame_ms"] > 0
        assert q["event_loop_lag_ms"]["median"] is not None
        assert q["input_delay_ms"]["n"] >= 1, q  # the synthetic clicks reached the page


def test_memory_views_and_network_profile(tiny_model, samples):
    # As the recipe schema hands it over: upload_kbps present but None (falls back to the download rate).
    profile = {"name": "slow", "download_kbps": 400, "upload_kbps": None, "latency_ms": 300}
    res = measure(MeasureRequest(runtime="ort", backend="webgpu", model_files=[tiny_model], inputs=samples,
                                 runs=2, warmup=1, timeout_s=120, network_profile=profile))
    assert res.status == "ok", res.error
    assert res.gpu_process_peak_bytes is not None and res.gpu_process_peak_bytes >= 0
    assert res.page_memory_bytes is None or res.page_memory_bytes > 0
    # At least one round trip of emulated latency, and far slower than the unthrottled download.
    assert "error" not in res.network_download, res.network_download
    assert res.network_download["ms"] >= 300 and res.network_download["ms"] > res.download_ms
