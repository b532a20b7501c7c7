"""Conversion families: one package per browser runtime family (``ort/``, ``tfjs/``, ``tvm/``), each registering
the variants it builds, described the same way.

A family package calls :func:`register` at import with its :class:`VariantSpec`s (and the
:class:`PrerequisiteSpec`s they share, e.g. a TF SavedModel). Every package in this folder is imported by
:func:`discover`, so adding a family is adding a folder. Tests register extra families through the same call.

The code of a family (every module of its package, and the pipeline modules they import) is part of its
variants' build keys: changing a converter rebuilds exactly the variants it makes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import pkgutil
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.fsutil import digest_files
from pipeline.outcome import ConversionError


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


def own_calibration(recipe, what: str) -> None:
    """A variant that chooses what to keep float by measuring on calibration samples must never measure on the
    evaluation data, which the budget judges it by: without the recipe's own data.calibration (calibration falls back
    to the evaluation samples) it does not apply. No recipe (a library call): the caller's samples are taken."""
    from pipeline.outcome import NotApplicable

    if recipe is not None and recipe.data.calibration is None:
        raise NotApplicable(f"{recipe.path or recipe.name}: {what} chooses its float layers on calibration samples, "
                            "never the evaluation data, and the recipe has no data.calibration (its calibration "
                            "falls back to the evaluation samples): give data.calibration")


@dataclass(frozen=True)
class PrerequisiteSpec:
    """A per-recipe intermediate several variants of a family share (e.g. a TF SavedModel), built once by its
    own task. `build(inputs, out_dir)` writes into out_dir and returns JSON-able info; `fingerprint()` adds
    whatever besides the canonical model its result depends on (e.g. a toolchain version)."""

    name: str
    build: Callable[[BuildInputs, Path], dict]
    fingerprint: Callable[[], object] = lambda: None
    family: str = ""  # filled in by register()


@dataclass(frozen=True)
class VariantSpec:
    name: str                  # unique across families, e.g. "int8_qdq"
    runtime: str               # browser runtime that loads it (a row of browser_validate.runtimes.RUNTIMES)
    build: Callable[[BuildInputs, Path], list[Path]]  # writes into a folder, returns files (entry first)
    targets: tuple[str, ...] = ()  # targets worth measuring; () = every target the runtime runs on
    needs_calibration: bool = False
    required_features: dict[str, tuple[str, ...]] = field(default_factory=dict)  # target -> browser features
    description: str = ""
    native: str | None = "ort"  # how to run it natively for paired latency (None: the canonical model instead)
    prerequisites: tuple[str, ...] = ()  # names of PrerequisiteSpecs whose folders the build reads
    # What the built model says of its quantization, read from its entry file (layers kept float and why, the
    # figures measured: see kept_float()); kept in the variant's result as "quantization".
    quantization_record: Callable[[Path], dict | None] | None = None
    family: str = ""  # filled in by register()


@dataclass(frozen=True)
class Family:
    name: str
    module: str  # the module or package that registered it: its code is part of the build keys
    variants: tuple[VariantSpec, ...]
    prerequisites: tuple[PrerequisiteSpec, ...] = ()


_FAMILIES: dict[str, Family] = {}


def register(name: str, variants: list[VariantSpec], prerequisites: list[PrerequisiteSpec] = (),
             module: str | None = None) -> Family:
    """Register a family. `module` defaults to the module the first variant's build function lives in."""
    from browser_validate.runtimes import RUNTIMES
    from pipeline.targets import TARGETS

    module = module or variants[0].build.__module__
    taken = {s.name: f for f in _FAMILIES.values() if f.name != name for s in (*f.variants, *f.prerequisites)}
    specs = []
    for v in variants:
        if v.runtime not in RUNTIMES:
            raise ValueError(f"family {name}: variant {v.name} names unknown runtime {v.runtime!r}")
        runs_on = RUNTIMES[v.runtime].targets
        targets = tuple(v.targets) or tuple(runs_on)
        bad = [t for t in targets if t not in TARGETS or t not in runs_on]
        if bad:
            raise ValueError(f"family {name}: variant {v.name} asks for target(s) {bad}; {v.runtime} runs on {runs_on}")
        specs.append(dataclasses.replace(v, family=name, targets=targets))
    prereqs = [dataclasses.replace(p, family=name) for p in prerequisites]
    for n in [s.name for s in specs] + [p.name for p in prereqs]:
        if n in taken:
            raise ValueError(f"family {name}: name {n!r} already registered by family {taken[n].name}")
    fam = Family(name, module, tuple(specs), tuple(prereqs))
    _FAMILIES[name] = fam
    return fam


