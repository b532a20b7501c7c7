"""Evaluation and calibration samples: materialised from the recipe's loader, checked against the recipe's
inputs, stored as one .npz; evenly spaced subsets for capped evaluations; random inputs for converter checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.outcome import DataError

SAMPLES_FILE = "data.npz"


def check_samples(recipe, inputs: dict[str, np.ndarray]) -> None:
    """The loader's samples, stacked [N, ...one sample], against the recipe's inputs (constants excluded)."""
    want = {i.name: i for i in recipe.inputs if i.value is None}
    if set(inputs) != set(want):
        raise DataError(f"loader gave inputs {sorted(inputs)}, recipe declares {sorted(want)} "
                        "(inputs with a `value` are filled in by the pipeline)")
    counts = {len(v) for v in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise DataError(f"inputs must hold the same, non-zero number of samples (got {counts})")
    steps = recipe.data.sequence_length
    if steps and next(iter(counts)) % steps:
        raise DataError(f"{next(iter(counts))} samples do not form whole sequences of data.sequence_length {steps}")
    for name, arr in inputs.items():
        spec = want[name]
        if str(arr.dtype) != spec.dtype:
            raise DataError(f"input {name!r} has dtype {arr.dtype}, recipe says {spec.dtype}")
        dims, expected = list(arr.shape[1:]), spec.sample_shape()
        if len(dims) != len(expected) or any(isinstance(s, int) and s != d for s, d in zip(expected, dims)):
            raise DataError(f"input {name!r} samples have shape {dims}, recipe says {expected} per sample "
                            f"(shape {spec.shape} without its batch axis {spec.batch_axis})")


def with_constants(recipe, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The samples plus the recipe's constant inputs, repeated for each sample, in the recipe's input order."""
    n = len(next(iter(inputs.values()))) if inputs else 1
    out = {}
    for spec in recipe.inputs:
        if spec.value is None:
            out[spec.name] = inputs[spec.name]
        else:
            one = np.broadcast_to(np.asarray(spec.value, dtype=spec.dtype), spec.sample_shape(fill=1))
            out[spec.name] = np.ascontiguousarray(np.broadcast_to(one, (n, *one.shape)))
    return out


def materialise(recipe, loader, out: Path) -> dict:
    """Call the recipe's loader (a CallableRef returning model_sources.datasets.EvalSet), check the samples, add
    the recipe's constants and store them in `out`. Returns the record its task keeps."""
    from pipeline.recipe import takes_assets

    ds = loader.call(**({"assets": recipe.asset_paths()} if takes_assets(loader) else {}))
    check_samples(recipe, ds.inputs)
    inputs = with_constants(recipe, ds.inputs)
    arrays = {f"input:{k}": v for k, v in inputs.items()}
    if ds.labels is not None:
        arrays["labels"] = np.asarray(ds.labels, dtype=np.int64)
    np.savez(out / SAMPLES_FILE, **arrays)
    n = len(next(iter(inputs.values())))
    return {"samples": n, "labelled": ds.labels is not None, "ids": list(ds.ids)[:n]}


def load(folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    with np.load(Path(folder) / SAMPLES_FILE) as z:
        inputs = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("input:")}
        labels = z["labels"] if "labels" in z.files else None
    return inputs, labels


def eval_subset(n: int, cap: int, steps: int | None = None) -> np.ndarray:
    """Evenly spaced sample indices: a capped evaluation still covers the whole set (every photo, every class),
    not just its first entries. With `steps` (samples form sequences of that many steps), whole sequences:
    at least one, as many as fit in `cap`."""
    if steps:
        seqs = eval_subset(n // steps, max(1, cap // steps))
        return (seqs[:, None] * steps + np.arange(steps)[None]).ravel()
    if cap >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(int))


def label_accuracy(recipe, outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy of the recipe's (last) logits/probabilities output against the labels."""
    acc = None
    if labels is not None:
        for o in recipe.outputs:
            if o.kind in ("logits", "probabilities"):
                acc = float((outputs[o.name].reshape(len(labels), -1).argmax(1) == labels).mean())
    return acc


def random_inputs(specs: list[dict], batch: int = 2, seed: int = 0) -> dict[str, np.ndarray] | None:
    """Random inputs for a converter's self-check, from [{name, dtype, shape}] (shape[0] is the batch);
    None when a non-batch dimension is dynamic."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = list(s["shape"])
        if any(d is None for d in shape[1:]):
            return None
        dt = np.dtype(s["dtype"])
        shape = [batch] + shape[1:]
        out[s["name"]] = (rng.standard_normal(shape).astype(dt) if dt.kind == "f"
                          else rng.integers(0, 4, size=shape).astype(dt))
    return out
