"""Run one model artifact in headless Chromium and measure it.

    from browser_validate.harness import MeasureRequest, measure, close_browser
    res = measure(MeasureRequest(runtime="ort", target="wasm", model_files=[Path("m.onnx")],
                                 inputs={"x": samples}))

A fresh context/page per measurement in the process-wide Chromium (browser.py). The page (page/bench.js)
does the work asynchronously; Python waits for its completion message with a client-side deadline, so a
hung renderer becomes a timeout failure. Memory is sampled from the OS meanwhile (memory.py); the model and
inputs are served from a per-measurement job folder (job.py) that is removed however the measurement ends.
Not thread-safe: call measure() from one thread (Playwright's sync API is bound to the thread that started it).
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import psutil

from . import PAGE_DIR
from .browser import _BROWSER, CHROMIUM_ARGS, close_browser  # noqa: F401  (re-exported: callers import them from here)
from .job import decode_outputs, job_dir_prefix, remove_stale_job_dirs, write_job
from .memory import MemorySampler, baseline_memory, gpu_pids, renderer_pids
from .runtimes import RUNTIMES, RUNTIMES_DIR
from .server import get_server

DONE_MESSAGE = "[bench] done"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # ORT colours its log lines
POLL_MS = 100
# The page stages that load the model and run it once: what an app pays to have it ready.
MODEL_PHASE = ("download", "session", "first")
# The user-experience probe's window (bench.js qoeWindowMs): long enough for QOE_MIN_INFERENCES inferences at the
# measured median latency and at least QOE_MIN_WINDOW_MS (90 frames; a click every QOE_CLICK_INTERVAL_MS, so about 15
# clicks when the page answers them), at most the recipe's qoe_duration_ms. A 0.05 ms model needs no 3 s of it.
QOE_CLICK_INTERVAL_MS = 100
QOE_MIN_WINDOW_MS = 1500.0
QOE_MIN_INFERENCES = 30
# Console text that signals a WebGPU result can't be trusted even though inference "worked".
GPU_ERROR_MARKERS = ("wgsl", "validation", "gpuvalidationerror", "device lost")
# onnxruntime's native log lines carry a severity letter: [W:onnxruntime ...] is a warning, not an error.
ORT_NON_ERROR_LOG = re.compile(r"\[[VIW]:onnxruntime")


def is_console_failure(msg_type: str, text: str, target: str) -> bool:
    """A console message that makes the measurement untrustworthy: any error, and on WebGPU anything that looks
    like a validation/shader problem. onnxruntime's own warning lines arrive as console errors (e.g. "nodes were
    not assigned to the preferred execution providers"): they are kept in the log but are not failures."""
    if ORT_NON_ERROR_LOG.search(text):
        return False
    return msg_type == "error" or (target == "webgpu" and _is_gpu_error(text))


def _is_gpu_error(text: str) -> bool:
    low = text.lower()
    return any(m in low for m in GPU_ERROR_MARKERS)


@dataclass
class MeasureRequest:
    runtime: str
    target: str  # wasm | webgpu | webgl: what the visitor's browser offers
    model_files: list[Path]
    inputs: dict[str, np.ndarray]  # stacked samples [N, ...one sample]
    eval_batch: int = 1
    warmup: int = 3
    runs: int = 20
    threads: int = 1  # 0: the host's core count (navigator.hardwareConcurrency); env["threads"] says what ran
    timeout_s: float = 300.0
    required_features: list[str] = field(default_factory=list)
    # User-experience probe after timing: continuous inference in each mode ("main": on the page's main thread,
    # "worker": in a Web Worker) while frames, event-loop lag and the delay of synthetic clicks are recorded, for a
    # window sized by the measured latency (QOE_MIN_*), at most qoe_duration_ms. Empty: skipped.
    qoe_modes: list[str] = field(default_factory=list)
    qoe_duration_ms: float = 3000.0
    # {"fps": …, "input_delay_ms": …}: when the main thread meets both, the worker mode is not probed (the choice
    # between them only matters when the main thread does not stay responsive). None: every mode asked.
    qoe_enough: dict | None = None
    # Download time of the model files again under an emulated network (DevTools protocol), e.g.
    # {"name": "fast-4g", "download_kbps": 9000, "upload_kbps": 1500, "latency_ms": 60}. None: skipped.
    network_profile: dict | None = None
    # False: that download is modelled, not watched (the same files' download was watched in another measurement of
    # this variant: at another thread count the bytes and the network are the same).
    network_watch: bool = True
    # Test hook: the page busy-loops synchronously when it reaches this stage
    # (import/probe/inputs/download/session/first/eval/warmup/timing).
    debug_hang_stage: str | None = None
    # Where each input's / output's batch lies when it is not first; None: no batch axis (the model takes one
    # sample per call: eval_batch must be 1). Names not listed have their batch first.
    input_batch_axes: dict[str, int | None] = field(default_factory=dict)
    output_batch_axes: dict[str, int | None] = field(default_factory=dict)
    # A stateful model: samples are consecutive steps of sequences of `sequence_length`; after a sequence's first
    # step each input named here (output -> input) is the previous step's output (eval one sample at a time).
    feedback: dict[str, str] = field(default_factory=dict)
    sequence_length: int | None = None
    # Where the browser runs: "local" (Chromium launched here) or a Playwright browser server's ws:// endpoint on
    # another machine, launched with `host_launch` (launch options) when given. A remote browser cannot reach
    # this machine: every request of the page is routed through Playwright and answered from here.
    host_endpoint: str = "local"
    host_launch: dict | None = None
    # On a software GPU adapter (SwiftShader): "correctness" measures outputs and one timed run, no warm-up and
    # no user-experience probe (its speed says nothing of a GPU); "full" measures as asked.
    software_gpu: str = "correctness"
    software_gpu_samples: int = 8  # evaluation samples a correctness check compares


