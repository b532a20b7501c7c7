"""A variant measured in headless Chromium on one target, against the reference outputs of the same samples."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.evaluate.metrics import INPUT_DELAY_OK_MS, SMOOTH_FPS, compare, latency_stats, ship_mode
from pipeline.evaluate.samples import eval_subset
from pipeline.outcome import MeasurementError, Unsupported
from pipeline.targets import TARGETS

log = logging.getLogger("luigi-interface")

OUTPUTS_FILE = "outputs.npz"
# The page's stages in order, for progress reporting.
STAGES = ["inputs", "download", "session", "first", "eval", "warmup", "timing", "qoe-main", "qoe-worker"]


def thread_counts(recipe, target: str, runtime: str) -> list[str]:
    """The thread counts `runtime` is measured at on `target` (measure.<target>.threads, as task parameters: "1",
    "cores"): only the first for a runtime that runs one thread whatever it is asked."""
    from browser_validate.runtimes import RUNTIMES

    counts = [str(t) for t in recipe.measure[target].threads]
    return counts if RUNTIMES[runtime].threads else counts[:1]


def page_threads(count: str) -> int:
    """A thread count as the measuring page takes it: 0 is the host's core count (the page resolves it)."""
    return 0 if count == "cores" else int(count)


def measure_in_browser(recipe, spec, target: str, files: list[Path], inputs: dict[str, np.ndarray],
                       labels: np.ndarray | None, reference: dict[str, np.ndarray], out: Path,
                       progress: Callable[[str, int | None], None] | None = None, host=None,
                       threads: str | None = None, screen: bool = False) -> dict:
    """Run `files` (variant `spec`) on `target` and return the record its task keeps; the browser's outputs go to
    `out/outputs.npz`. Raises Unsupported when the browser cannot run it, MeasurementError when the run fails
    (a crash is retryable: it may be the machine's fault; a timeout is kept: raise measure.<target>.timeout_s).
    `host` (pipeline.hosts.BrowserHost; default: the local one) is where the browser runs; `threads` the count
    (default: the target's first); `screen`: outputs and timings only, no user-experience probe or emulated
    network (pipeline.release.screen)."""
    from browser_validate.harness import MeasureRequest, measure
    from pipeline.hosts import DEFAULT_HOSTS

    host = host or DEFAULT_HOSTS[0]

    m = recipe.measure[target]
    first = str(m.threads[0])
    threads = threads or first
    total = len(next(iter(inputs.values())))
    if m.max_eval_samples:
        idx = eval_subset(total, m.max_eval_samples, recipe.data.sequence_length)
        inputs, reference = {k: v[idx] for k, v in inputs.items()}, {k: v[idx] for k, v in reference.items()}
        labels = labels[idx] if labels is not None else None
    req = MeasureRequest(runtime=spec.runtime, target=target, model_files=list(files), inputs=inputs,
                         eval_batch=recipe.data.eval_batch, warmup=m.warmup, runs=m.runs,
                         threads=page_threads(threads),
                         timeout_s=m.timeout_s, qoe_modes=[] if screen else list(m.qoe_modes),
                         qoe_duration_ms=m.qoe_duration_ms,
                         qoe_enough={"fps": SMOOTH_FPS, "input_delay_ms": INPUT_DELAY_OK_MS},
                         network_profile=m.network_profile.model_dump() if m.network_profile and not screen else None,
                         # The throttled download is watched once per variant and target, at the first count.
                         network_watch=threads == first,
                         required_features=list(spec.required_features.get(target, ())),
                         input_batch_axes={i.name: i.batch_axis for i in recipe.inputs},
                         output_batch_axes={o.name: o.batch_axis for o in recipe.outputs},
                         feedback=dict(recipe.data.feedback), sequence_length=recipe.data.sequence_length,
                         host_endpoint=host.endpoint, host_launch=host.launch_options(), software_gpu=m.software_gpu,
                         software_gpu_samples=m.software_gpu_samples)
    log.info("%s: measuring %s on %s in Chromium on host %s (%s)", recipe.name, spec.name, target, host.name,
             host.device_class)

    def on_stage(stage: str) -> None:
        if progress:
            progress(stage, int(100 * STAGES.index(stage) / len(STAGES)) if stage in STAGES else None)

    res = measure(req, on_stage=on_stage)
    record = {**res.to_json(), "device": device(host, res.env, target)}
    fallback = cpu_fallback(target, res.env)
    if fallback:
        record["cpu_fallback"] = fallback
    if res.status == "unsupported":
        raise Unsupported(res.error or "unsupported on this browser", details={"env": record.get("env")})
    if res.status != "ok":
        raise MeasurementError(res.error or "failed", retryable="crash" in (res.error or "").lower(),
                               details={k: record.get(k) for k in ("env", "console_errors")})
    np.savez(out / OUTPUTS_FILE, **res.outputs)
    evaluated = (res.env or {}).get("evaluated_samples")
    if evaluated is not None and evaluated < len(next(iter(inputs.values()))):  # a correctness check: the first few
        reference = {k: v[:evaluated] for k, v in reference.items()}
        labels = labels[:evaluated] if labels is not None else None
    acc = compare(res.outputs, reference, recipe.outputs, labels, recipe.data.sequence_length, recipe.detections)
    if acc["samples"] < total:  # a capped evaluation is weaker evidence: the decision says so
        acc["of_samples"] = total
    cold = {"download_ms": res.download_ms, "session_ms": res.session_ms, "first_inference_ms": res.first_inference_ms}
    if res.network_download and "ms" in res.network_download:
        cold[f"download_ms_{res.network_download['profile']['name']}"] = res.network_download["ms"]
    if host.remote:  # the files came through Playwright's connection, not a network a visitor has
        cold["download_basis"] = "routed through Playwright from the measuring machine"
    return {**record, "accuracy": acc, "ship_mode": ship_mode(res.qoe), "latency": latency_stats(res.latency_ms),
            "cold_start_ms": res.download_ms + res.session_ms + res.first_inference_ms, "cold_start": cold}


