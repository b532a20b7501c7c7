"""Conversion families and the variants they offer, described the same way for every family.

Adding a family (TF.js, TVM, ...) is adding a module under pipeline/convert/ that exposes ``variants()`` returning
``VariantSpec``s, and one line in ``_FAMILY_MODULES``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass
class BuildInputs:
    """What a variant build may read. Families use the fields they need."""

    canonical_onnx: Path
    calibration: dict[str, np.ndarray] | None = None
    calibration_batch: int = 1
    recipe: Any = None


@dataclass(frozen=True)
class VariantSpec:
    family: str                # "onnx"
    name: str                  # unique across families, e.g. "int8_qdq"
    runtime: str               # browser runtime adapter that loads it (browser_validate/runtimes/<runtime>.js)
    backends: tuple[str, ...]  # backends (= targets) worth measuring
    build: Callable[[BuildInputs, Path], list[Path]]  # writes into a folder, returns files (entry first)
    needs_calibration: bool = False
    required_features: dict[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    native: str | None = "ort"  # how to run it natively for paired latency (None: no native runner)


_FAMILY_MODULES = ["pipeline.convert.onnx_family"]


def all_variants() -> dict[str, VariantSpec]:
    out: dict[str, VariantSpec] = {}
    for mod_name in _FAMILY_MODULES:
        for spec in importlib.import_module(mod_name).variants():
            if spec.name in out:
                raise RuntimeError(f"variant name {spec.name!r} defined twice ({spec.family}, {out[spec.name].family})")
            out[spec.name] = spec
    return out