@dataclass
class MeasureResult:
    status: str  # "ok" | "failed" | "unsupported"
    error: str | None = None
    outputs: dict[str, np.ndarray] | None = None
    download_bytes: int = 0
    download_ms: float = 0.0
    session_ms: float = 0.0
    first_inference_ms: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    baseline_memory_bytes: int | None = None
    console_errors: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    qoe: dict | None = None  # per mode: fps, dropped_frames, event_loop_lag_ms, input_delay_ms, ... (or error)
    gpu_process_peak_bytes: int | None = None  # GPU process RSS peak above its baseline (WebGPU/WebGL work)
    page_memory_bytes: int | None = None  # performance.measureUserAgentSpecificMemory(), when it answers in time
    network_download: dict | None = None  # {"profile": ..., "ms": ...} under req.network_profile
    runtime_files: list[dict] = field(default_factory=list)  # [{url, sha256, bytes}] of the runtime the page loaded
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage: where a measurement's time goes
    memory_phases: dict[str, int] = field(default_factory=dict)  # renderer RSS growth per phase (MODEL_PHASE, QoE worker)

    def to_json(self) -> dict:
        """Everything but the outputs, JSON-serialisable."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "outputs"}
        return json.loads(json.dumps(d, default=str))


# --------------------------------------------------------------------------- measure

@functools.lru_cache(maxsize=1)
def _remove_stale_job_dirs_once() -> None:
    remove_stale_job_dirs()


def measure(req: MeasureRequest, on_stage: Callable[[str], None] | None = None) -> MeasureResult:
    """Measure one artifact. Never raises for model/browser problems: returns status "failed".
    `on_stage(name)` is called as the page moves through its stages (for progress reporting)."""
    try:
        return _measure(req, on_stage)
    except Exception as e:  # setup problems (missing node_modules, ...): report, don't raise
        return MeasureResult(status="failed", error=f"setup: {type(e).__name__}: {str(e)[:300]}")


def _measure(req: MeasureRequest, on_stage=None) -> MeasureResult:
    info = RUNTIMES.get(req.runtime)
    if info is None:
        return MeasureResult(status="failed", error=f"config: unknown runtime {req.runtime!r}")
    if req.target not in info.targets:
        return MeasureResult(status="unsupported",
                             error=f"config: runtime {req.runtime} does not run on target {req.target}")

    server = get_server()
    server.mount("/page/", PAGE_DIR)
    server.mount("/runtimes/", RUNTIMES_DIR)
    if info.static_mount:
        server.mount(info.static_mount[0], info.static_mount[1])

    job_id = uuid.uuid4().hex
    prefix = f"/job/{job_id}/"
    # Removed on the way out of the with-block, whatever happened in the browser (_run_page never raises
    # for browser problems, and an exception would still leave through __exit__).
    _remove_stale_job_dirs_once()
    with tempfile.TemporaryDirectory(prefix=job_dir_prefix()) as tmp:
        try:
            write_job(Path(tmp), req.model_files, req.inputs, req.input_batch_axes, req.eval_batch)
        except (OSError, ValueError) as e:
            return MeasureResult(status="failed", error=f"inputs: {e}")
        server.mount(prefix, tmp)
        try:
            with server.recording() as served:
                result = _run_page(req, server.origin, prefix, on_stage)
            result.runtime_files = runtime_files(served)
            return result
        finally:
            server.unmount(prefix)


# Served paths that are not the runtime: the measuring page itself and the job's model and inputs.
NOT_RUNTIME = ("/page/", "/job/")


def runtime_files(served: dict[str, str]) -> list[dict]:
    """The runtime's files the page loaded (adapter, runtime JS, wasm), by URL path with their content hash: a
    web app must load exactly these to run what was measured."""
    import hashlib

    out = []
    for url, file in sorted(served.items()):
        if url.startswith(NOT_RUNTIME):
            continue
        data = Path(file).read_bytes()
        out.append({"url": url, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    return out


def _run_page(req: MeasureRequest, origin: str, job_prefix: str, on_stage=None) -> MeasureResult:
    from playwright.sync_api import Error as PwError
    from playwright.sync_api import TimeoutError as PwTimeout

    deadline = time.monotonic() + req.timeout_s
    result = MeasureResult(status="failed")
    console: list[str] = []
    console_errors: list[str] = []
    stage = {"name": "launch", "crashed": False, "done": False}
    stage_log: list[tuple[str, float]] = [("launch", time.monotonic())]  # (stage, entered at): for timeouts
    context = None
    sampler = None
    hung = crashed = False
    page_renderers: set[int] = set()

    def remaining_ms() -> float:
        return max(1.0, (deadline - time.monotonic()) * 1000)

    def on_console(msg):
        text = ANSI_ESCAPE.sub("", msg.text)
        if text.startswith("[bench] stage "):
            stage["name"] = text.split()[-1]
            stage_log.append((stage["name"], time.monotonic()))
            if sampler is not None:
                sampler.enter(stage["name"])
            return
        if text == DONE_MESSAGE:
            stage["done"] = True
            return
        console.append(f"{msg.type}: {text}")
        if is_console_failure(msg.type, text, req.target):
            console_errors.append(text)

    def on_crash(_page):
        stage["crashed"] = True

    remote = req.host_endpoint != "local"
    try:
        browser = _BROWSER.get(req.host_endpoint, req.host_launch)
        before = renderer_pids() if not remote else set()
        context = browser.new_context()
        if remote:
            context.route("**/*", _answer_from(origin))
        page = context.new_page()
        page.on("console", on_console)
        page.on("pageerror", lambda exc: console_errors.append(f"pageerror: {exc}"))
        page.on("crash", on_crash)

        stage["name"] = "page"
        stage_log.append(("page", time.monotonic()))
        before_goto = renderer_pids() if not remote else set()
        page.goto(f"{origin}/page/index.html", timeout=remaining_ms(), wait_until="load")
        page.wait_for_function("() => window.__benchReady === true", timeout=remaining_ms())
        # The page's renderer: the one the cross-site navigation created (the about:blank one
        # is swapped out); fall back to everything this context added.
        if not remote:  # another machine's processes are not ours to read: its figures come from the page
            after_goto = renderer_pids()
            page_renderers = (after_goto - before_goto) or (after_goto - before) or after_goto
            result.baseline_memory_bytes = baseline_memory(page_renderers)

        cfg = {
            "runtime": req.runtime, "target": req.target, "threads": int(req.threads),
            "warmup": int(req.warmup), "runs": int(req.runs), "evalBatch": max(1, int(req.eval_batch)),
            "requiredFeatures": list(req.required_features), "jobBase": job_prefix,
            "debugHangStage": req.debug_hang_stage,
            "feedback": dict(req.feedback) or None, "sequenceLength": req.sequence_length,
            "softwareGpu": req.software_gpu, "correctnessSamples": max(1, int(req.software_gpu_samples)),
            "qoe": {"modes": list(req.qoe_modes), "durationMs": float(req.qoe_duration_ms),
                    "minMs": QOE_MIN_WINDOW_MS, "minInferences": QOE_MIN_INFERENCES,
                    "enough": {"fps": req.qoe_enough["fps"], "inputDelayMs": req.qoe_enough["input_delay_ms"]}
                    if req.qoe_enough else None} if req.qoe_modes else None,
        }
        gpu = gpu_pids() if not remote else []
        gpu_baseline = baseline_memory(gpu) if gpu else None
        if not remote:
            sampler = MemorySampler(page_renderers, gpu)
            sampler.start()
        # Completion is signalled by a console message; Python keeps its own deadline and polls with
        # page.wait_for_timeout, which the driver serves without the renderer. (page.wait_for_function
        # was tried first: measured here, it never returns when the page is stuck in a synchronous
        # loop, because its timeout needs the renderer to answer.)
        page.evaluate("(cfg) => window.startBench(cfg)", cfg)
        reported = None
        while not stage["done"]:
            if on_stage and stage["name"] != reported:
                reported = stage["name"]
                on_stage(reported)
            if stage["crashed"]:
                raise PwError("Page crashed")
            if time.monotonic() > deadline:
                raise PwTimeout(f"timeout in stage {stage['name']}")
            if stage["name"] in ("qoe-main", "qoe-worker"):
                # A user's click: blocks while the page's main thread is busy, which is the point.
                # Only after timing succeeded, so every inference is known to finish.
                page.mouse.click(8, 8)
            page.wait_for_timeout(QOE_CLICK_INTERVAL_MS if stage["name"].startswith("qoe") else POLL_MS)
        peak = sampler.stop() if sampler else None
        if sampler and gpu_baseline is not None and sampler.gpu_peak:
            result.gpu_process_peak_bytes = max(0, sampler.gpu_peak - gpu_baseline)
        if sampler:
            # What the model costs an app: RSS growth while it is downloaded, its session created and its first
            # (warm-up) inference run, above where the page stood with the evaluation data already loaded; and the
            # QoE worker's second copy of runtime + model on its own.
            result.memory_phases = {k: v for k, v in (("model_load_bytes", sampler.phase_growth(MODEL_PHASE)),
                                                      ("qoe_worker_bytes", sampler.phase_growth(("qoe-worker",))))
                                    if v is not None}
        sampler = None
        r = page.evaluate("() => window.__bench.result")
        result.page_memory_bytes = r.get("page_memory_bytes")
        if r["status"] == "ok" and req.network_profile:
            modelled = _modelled_download(req.network_profile, req.model_files)
            # Watching a bandwidth limiter for minutes tells nothing its model does not (Chrome's throttling is
            # that model): above THROTTLED_DOWNLOAD_LIMIT_MS, on a remote browser, and in a correctness check
            # (the download does not depend on the GPU), the figure is modelled; and where the caller watched it
            # already (network_watch false: the same files at another thread count).
            watch = req.network_watch and not (remote or modelled["ms"] > THROTTLED_DOWNLOAD_LIMIT_MS
                                               or r["env"].get("correctness_only"))
            stage_log.append(("network", time.monotonic()))
            result.network_download = (_download_under_profile(context, page, req.network_profile, remaining_ms())
                                       if watch else modelled)

        result.status = r["status"]
        result.error = r["error"]
        for k in ("download_bytes", "download_ms", "session_ms", "first_inference_ms", "latency_ms"):
            setattr(result, k, r[k])
        result.env = r["env"]
        result.qoe = r.get("qoe")
        if result.baseline_memory_bytes is not None and peak:
            result.peak_memory_bytes = max(0, peak - result.baseline_memory_bytes)
        if result.status == "ok":
            result.outputs = decode_outputs(r["eval_outputs"], req.output_batch_axes)
            if req.target == "webgpu" and console_errors:
                result.status = "failed"
                result.error = f"console validation error: {console_errors[0][:300]}"
    except PwTimeout:
        hung = True
        result.status = "failed"
        result.error = f"timeout after {req.timeout_s:g}s in stage {stage['name']} ({_stage_durations(stage_log)})"
    except PwError as e:
        result.status = "failed"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        crashed = stage["crashed"] or "crash" in msg.lower() or "closed" in msg.lower()
        if crashed:
            result.error = "browser crashed" + ("" if stage["crashed"] else f" ({msg[:200]})")
        else:
            result.error = f"{stage['name']}: {msg[:300]}"
    except Exception as e:  # launch failures etc.: report, never raise
        result.status = "failed"
        result.error = f"{stage['name']}: {type(e).__name__}: {str(e)[:300]}"
    finally:
        if sampler is not None:
            peak = sampler.stop()
            if result.baseline_memory_bytes is not None and peak:
                result.peak_memory_bytes = max(0, peak - result.baseline_memory_bytes)
        result.console_errors = console_errors
        result.env = {**result.env, "memory_metric": "page" if remote else "renderer_rss",
                      "memory_pids": len(page_renderers), "console": console[-50:],
                      **({"served": "routed through Playwright from the measuring machine"} if remote else {})}
        _close_context(context, page_renderers, hung=hung, endpoint=req.host_endpoint)
        if crashed:
            # A browser that died may still look connected (a server's Chromium behind a live connection): every
            # later measurement on it would fail as "closed". The next one launches (or connects) afresh.
            _BROWSER.close(req.host_endpoint)
        result.stage_seconds = stage_seconds(stage_log)
    return result


def stage_seconds(stage_log: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds spent in each stage (the last one up to now), in order; a stage entered twice adds up."""
    now = time.monotonic()
    out: dict[str, float] = {}
    for i, (name, t0) in enumerate(stage_log):
        t1 = stage_log[i + 1][1] if i + 1 < len(stage_log) else now
        out[name] = round(out.get(name, 0.0) + t1 - t0, 3)
    return out


