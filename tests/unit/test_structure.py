"""The tables every concept hangs on agree with each other, and families register through one API."""
import sys
import typing

import pytest

from browser_validate.runtimes import RUNTIMES
from pipeline import families
from pipeline.families import VariantSpec
from pipeline.objectives import OBJECTIVES
from pipeline.recipe import Recipe
from pipeline.sources import SOURCES
from pipeline.targets import TARGETS


def test_runtimes_run_on_known_targets_and_variants_on_their_runtimes():
    for name, rt in RUNTIMES.items():
        assert set(rt.targets) <= set(TARGETS), name
    specs = families.all_variants()
    assert {"fp32", "int8_qdq", "tfjs_fp32", "tvm_wasm"} <= set(specs)
    for name, spec in specs.items():
        assert spec.family and spec.targets and set(spec.targets) <= set(RUNTIMES[spec.runtime].targets), name
        assert set(spec.required_features) <= set(spec.targets), name
        assert spec.description, name
    assert list(families.families()) == ["litert", "ort", "tfjs", "tvm"]  # discovered in folder order


def test_every_source_kind_of_the_schema_has_a_row():
    members = typing.get_args(Recipe.model_fields["source"].annotation)
    kinds = {typing.get_args(m.model_fields["kind"].annotation)[0] for m in members}
    assert kinds == set(SOURCES)
    assert all(s.framework and callable(s.to_onnx) and callable(s.outputs) for s in SOURCES.values())


def test_objectives_are_the_recipe_vocabulary():
    assert list(OBJECTIVES)[:5] == ["latency", "cold_start", "size", "memory", "responsiveness"]


def _noop(inputs, out):
    return []


def test_register_validates_and_unregisters():
    with pytest.raises(ValueError, match="unknown runtime"):
        families.register("bad", [VariantSpec(name="x", runtime="nope", build=_noop)])
    with pytest.raises(ValueError, match="runs on"):
        families.register("bad", [VariantSpec(name="x", runtime="ort", targets=("webgl",), build=_noop)])
    with pytest.raises(ValueError, match="already registered by family ort"):
        families.register("bad", [VariantSpec(name="fp32", runtime="ort", build=_noop)])
    with families.registered("extra", [VariantSpec(name="extra_v", runtime="tfjs", build=_noop)]) as fam:
        spec = families.variant("extra_v")
        assert spec.family == "extra" and spec.targets == RUNTIMES["tfjs"].targets  # default: all it runs on
        assert fam.module == __name__ and families.family_of("extra_v") is fam
        assert families.code_hash("extra_v") == families.module_code_hash(__name__)
    assert "extra_v" not in families.all_variants() and "bad" not in families.families()


def test_family_code_is_part_of_build_keys(tmp_path, monkeypatch):
    """Editing any module of a family package, or a module of its top-level package it imports, changes its
    code hash (and so the build keys): an upgraded converter rebuilds its variants."""
    pkg = tmp_path / "fakepkg"
    (pkg / "fam").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("def convert():\n    return 1\n")
    (pkg / "fam" / "__init__.py").write_text("from fakepkg.fam.steps import step\n")
    (pkg / "fam" / "steps.py").write_text("from fakepkg.helper import convert\nstep = convert\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def fresh_hash():
        families.module_code_hash.cache_clear()
        for name in [m for m in sys.modules if m.startswith("fakepkg")]:
            sys.modules.pop(name)
        return families.module_code_hash("fakepkg.fam")

    first = fresh_hash()
    assert fresh_hash() == first
    (pkg / "helper.py").write_text("def convert():\n    return 2\n")
    second = fresh_hash()
    assert second != first
    (pkg / "fam" / "steps.py").write_text("from fakepkg.helper import convert\nstep = convert  # edited\n")
    assert fresh_hash() not in (first, second)
    families.module_code_hash.cache_clear()

    # The real families: each variant's key carries its family's hash.
    assert families.family_of("tvm_wasm").name == "tvm" and families.family_of("tvm_web_runtime").name == "tvm"
    assert families.code_hash("tvm_wasm") != families.code_hash("tfjs_fp32") != families.code_hash("fp32")
