"""Samples are stored stacked on a leading axis ([N, ...per-sample shape]); a model takes them batched where its
own batch axis is, which need not be the first (an RNN state [layers, batch, hidden]) or may not exist (a scalar,
a fixed-size state). This is the one place that turns one into the other, both ways. Samples of different
sizes are stored padded, with their real shapes under "extent:<name>" (browser_validate.job.EXTENT): fed
cropped, in batches of equal sizes; outputs that differ in size come back padded with their extents."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from browser_validate.job import EXTENT, crop, eval_plan, split_extents, stack_padded  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class BatchAxes:
    """Where the batch lies in each input and output; None: no batch axis (one sample per call). Names not
    listed have their batch first."""

    inputs: dict[str, int | None] = field(default_factory=dict)
    outputs: dict[str, int | None] = field(default_factory=dict)
    # A stateful model (recipe data.feedback): output -> the input it becomes at the next of `steps` steps.
    feedback: dict[str, str] = field(default_factory=dict)
    steps: int | None = None

    @classmethod
    def of(cls, recipe) -> "BatchAxes":
        return cls({i.name: i.batch_axis for i in recipe.inputs}, {o.name: o.batch_axis for o in recipe.outputs},
                   dict(recipe.data.feedback), recipe.data.sequence_length)

    @property
    def leading(self) -> bool:
        """Every batch axis first: samples batch by slicing, with no reshaping."""
        return all(a == 0 for a in (*self.inputs.values(), *self.outputs.values()))


LEADING = BatchAxes()


def to_batch(stacked: np.ndarray, axis: int | None) -> np.ndarray:
    """Stacked samples [k, ...] as the model takes them: the k along `axis` (None: k must be 1, no axis)."""
    if axis is None:
        if len(stacked) != 1:
            raise ValueError(f"an input without a batch axis takes one sample at a time, got {len(stacked)}")
        return np.asarray(stacked[0])  # a 0-d array for a scalar, not a numpy scalar
    return stacked if axis == 0 else np.moveaxis(stacked, 0, axis)


def from_batch(arr: np.ndarray, axis: int | None) -> np.ndarray:
    """A model output back to stacked samples [k, ...]."""
    arr = np.asarray(arr)
    if axis is None:
        return arr[None]
    return arr if axis == 0 else np.moveaxis(arr, axis, 0)


def batches(inputs: dict[str, np.ndarray], batch: int, axes: BatchAxes = LEADING) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of up to `batch` samples each, in order, shaped as the model takes them (cropped to their real
    sizes, which a batch shares, when the samples have extents)."""
    arrays, extents = split_extents(inputs)
    n = len(next(iter(arrays.values())))
    for i, count in eval_plan(n, batch, extents):
        yield {k: to_batch(crop(v[i:i + count], extents[k][i]) if k in extents else v[i:i + count],
                           axes.inputs.get(k, 0)) for k, v in arrays.items()}


def pad_to(arr: np.ndarray, shape: list[int], pad: str | None, what: str) -> np.ndarray:
    """`arr` as a static-shape model takes it: as is when it has `shape`; zero-padded at the end of each axis up to
    it when the recipe allows (`pad` "zero", its compile_pad; the browser's twin is adapter.js runStatic)."""
    arr = np.asarray(arr)
    if list(arr.shape) == list(shape):
        return arr
    if pad == "zero" and arr.ndim == len(shape) and all(a <= b for a, b in zip(arr.shape, shape)):
        return np.pad(arr, [(0, b - a) for a, b in zip(arr.shape, shape)])
    raise ValueError(f"{what} has shape {list(arr.shape)}, the model was compiled for {list(shape)} (static shapes: the "
                     "recipe's compile_shape sets them" + (", and a smaller input is padded up to it)" if pad else ")"))


def model_inputs(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The samples without their extents (as stored: padded), for code that does not evaluate them."""
    return split_extents(inputs)[0]


def concat(chunks: list[dict[str, np.ndarray]], axes: BatchAxes = LEADING) -> dict[str, np.ndarray]:
    """Outputs of successive batches as stacked samples [N, ...] (padded, with extents, where sizes differ)."""
    out: dict[str, np.ndarray] = {}
    for k in chunks[0]:
        out.update(stack_padded([from_batch(c[k], axes.outputs.get(k, 0)) for c in chunks], k))
    return out


def run_samples(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], inputs: dict[str, np.ndarray],
                batch: int, axes: BatchAxes = LEADING) -> dict[str, np.ndarray]:
    """`run` (a model: feeds -> named outputs) over stacked samples, `batch` at a time; outputs stacked the same
    way. With feedback (a stateful model), one step at a time: after a sequence's first step, each fed-back input
    is the output it comes from at the previous step, not the data's value."""
    if not axes.feedback:
        return concat([run(b) for b in batches(inputs, batch, axes)], axes)
    chunks: list[dict[str, np.ndarray]] = []
    for i, feed in enumerate(batches(inputs, 1, axes)):
        if i % axes.steps:
            feed = {**feed, **{inp: chunks[-1][out] for out, inp in axes.feedback.items()}}
        chunks.append(run(feed))
    return concat(chunks, axes)