def _stage_durations(stage_log: list[tuple[str, float]]) -> str:
    """'session 2.1s, first 61.0s, eval >1100s': where a timed-out measurement spent its time."""
    spent = list(stage_seconds(stage_log).items())
    return ", ".join(f"{name} {'>' if i == len(spent) - 1 else ''}{s:.1f}s" for i, (name, s) in enumerate(spent))


def _download_under_profile(context, page, profile: dict, timeout_ms: float) -> dict:
    """Fetch the model files again with the network throttled through the DevTools protocol: what a user on
    that connection waits before the session can even be created."""
    cdp = context.new_cdp_session(page)
    try:
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": float(profile.get("latency_ms", 0)),
            "downloadThroughput": float(profile["download_kbps"]) * 1000 / 8,
            "uploadThroughput": float(profile.get("upload_kbps") or profile["download_kbps"]) * 1000 / 8})
        page.set_default_timeout(timeout_ms)
        ms = page.evaluate("() => window.timeDownload()")
        return {"profile": profile, "ms": ms}
    except Exception as e:  # report, never fail the measurement for it
        return {"profile": profile, "error": str(e).splitlines()[0][:200]}
    finally:
        try:
            cdp.send("Network.emulateNetworkConditions",
                     {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
            cdp.detach()
        except Exception:
            pass


def _answer_from(origin: str):
    """A Playwright route handler for a remote browser: each request the page makes is fetched from this machine's
    server (`origin`) and fulfilled with its status, headers (COOP/COEP included) and body, so the page sees the
    same origin, files and headers as a local one, and nothing needs a route back to this machine."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    def handle(route):
        req = route.request
        u = urlsplit(req.url)
        if f"{u.scheme}://{u.netloc}" != origin:
            route.abort("blockedbyclient")  # nothing else exists for the measuring page
            return
        fwd = urllib.request.Request(origin + (u.path or "/") + (f"?{u.query}" if u.query else ""),
                                     data=req.post_data_buffer, method=req.method)
        try:
            with urllib.request.urlopen(fwd, timeout=120) as r:
                status, headers, body = r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            status, headers, body = e.code, dict(e.headers), e.read()
        except Exception:  # noqa: BLE001 - the server is gone: the page sees a failed request
            route.abort("failed")
            return
        route.fulfill(status=status, headers=headers, body=body)

    return handle


THROTTLED_DOWNLOAD_LIMIT_MS = 5000.0


def _modelled_download(profile: dict, files: list[Path]) -> dict:
    """A remote browser's files arrive through Playwright's connection, not a network a visitor has, so the
    download under a network profile is modelled, not timed: one round trip per file plus bytes / bandwidth."""
    size = sum(Path(f).stat().st_size for f in files)
    ms = float(profile.get("latency_ms", 0)) * len(files) + size * 8 / float(profile["download_kbps"])
    return {"profile": profile, "ms": ms, "basis": "modelled: latency per file + bytes / bandwidth"}


def _close_context(context, page_renderers: set[int], hung: bool, endpoint: str = "local") -> None:
    if context is None:
        return
    if hung:
        # A renderer stuck in a synchronous loop may not honour a polite close: end the
        # renderer processes this measurement created (by pid), then close the context.
        for pid in page_renderers:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
    try:
        context.close()
    except Exception:
        _BROWSER.close(endpoint)  # next measure() relaunches (or reconnects)
