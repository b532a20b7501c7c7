"""Evaluation and calibration samples: materialised from the recipe's loader, checked against the recipe's
inputs, stored as one .npz; evenly spaced subsets for capped evaluations; random inputs for converter checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.evaluate.batching import EXTENT, split_extents, stack_padded
from pipeline.outcome import DataError

SAMPLES_FILE = "data.npz"


def pad_ragged(recipe, inputs: dict) -> dict[str, np.ndarray]:
    """Inputs given as lists of samples of different sizes: stacked, zero padded, with their real shapes beside
    them (EXTENT). Only the recipe's dynamic dimensions may differ between samples."""
    want = {i.name: i for i in recipe.inputs}
    out: dict[str, np.ndarray] = {}
    for name, v in inputs.items():
        if not isinstance(v, (list, tuple)):
            out[name] = v
            continue
        samples = [np.asarray(x) for x in v]
        if not samples:
            raise DataError(f"input {name!r}: no samples")
        spec = want.get(name)
        dims = spec.sample_shape() if spec else None
        for i, x in enumerate(samples):
            if x.dtype != samples[0].dtype:
                raise DataError(f"input {name!r}: sample {i} has dtype {x.dtype}, sample 0 {samples[0].dtype}")
            if dims is not None and (x.ndim != len(dims) or any(
                    isinstance(d, int) and d != s for d, s in zip(dims, x.shape))):
                raise DataError(f"input {name!r}: sample {i} has shape {list(x.shape)}, recipe says {dims} per "
                                f"sample (only the named, dynamic dimensions may differ)")
        out.update(stack_padded([x[None] for x in samples], name))
    return out


def check_samples(recipe, inputs: dict[str, np.ndarray]) -> None:
    """The loader's samples, stacked [N, ...one sample], against the recipe's inputs (constants excluded)."""
    inputs, _ = split_extents(inputs)
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
    arrays, extents = split_extents(inputs)
    n = len(next(iter(arrays.values()))) if arrays else 1
    out = {}
    for spec in recipe.inputs:
        if spec.value is None:
            out[spec.name] = inputs[spec.name]
        else:
            one = np.broadcast_to(np.asarray(spec.value, dtype=spec.dtype), spec.sample_shape(fill=1))
            out[spec.name] = np.ascontiguousarray(np.broadcast_to(one, (n, *one.shape)))
    return {**out, **{EXTENT + k: e for k, e in extents.items()}}


def materialise(recipe, loader, out: Path) -> dict:
    """Call the recipe's loader (a CallableRef returning model_sources.datasets.EvalSet), check the samples, add
    the recipe's constants and store them in `out`. Returns the record its task keeps."""
    from pipeline.recipe import takes_assets

    ds = loader.call(**({"assets": recipe.asset_paths()} if takes_assets(loader) else {}))
    given = pad_ragged(recipe, ds.inputs)
    check_samples(recipe, given)
    inputs = with_constants(recipe, given)
    arrays = {f"input:{k}": v for k, v in inputs.items()}
    if ds.labels is not None:
        arrays["labels"] = np.asarray(ds.labels, dtype=np.int64)
    np.savez(out / SAMPLES_FILE, **arrays)
    n = len(next(iter(inputs.values())))
    _, extents = split_extents(inputs)
    sizes = {k: sorted({tuple(int(d) for d in row) for row in e}) for k, e in extents.items()}
    return {"samples": n, "labelled": ds.labels is not None, "ids": list(ds.ids)[:n],
            **({"sizes": {k: [list(s) for s in v[:20]] for k, v in sizes.items()},
                "distinct_sizes": {k: len(v) for k, v in sizes.items()}} if sizes else {})}


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
    """Random inputs for a converter's self-check, from [{name, dtype, shape}] (shape[0] is the batch: `batch`
    where it is dynamic); None when a non-batch dimension is dynamic."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = list(s["shape"])
        if any(d is None for d in shape[1:]):
            return None
        dt = np.dtype(s["dtype"])
        shape = [batch if not shape or shape[0] is None else shape[0]] + shape[1:]  # a static batch as it is
        # Integers 0 and 1: valid for any input that indexes something (a BERT's token type ids take only those).
        out[s["name"]] = (rng.standard_normal(shape).astype(dt) if dt.kind == "f"
                          else rng.integers(0, 2, size=shape).astype(dt))
    return out
