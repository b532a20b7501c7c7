"""Native reference: outputs of the source framework on every evaluation sample, and native ORT runs of variants."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.recipe import Recipe, RecipeError


def batches(inputs: dict[str, np.ndarray], batch: int):
    n = len(next(iter(inputs.values())))
    for i in range(0, n, batch):
        yield {k: v[i:i + batch] for k, v in inputs.items()}


def concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def load_pytorch(recipe: Recipe, weights: Path):
    """Build the recipe's module and load its weights strictly (a key mismatch is an error, not a warning)."""
    import torch

    model = recipe.source.module.call()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or truncated file
        raise RecipeError(f"cannot read weights {weights}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise RecipeError(f"weights {weights} do not fit {recipe.source.module.function}: {first}") from None
    return model.eval()


def pytorch_outputs(model, inputs: dict[str, np.ndarray], output_names: list[str], batch: int) -> dict[str, np.ndarray]:
    import torch

    chunks = []
    with torch.inference_mode():
        for b in batches(inputs, batch):
            out = model(*[torch.from_numpy(np.ascontiguousarray(v)) for v in b.values()])
            out = out if isinstance(out, (tuple, list)) else (out,)
            chunks.append({n: o.detach().numpy() for n, o in zip(output_names, out)})
    return concat(chunks)


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_outputs(path: Path, inputs: dict[str, np.ndarray], batch: int, threads: int = 1) -> dict[str, np.ndarray]:
    sess = ort_session(path, threads)
    names = [o.name for o in sess.get_outputs()]
    chunks = [dict(zip(names, sess.run(None, b))) for b in batches(inputs, batch)]
    return concat(chunks)


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
