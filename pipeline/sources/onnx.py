"""ONNX-file sources: a file (or a file inside a package). The canonical model is the file checked, with the
recipe's input shapes and shapes inferred; the reference outputs are onnxruntime's on the file itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from pipeline.evaluate.batching import BatchAxes
from pipeline.evaluate.native import ort_outputs
from pipeline.fsutil import atomic_file
from pipeline.onnx_utils import (EXTERNAL_DATA_THRESHOLD, check_and_infer_file, load_model, model_bytes,
                                 ort_session, save_model)
from pipeline.outcome import ConversionError, conversion_step
from pipeline.sources import SourceKind


@conversion_step("check_and_infer")
def check_and_infer(src: Path, dst: Path, *, input_shapes: dict[str, list[int | str]] | None = None) -> None:
    """Load, onnx.checker, shape inference, save (single file when < 2 GB), and check it loads in onnxruntime.

    `input_shapes` (from the recipe) replace the file's declared input shapes: old exporters write -1 or '?'
    for dimensions that are really a named batch axis or fixed, which quantizers and browsers handle badly."""
    model = load_model(src, "check_and_infer")
    for inp in model.graph.input:
        if input_shapes and inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            want = input_shapes[inp.name]
            if len(dims) != len(want):
                raise ConversionError(f"check_and_infer: input {inp.name!r} of {src} has rank {len(dims)}, "
                                      f"recipe shape {want} has rank {len(want)}")
            for d, w in zip(dims, want):
                if isinstance(w, str):
                    d.dim_param = w
                else:
                    d.dim_value = w
    try:
        onnx.checker.check_model(model if model_bytes(model) < EXTERNAL_DATA_THRESHOLD else str(src))
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"check_and_infer: ONNX file {src} is invalid: {type(e).__name__}: {e}") from e
    with atomic_file(Path(dst)) as staged:
        save_model(model, staged)
        check_and_infer_file(staged)
        try:
            ort_session(staged)
        except Exception as e:  # noqa: BLE001
            raise ConversionError(f"check_and_infer: {src} does not load in onnxruntime: {type(e).__name__}: {e}") \
                from e


def to_onnx(recipe, source_file: Path, example: dict[str, np.ndarray], dst: Path) -> None:
    check_and_infer(source_file, dst, input_shapes={i.name: i.shape for i in recipe.inputs})


def outputs(recipe, source_file: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return ort_outputs(source_file, inputs, recipe.data.eval_batch, axes=BatchAxes.of(recipe))


def to_onnx_plain(recipe, source_file: Path, example: dict[str, np.ndarray], dst: Path) -> None:
    check_and_infer(source_file, dst)


SOURCE = SourceKind(kind="onnx", framework="onnxruntime", file_ref=lambda source: source, trained_file=None,
                    to_onnx=to_onnx, outputs=outputs, to_onnx_plain=to_onnx_plain)
