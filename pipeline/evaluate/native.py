"""The native side of each pair: a model run by onnxruntime in Python (CPU, a fixed thread count), for its
outputs and for its latency beside the browser's, measured in the same build."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.evaluate.batching import LEADING, BatchAxes, batches, run_samples
from pipeline.onnx_utils import ort_session

NATIVE_RUNS = 30
NATIVE_WARMUP = 5


def ort_outputs(path: Path, inputs: dict[str, np.ndarray], batch: int, threads: int = 1,
                axes: BatchAxes = LEADING) -> dict[str, np.ndarray]:
    """The model on stacked samples, `batch` at a time; outputs stacked the same way."""
    sess = ort_session(path, threads)
    names = [o.name for o in sess.get_outputs()]
    return run_samples(lambda feed: dict(zip(names, sess.run(None, feed))), inputs, batch, axes)


def ort_latency(path: Path, sample: dict[str, np.ndarray], warmup: int, runs: int, threads: int = 1) -> dict:
    """Session creation, first inference and steady latency of one sample, natively, at `threads` threads."""
    t0 = time.perf_counter()
    sess = ort_session(path, threads)
    t1 = time.perf_counter()
    sess.run(None, sample)
    t2 = time.perf_counter()
    for _ in range(warmup):
        sess.run(None, sample)
    times = []
    for _ in range(runs):
        s = time.perf_counter()
        sess.run(None, sample)
        times.append((time.perf_counter() - s) * 1e3)
    return {"session_ms": (t1 - t0) * 1e3, "first_inference_ms": (t2 - t1) * 1e3, "latency_ms": times,
            "threads": threads}


def native_run(recipe, model: Path, inputs: dict[str, np.ndarray], labels, reference: dict[str, np.ndarray] | None,
               measured: str) -> dict:
    """The native record of one variant: its accuracy against the reference (when `reference` is given: the
    variant itself runs natively) and its latency at batch 1 and one thread."""
    from pipeline.evaluate.metrics import compare, latency_stats

    res = {"threads": 1, "measured": measured}
    if reference is not None:
        res["accuracy"] = compare(ort_outputs(model, inputs, recipe.data.eval_batch, axes=BatchAxes.of(recipe)),
                                  reference, recipe.outputs, labels, recipe.data.sequence_length,
                                  recipe.detections)
    one = next(batches({k: v[:1] for k, v in inputs.items()}, 1, BatchAxes.of(recipe)))
    lat = ort_latency(model, one, warmup=NATIVE_WARMUP, runs=NATIVE_RUNS)
    return {**res, "latency_ms": latency_stats(lat["latency_ms"]), "latency_runs": lat["latency_ms"],
            "session_ms": lat["session_ms"], "first_inference_ms": lat["first_inference_ms"]}
