"""Where models come from: one module per source kind (``pytorch.py``, ``keras.py``, ``onnx.py``) and the SOURCES
table. A source kind knows which file the recipe's source is, what a trainer writes, how to make the canonical
ONNX model, and how to compute the reference outputs (the source framework's own, on every evaluation sample).

Adding a source kind is its recipe schema class (``pipeline/recipe.py``), a module here, and a row in SOURCES.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.fsutil import sha256_file
from pipeline.onnx_utils import graph_inputs, graph_ops
from pipeline.outcome import ConversionError, describe

log = logging.getLogger("luigi-interface")


@dataclass(frozen=True)
class SourceKind:
    kind: str                                    # the recipe's `source.kind`
    framework: str                               # what computes the reference outputs
    file_ref: Callable[[Any], Any]               # recipe.source -> the FileRef/Weights naming its file
    trained_file: str | None                     # the file name a trainer writes (None: no trainers)
    to_onnx: Callable[[Any, Path, dict[str, np.ndarray], Path], None]      # (recipe, file, example, dst)
    outputs: Callable[[Any, Path, dict[str, np.ndarray]], dict[str, np.ndarray]]  # (recipe, file, inputs)
    # A plainer conversion to fall back on when to_onnx's result does not match the source (e.g. ONNX files:
    # without the recipe's input shapes applied). None: no fallback.
    to_onnx_plain: Callable[[Any, Path, dict[str, np.ndarray], Path], None] | None = None


# The modules import torch / TensorFlow only inside their functions: this table is cheap to import.
from pipeline.sources import keras, onnx, pytorch  # noqa: E402

SOURCES: dict[str, SourceKind] = {m.SOURCE.kind: m.SOURCE for m in (pytorch, keras, onnx)}


def file_ref(recipe):
    return SOURCES[recipe.source.kind].file_ref(recipe.source)


def locate_or_train(recipe, out: Path) -> dict:
    """The source file: trained into `out` when the recipe names a trainer, else located (a file or a file
    inside an installed package). Returns the record its task keeps."""
    ref, kind = file_ref(recipe), SOURCES[recipe.source.kind]
    if getattr(ref, "trainer", None) is not None:
        log.info("%s: training with %s", recipe.name, ref.trainer.function)
        stats = ref.trainer.call(out_path=out / kind.trained_file)
        return {"file": kind.trained_file, "sha256": sha256_file(out / kind.trained_file), "training": stats}
    path = recipe.resolve_file(ref)
    return {"path": str(path), "sha256": sha256_file(path)}


# The canonical model is checked against the source framework on this many evaluation samples (evenly spaced).
VERIFY_SAMPLES = 8


def _mismatch(recipe, kind: SourceKind, source_file: Path, dst: Path, inputs: dict[str, np.ndarray]) -> str | None:
    """Why the ONNX model at `dst` does not compute what the source does on real samples (None: it does)."""
    from pipeline.evaluate.batching import BatchAxes
    from pipeline.evaluate.native import ort_outputs
    from pipeline.evaluate.samples import eval_subset

    idx = eval_subset(len(next(iter(inputs.values()))), VERIFY_SAMPLES, recipe.data.sequence_length)
    sub = {k: v[idx] for k, v in inputs.items()}
    try:
        got = ort_outputs(dst, sub, recipe.data.eval_batch, axes=BatchAxes.of(recipe))
    except Exception as e:  # noqa: BLE001 - a model that does not run is the answer
        return f"it does not run in onnxruntime ({describe(e)})"
    want = kind.outputs(recipe, source_file, sub)
    for name, ref in want.items():
        g = np.asarray(got.get(name))
        if g.shape != np.asarray(ref).shape:
            return f"output {name} has shape {g.shape}, {kind.framework} gives {np.asarray(ref).shape}"
        scale = max(float(np.abs(ref).max()), 1.0)
        err = float(np.abs(g.astype(np.float64) - ref).max()) if ref.size else 0.0
        if not err <= 1e-3 * scale:
            return f"output {name} differs from {kind.framework} by up to {err:.3g} on the evaluation samples"
    return None


def canonical_onnx(recipe, source_file: Path, inputs: dict[str, np.ndarray], dst: Path) -> dict:
    """The model as checked ONNX with shapes inferred, named as the recipe says: the root of every variant. It must
    compute what the source computes on real evaluation samples; where a transformation (e.g. fixing input shapes)
    breaks that and a plainer one does not, the plainer one is kept and the reason recorded."""
    import onnx as onnx_lib

    kind = SOURCES[recipe.source.kind]
    from pipeline.evaluate.batching import BatchAxes, batches

    example = next(batches({k: v[:1] for k, v in inputs.items()}, 1, BatchAxes.of(recipe)))  # one sample, as fed
    notes = []
    kind.to_onnx(recipe, source_file, example, dst)
    problem = _mismatch(recipe, kind, source_file, dst, inputs)
    if problem and kind.to_onnx_plain is not None:
        kind.to_onnx_plain(recipe, source_file, example, dst)
        plain_problem = _mismatch(recipe, kind, source_file, dst, inputs)
        if plain_problem is None:
            notes.append(f"the recipe's input shapes were not applied: with them {problem}")
            problem = None
    if problem:
        raise ConversionError(f"the canonical ONNX model does not match the source: {problem}")
    m = onnx_lib.load(str(dst), load_external_data=False)
    names_in = [i.name for i in graph_inputs(m)]
    names_out = [o.name for o in m.graph.output]
    want_in, want_out = [i.name for i in recipe.inputs], [o.name for o in recipe.outputs]
    if names_in != want_in or names_out != want_out:
        raise ConversionError(f"model has inputs {names_in} / outputs {names_out}, "
                              f"recipe declares {want_in} / {want_out}")
    return {"file": dst.name, "bytes": dst.stat().st_size, "sha256": sha256_file(dst), "ops": sorted(graph_ops(m)),
            "verified_on": min(VERIFY_SAMPLES, len(next(iter(inputs.values())))), "notes": notes}


def reference_outputs(recipe, source_file: Path, inputs: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    """(framework, outputs of the source framework on every sample): what every variant is compared with."""
    kind = SOURCES[recipe.source.kind]
    return kind.framework, kind.outputs(recipe, source_file, inputs)
