"""The files one measurement serves to the page, and the outputs it sends back.

A job folder holds the model files (what a user downloads), the inputs as raw little-endian binaries (so
the page builds typed arrays without parsing) and a manifest the page reads first. The harness creates it
in a temporary directory that is removed when the measurement ends, however it ends.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

JOB_DIR_PREFIX = "bv-job-"


def job_dir_prefix() -> str:
    """Job folders carry their process id, so a later run can remove those a killed process left behind."""
    return f"{JOB_DIR_PREFIX}{os.getpid()}-"


def remove_stale_job_dirs(tmp_root: str | Path | None = None) -> list[Path]:
    """Remove job folders whose process is gone (a kill -9 skips every cleanup). Returns what was removed."""
    removed = []
    for p in Path(tmp_root or tempfile.gettempdir()).glob(f"{JOB_DIR_PREFIX}*-*"):
        pid = p.name[len(JOB_DIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its process is alive: a concurrent measurement
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
# Samples of different sizes (a text line's width) are stored padded with zeros to the largest, with each
# sample's real shape beside them under "extent:<name>" ([N, sample ndim]); they are fed cropped to it, and
# outputs of different sizes come back the same way. Nothing else uses this prefix.
EXTENT = "extent:"


def split_extents(arrays: dict) -> tuple[dict, dict]:
    """(arrays without extents, {name: extents [N, ndim]})."""
    ext = {k[len(EXTENT):]: np.asarray(v) for k, v in arrays.items() if k.startswith(EXTENT)}
    return {k: v for k, v in arrays.items() if not k.startswith(EXTENT)}, ext


def stack_padded(parts: list[np.ndarray], name: str) -> dict[str, np.ndarray]:
    """Stacked samples [k_i, ...] of possibly different per-sample shapes as one array [N, ...largest], zero
    padded, plus "extent:<name>" with each sample's real shape when they differ."""
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) == 1:
        return {name: np.concatenate(parts)}
    if len({len(s) for s in shapes}) != 1:
        raise ValueError(f"{name}: samples of different ranks {sorted(shapes)}")
    big = tuple(np.max([s for s in shapes], axis=0))
    out = np.zeros((sum(len(p) for p in parts), *big), dtype=parts[0].dtype)
    ext, i = [], 0
    for p in parts:
        out[(slice(i, i + len(p)), *(slice(0, d) for d in p.shape[1:]))] = p
        ext += [p.shape[1:]] * len(p)
        i += len(p)
    return {name: out, EXTENT + name: np.asarray(ext, dtype=np.int64)}


def crop(stacked: np.ndarray, extent) -> np.ndarray:
    """Samples [k, ...padded] cropped to one real per-sample shape."""
    return stacked[(slice(None), *(slice(0, int(d)) for d in extent))]


def eval_plan(n: int, batch: int, extents: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """(start, count) of each evaluation batch: up to `batch` consecutive samples, which with extents must share
    every input's real shape (a batch is one tensor)."""
    out, i = [], 0
    while i < n:
        j = i + 1
        while j < n and j - i < batch and all((e[j] == e[i]).all() for e in extents.values()):
            j += 1
        out.append((i, j - i))
        i = j
    return out


# The dtypes the page can turn into typed arrays (TYPED in runtimes/adapter.js).
SUPPORTED_DTYPES = {"float32", "float64", "float16", "int8", "uint8", "bool", "int16", "uint16",
                    "int32", "uint32", "int64", "uint64"}


def write_job(job_dir: Path, model_files: list[Path], inputs: dict[str, np.ndarray],
              batch_axes: dict[str, int | None] | None = None, eval_batch: int = 1) -> None:
    """Model files + inputs (stacked [N, ...one sample]) as raw little-endian binaries and a manifest the page
    reads, with where each input's batch goes (`batch_axis`; null: none, one sample per call). Samples of
    different sizes (EXTENT) carry their real shapes, and the manifest the evaluation batches they allow."""
    inputs, extents = split_extents(inputs)
    names = [Path(f).name for f in model_files]
    if len(set(names)) != len(names):
        raise ValueError(f"model files must have distinct names: {names}")
    entries = []
    for src, name in zip(model_files, names):
        dst = job_dir / "model" / name
        dst.parent.mkdir(exist_ok=True)
        # Copy (never symlink: the server refuses links that leave the job root).
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        entries.append({"name": name, "file": f"model/{name}", "size": dst.stat().st_size})
    if not inputs:
        raise ValueError("no inputs given")
    counts = {k: np.asarray(v).shape[0] if np.asarray(v).ndim else 0 for k, v in inputs.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise ValueError(f"inputs must be stacked on axis 0 with equal, non-zero sample counts: {counts}")
    input_entries = []
    for i, (name, arr) in enumerate(inputs.items()):
        arr = np.asarray(arr)
        dtype = "bool" if arr.dtype == np.bool_ else arr.dtype.name
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"input {name}: unsupported dtype {arr.dtype}")
        fname = f"inputs/{i}.bin"
        (job_dir / "inputs").mkdir(exist_ok=True)
        np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tofile(job_dir / fname)
        input_entries.append({"name": name, "dtype": dtype, "shape": list(arr.shape), "file": fname,
                              "batch_axis": (batch_axes or {}).get(name, 0),
                              **({"extents": extents[name].tolist()} if name in extents else {})})
    n = next(iter(counts.values()))
    manifest = {"model_files": entries, "inputs": input_entries, "num_samples": n,
                **({"eval_batches": eval_plan(n, eval_batch, extents)} if extents else {})}
    (job_dir / "manifest.json").write_text(json.dumps(manifest))


def decode_outputs(chunks: list[dict], batch_axes: dict[str, int | None] | None = None) -> dict[str, np.ndarray]:
    """The page's eval outputs (per batch: {name: {dtype, dims, b64}}) as stacked samples [N, ...] per name: each
    batch's output has its batch moved first (`batch_axes`; null: no batch axis, one sample), then concatenated
    (padded, with extents, where batches differ in size)."""
    per_name: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        for name, t in chunk.items():
            dtype = np.dtype("bool" if t["dtype"] == "bool" else t["dtype"]).newbyteorder("<")
            arr = np.frombuffer(base64.b64decode(t["b64"]), dtype=dtype).reshape(t["dims"])
            arr = arr.astype(arr.dtype.newbyteorder("="))
            axis = (batch_axes or {}).get(name, 0)
            arr = arr[None] if axis is None else np.moveaxis(arr, axis, 0)
            per_name.setdefault(name, []).append(arr)
    out: dict[str, np.ndarray] = {}
    for k, v in per_name.items():
        out.update(stack_padded(v, k))
    return out
