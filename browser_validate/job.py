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
# The dtypes the page can turn into typed arrays (TYPED in runtimes/adapter.js).
SUPPORTED_DTYPES = {"float32", "float64", "float16", "int8", "uint8", "bool", "int16", "uint16",
                    "int32", "uint32", "int64", "uint64"}


def write_job(job_dir: Path, model_files: list[Path], inputs: dict[str, np.ndarray],
              batch_axes: dict[str, int | None] | None = None) -> None:
    """Model files + inputs (stacked [N, ...one sample]) as raw little-endian binaries and a manifest the page
    reads, with where each input's batch goes (`batch_axis`; null: none, one sample per call)."""
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
                              "batch_axis": (batch_axes or {}).get(name, 0)})
    manifest = {"model_files": entries, "inputs": input_entries, "num_samples": next(iter(counts.values()))}
    (job_dir / "manifest.json").write_text(json.dumps(manifest))


def decode_outputs(chunks: list[dict], batch_axes: dict[str, int | None] | None = None) -> dict[str, np.ndarray]:
    """The page's eval outputs (per batch: {name: {dtype, dims, b64}}) as stacked samples [N, ...] per name: each
    batch's output has its batch moved first (`batch_axes`; null: no batch axis, one sample), then concatenated."""
    per_name: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        for name, t in chunk.items():
            dtype = np.dtype("bool" if t["dtype"] == "bool" else t["dtype"]).newbyteorder("<")
            arr = np.frombuffer(base64.b64decode(t["b64"]), dtype=dtype).reshape(t["dims"])
            arr = arr.astype(arr.dtype.newbyteorder("="))
            axis = (batch_axes or {}).get(name, 0)
            arr = arr[None] if axis is None else np.moveaxis(arr, axis, 0)
            per_name.setdefault(name, []).append(arr)
    return {k: np.concatenate(v, axis=0) for k, v in per_name.items()}
