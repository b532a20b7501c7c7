"""The reference: the source framework's own outputs (PyTorch, Keras, or onnxruntime for ONNX files) on every
evaluation sample. Every variant, in the browser and natively, is compared with these."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.evaluate.samples import label_accuracy
from pipeline.sources import reference_outputs

REFERENCE_FILE = "reference.npz"


def write_reference(recipe, source_file: Path, inputs: dict[str, np.ndarray], labels, out: Path) -> dict:
    t = time.perf_counter()
    framework, outs = reference_outputs(recipe, source_file, inputs)
    np.savez(out / REFERENCE_FILE, **outs)
    res = {"framework": framework, "seconds_eval": time.perf_counter() - t}
    acc = label_accuracy(recipe, outs, labels)
    if acc is not None:
        res["label_accuracy"] = acc
    return res


def load_reference(folder: Path) -> dict[str, np.ndarray]:
    with np.load(Path(folder) / REFERENCE_FILE) as z:
        return {k: z[k] for k in z.files}