def device(host, env: dict, target: str) -> dict:
    """What a measurement ran on: the host's device class and what the page found there (cores, user agent, and on
    GPU targets the adapter: WebGPU's vendor/architecture/isFallbackAdapter, WebGL's renderer) and whether that
    GPU is software (SwiftShader): then its speed says nothing of a GPU."""
    env = env or {}
    info = (env.get("probe") or {}).get("info") or None
    gpu = TARGETS[target].gpu
    # The page's verdict (bench.js isSoftwareGpu, the one rule): it also decides there on a correctness check.
    return {"class": host.device_class, "host": host.name, "remote": host.remote, "cpu": host.describe_cpu(),
            "cores": env.get("hardwareConcurrency"), "user_agent": env.get("userAgent"),
            "gpu_adapter": info if gpu else None, "software_gpu": env.get("software_gpu") if gpu and info else None}


# onnxruntime's own words when a GPU session leaves nodes to its CPU provider (its session_state.cc).
ORT_CPU_FALLBACK = "not assigned to the preferred execution providers"


def cpu_fallback(target: str, env: dict | None) -> str | None:
    """Why part of a GPU-target candidate runs on the CPU, from what the page recorded (`env`: the runtime's own
    report and its console log; None: nothing says so)."""
    env = env or {}
    if not TARGETS[target].gpu:
        return None
    if env.get("fullyAccelerated") is False:  # LiteRT.js: CompiledModel.isFullyAccelerated()
        return "LiteRT.js did not compile the whole model for the GPU: part of it runs on its wasm CPU kernels"
    placed = env.get("placement") or {}
    providers = placed.get("providers") or {}
    on_cpu = providers.get("CPUExecutionProvider")
    if on_cpu and len(providers) > 1:  # the page's placement stage: onnxruntime's own log (bench.js parsePlacement)
        missing = sorted((placed.get("no_gpu_kernel") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        why = (f"no GPU kernel for {', '.join(f'{op} x{n}' for op, n in missing)}" if missing
               else "none for want of a GPU kernel: onnxruntime keeps shape computations on the CPU")
        return (f"onnxruntime placed {on_cpu} of {sum(providers.values())} nodes on its CPU provider ({why}): data "
                "moves between GPU and CPU during inference")
    if any(ORT_CPU_FALLBACK in line for line in env.get("console", [])):
        why = f" (placement not read: {placed['error']})" if placed.get("error") else ""
        return ("onnxruntime placed some nodes on its CPU provider (VerifyEachNodeIsAssignedToAnEp): data moves "
                f"between GPU and CPU during inference{why}")
    return None
