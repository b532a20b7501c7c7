"""Conversion families and the variants they offer, described the same way for every family.

Adding a family (TF.js, TVM, ...) is adding a module under pipeline/convert/ that exposes ``variants()`` returning
``VariantSpec``s (and optionally ``prerequisites()`` returning shared intermediates), and one line in
``_FAMILY_MODULES``.
"""
from __future__ import annotations

import functools
import importlib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.fsutil import digest_files


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


@functools.lru_cache(maxsize=None)
def family_code_hash(mod_name: str) -> str:
    """Hash of a family module's source and of the modules of its package it imports at top level (e.g.
    convert/onnx.py for onnx_family): part of the build keys, so a change of our own converting code rebuilds its
    variants (imports inside functions are not seen: keep a family's helpers imported at top level)."""
    mod = importlib.import_module(mod_name)
    package = mod_name.split(".")[0] + "."
    files = {Path(mod.__file__)}
    for value in vars(mod).values():
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and name.startswith(package):
            dep = importlib.import_module(name)
            if getattr(dep, "__file__", None):
                files.add(Path(dep.__file__))
    return digest_files((f.name, f) for f in sorted(files))


def family_module(spec_or_prereq_name: str) -> str:
    """The module that defines a variant or prerequisite name."""
    for mod_name in _FAMILY_MODULES:
        mod = importlib.import_module(mod_name)
        names = [s.name for s in mod.variants()] + [p.name for p in getattr(mod, "prerequisites", lambda: [])()]
        if spec_or_prereq_name in names:
            return mod_name
    raise KeyError(spec_or_prereq_name)


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
