"""The native side of each pair: a model run in Python on the CPU at a fixed thread count, for its outputs and
for its latency beside the browser's, measured in the same build.

NATIVE_RUNNERS is the table of what can run a variant's own file natively (a VariantSpec's ``native`` names a
row; None: the canonical ONNX in onnxruntime instead): onnxruntime for ONNX files, the ai-edge-litert interpreter
for .tflite files. Each row gives an outputs function (stacked samples in, stacked outputs out) and a latency
function (session, first inference, steady runs of one sample)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.evaluate.batching import LEADING, BatchAxes, batches, pad_to, run_samples
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


# ---------------------------------------------------------------------------------------------- LiteRT (.tflite)

LITERT_MANIFEST = "litert_manifest.json"  # beside model.tflite (pipeline.families.litert.convert writes it)


def litert_versions() -> dict[str, str | None]:
    from importlib import metadata

    try:
        return {"ai-edge-litert": metadata.version("ai-edge-litert")}
    except metadata.PackageNotFoundError:
        return {"ai-edge-litert": None}


class LiteRtModel:
    """A .tflite file in the ai-edge-litert interpreter (its default XNNPACK delegate at `threads` threads, as
    LiteRT.js runs it in wasm), called with feeds and returning outputs keyed by the recipe's names (the manifest
    beside the file maps them onto the model's signature names)."""

    def __init__(self, path: Path, threads: int = 1, manifest: dict | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            from pipeline.outcome import ToolchainMissing

            raise ToolchainMissing(f"import ai_edge_litert: {e} (pip install ai-edge-litert==2.1.2)") from None
        path = Path(path)
        self.manifest = manifest if manifest is not None else json.loads((path.parent / LITERT_MANIFEST).read_text())
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner(self.manifest.get("signature", "serving_default"))
        details = self.runner.get_input_details()
        self.inputs = [(s["name"], s["signature_key"], details[s["signature_key"]]["dtype"], s.get("shape"), s.get("pad"))
                       for s in self.manifest["inputs"]]
        self.outputs = [(o["name"], o["signature_key"]) for o in self.manifest["outputs"]]

    @property
    def batch(self) -> int:
        """Samples per call: the static size of the first batched input's batch axis (normally 1)."""
        for s in self.manifest["inputs"]:
            if s.get("batch_axis") is not None:
                return int(s["shape"][s["batch_axis"]])
        return 1

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.runner(**{key: np.asarray(feed[name], dtype=dt) if shape is None
                             else pad_to(np.asarray(feed[name], dtype=dt), shape, pad, f"input {name}")
                             for name, key, dt, shape, pad in self.inputs})
        return {name: res[key] for name, key in self.outputs}


def litert_outputs(path: Path, inputs: dict[str, np.ndarray], batch: int, threads: int = 1,
                   axes: BatchAxes = LEADING, manifest: dict | None = None) -> dict[str, np.ndarray]:
    """The .tflite on stacked samples, as many at a time as the model was converted for (its static batch, as
    LiteRT.js in the page runs it; `batch` is ignored); outputs stacked the same way."""
    model = LiteRtModel(path, threads, manifest)
    return run_samples(model, inputs, model.batch, axes)


def litert_latency(path: Path, sample: dict[str, np.ndarray], warmup: int, runs: int, threads: int = 1) -> dict:
    """Interpreter creation (tensors allocated), first inference and steady latency of one sample."""
    t0 = time.perf_counter()
    model = LiteRtModel(path, threads)
    t1 = time.perf_counter()
    model(sample)
    t2 = time.perf_counter()
    for _ in range(warmup):
        model(sample)
    times = []
    for _ in range(runs):
        s = time.perf_counter()
        model(sample)
        times.append((time.perf_counter() - s) * 1e3)
    return {"session_ms": (t1 - t0) * 1e3, "first_inference_ms": (t2 - t1) * 1e3, "latency_ms": times,
            "threads": threads}


# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class NativeRunner:
    name: str                    # a VariantSpec's `native`
    label: str                   # what ran, as the record's `measured` says it
    outputs: Callable[..., dict[str, np.ndarray]]  # (model, stacked inputs, batch, threads=, axes=) -> stacked outputs
    latency: Callable[..., dict]                   # (model, one sample, warmup, runs, threads=) -> timings
    versions: Callable[[], dict] = dict            # what its results depend on besides the file


NATIVE_RUNNERS: dict[str, NativeRunner] = {
    "ort": NativeRunner("ort", "onnxruntime", ort_outputs, ort_latency),
    "litert": NativeRunner("litert", "the ai-edge-litert interpreter", litert_outputs, litert_latency, litert_versions),
}


def native_runner(name: str | None) -> NativeRunner | None:
    """The runner a VariantSpec's `native` names (None: none; the canonical ONNX in onnxruntime stands in)."""
    if name is None:
        return None
    try:
        return NATIVE_RUNNERS[name]
    except KeyError:
        raise ValueError(f"unknown native runner {name!r}; known: {sorted(NATIVE_RUNNERS)}") from None


def native_run(recipe, model: Path, inputs: dict[str, np.ndarray], labels, reference: dict[str, np.ndarray] | None,
               measured: str, runner: str = "ort", threads: int = 1) -> dict:
    """The native record of one variant: its accuracy against the reference (when `reference` is given: the
    variant itself runs natively) and its latency at batch 1 and `threads` threads, run by NATIVE_RUNNERS[runner]."""
    from pipeline.evaluate.metrics import compare, latency_stats

    run = NATIVE_RUNNERS[runner]
    res = {"threads": threads, "measured": measured}
    if reference is not None:
        res["accuracy"] = compare(run.outputs(model, inputs, recipe.data.eval_batch, axes=BatchAxes.of(recipe)),
                                  reference, recipe.outputs, labels, recipe.data.sequence_length,
                                  recipe.detections)
    one = next(batches({k: v[:1] for k, v in inputs.items()}, 1, BatchAxes.of(recipe)))
    lat = run.latency(model, one, warmup=NATIVE_WARMUP, runs=NATIVE_RUNS, threads=threads)
    return {**res, "latency_ms": latency_stats(lat["latency_ms"]), "latency_runs": lat["latency_ms"],
            "session_ms": lat["session_ms"], "first_inference_ms": lat["first_inference_ms"]}