def unregister(name: str) -> None:
    _FAMILIES.pop(name, None)


@contextlib.contextmanager
def registered(name: str, variants: list[VariantSpec], prerequisites: list[PrerequisiteSpec] = (),
               module: str | None = None) -> Iterator[Family]:
    """A family registered for the duration of a block (tests)."""
    discover()
    fam = register(name, variants, prerequisites, module)
    try:
        yield fam
    finally:
        unregister(name)


@functools.lru_cache(maxsize=1)
def discover() -> None:
    """Import every family package in this folder (each registers itself)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")


def families() -> dict[str, Family]:
    discover()
    return dict(_FAMILIES)


def all_variants() -> dict[str, VariantSpec]:
    return {v.name: v for f in families().values() for v in f.variants}


def all_prerequisites() -> dict[str, PrerequisiteSpec]:
    return {p.name: p for f in families().values() for p in f.prerequisites}


def variant(name: str) -> VariantSpec:
    try:
        return all_variants()[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {sorted(all_variants())}") from None


def family_of(name: str) -> Family:
    """The family that registered a variant or prerequisite name."""
    for fam in families().values():
        if name in [v.name for v in fam.variants] + [p.name for p in fam.prerequisites]:
            return fam
    raise KeyError(name)


def code_hash(name: str) -> str:
    """Hash of the code behind a variant or prerequisite: its family's module(s) and the modules of the same
    top-level package they import at top level (imports inside functions are not seen: keep a family's helpers
    imported at top level)."""
    return module_code_hash(family_of(name).module)


@functools.lru_cache(maxsize=None)
def module_code_hash(mod_name: str) -> str:
    mod = importlib.import_module(mod_name)
    top = mod_name.split(".")[0] + "."
    if hasattr(mod, "__path__"):  # a package: every module in it
        root = Path(mod.__file__).parent
        names = [mod_name] + [f"{mod_name}.{'.'.join(p.relative_to(root).with_suffix('').parts)}"
                              for p in sorted(root.rglob("*.py")) if p.name != "__init__.py"]
    else:
        names = [mod_name]
    files = set()
    for name in names:
        m = importlib.import_module(name)
        files.add(Path(m.__file__))
        for value in vars(m).values():
            dep = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(dep, str) and dep.startswith(top):
                dep_mod = importlib.import_module(dep)
                if getattr(dep_mod, "__file__", None):
                    files.add(Path(dep_mod.__file__))
    return digest_files((f.name, f) for f in sorted(files))


def build_variant(spec: VariantSpec, inputs: BuildInputs, out_dir: Path) -> dict:
    """Build one variant into `out_dir`; returns the record its task keeps."""
    files = spec.build(inputs, out_dir)
    if not files:
        raise ConversionError(f"{spec.name}: the build returned no files")
    record = {"variant": spec.name, "family": spec.family, "runtime": spec.runtime,
              "files": [Path(f).name for f in files], "bytes": sum(Path(f).stat().st_size for f in files)}
    if spec.quantization_record is not None:
        record["quantization"] = spec.quantization_record(Path(files[0]))
    return record


def kept_float(quantization: dict | None, shown: int = 12) -> str | None:
    """One line for a report: the layers a mixed-precision variant kept float and why (its quantization record's
    ``float_nodes``, each with its node, op and measured ``why``; the first `shown`, the record has them all), or that
    it kept none; with how much is int8 when the record says (``int8_ops`` of ``ops``, ``int8_mac_share``)."""
    if not quantization:
        return None
    nodes = quantization.get("float_nodes") or []
    if not nodes:
        return "kept float: none (all layers int8)"
    line = "kept float: " + "; ".join(f"{n['node']} ({n.get('op', '?')}: {n['why'].removeprefix('kept float: ')})"
                                      for n in nodes[:shown])
    if len(nodes) > shown:
        line += f"; and {len(nodes) - shown} more (the variant's quantization record names each)"
    if quantization.get("int8_ops") is not None and quantization.get("ops"):
        share = quantization.get("int8_mac_share")
        line += (f" | int8: {quantization['int8_ops']} of {quantization['ops']} ops"
                 + (f" ({share:.0%} of the multiply-accumulates)" if share is not None else ""))
    return line
