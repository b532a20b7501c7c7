"""Conversion families and the variants they offer, described the same way for every family.

Adding a family (TF.js, TVM, ...) is adding a module under pipeline/convert/ that exposes ``variants()`` returning
``VariantSpec``s (and optionally ``prerequisites()`` returning shared intermediates), and one line in
``_FAMILY_MODULES``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass
class BuildInputs:
    """What a variant (or prerequisite) build may read. Families use the fields they need."""

    canonical_onnx: Path
    calibration: dict[str, np.ndarray] | None = None
    calibration_batch: int = 1
    recipe: Any = None                  # pipeline.recipe.Recipe
    source_file: Path | None = None     # the recipe's source weights / model file (e.g. a .keras file)
    prerequisites: dict[str, Path] = field(default_factory=dict)  # name -> folder that prerequisite wrote
    cache_dir: Path | None = None       # artifacts/cache: for results shared across recipes (e.g. a runtime build)


@dataclass(frozen=True)
class Prerequisite:
    """A per-recipe intermediate several variants share (e.g. a TF SavedModel), built once by its own task.
    `build(inputs, out_dir)` writes into out_dir and returns JSON-able info; `fingerprint()` adds whatever
    besides the canonical model its result depends on (e.g. a toolchain version)."""

    name: str
    build: Callable[[BuildInputs, Path], dict]
    fingerprint: Callable[[], object] = lambda: None


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
    prerequisites: tuple[str, ...] = ()  # names of Prerequisites whose folders the build reads


_FAMILY_MODULES = ["pipeline.convert.onnx_family", "pipeline.convert.tfjs", "pipeline.convert.tvm"]


def all_prerequisites() -> dict[str, Prerequisite]:
    out: dict[str, Prerequisite] = {}
    for mod_name in _FAMILY_MODULES:
        for p in getattr(importlib.import_module(mod_name), "prerequisites", lambda: [])():
            out[p.name] = p
    return out


def all_variants() -> dict[str, VariantSpec]:
    out: dict[str, VariantSpec] = {}
    for mod_name in _FAMILY_MODULES:
        for spec in importlib.import_module(mod_name).variants():
            if spec.name in out:
                raise RuntimeError(f"variant name {spec.name!r} defined twice ({spec.family}, {out[spec.name].family})")
            out[spec.name] = spec
    return out
