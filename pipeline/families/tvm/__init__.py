"""The Apache TVM family: the canonical ONNX compiled with TVM's Relax frontend for a static batch of 1 into a
wasm32 (CPU) or WebGPU module, run by @mlc-ai/web-runtime (runtime ``tvm``). The web runtime they link with is a
prerequisite built once per toolchain (``runtime_build.py``); ``compile.py`` compiles, ``schedules.py`` holds
the WebGPU schedule rules."""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.families import BuildInputs, PrerequisiteSpec, VariantSpec, register
from pipeline.families.tvm.compile import compile_onnx
from pipeline.families.tvm.runtime_build import RUNTIME_MANIFEST, build_web_runtime, headers_hash, runtime_objects, \
    tvm_version
from pipeline.onnx_utils import graph_inputs
from pipeline.outcome import ConversionError, NotApplicable


def _runtime_prereq_build(inputs: BuildInputs, out_dir: Path) -> dict:
    """The web runtime's objects, copied into this task's own output from the machine's cache (built there once):
    a task output like any other, hashed, kept in the build store and fetched by other build machines, whose
    caches do not hold this machine's paths."""
    if inputs.cache_dir is None:
        raise ConversionError("tvm_web_runtime needs BuildInputs.cache_dir (shared cache for the runtime build)")
    rt = build_web_runtime(Path(inputs.cache_dir))
    for f in [RUNTIME_MANIFEST, *(Path(o).name for o in runtime_objects(rt))]:
        shutil.copy2(rt / f, Path(out_dir) / f)
    return {"tvm": tvm_version(), "headers": headers_hash(), "files": sorted(p.name for p in Path(out_dir).iterdir())}


def static_shapes(inputs: BuildInputs) -> dict[str, list[int]]:
    """The shapes the module is compiled for: the recipe's (`compile_shape`, else a dynamic batch as 1), else the
    canonical model's with dynamic dims as 1. A recipe input with other dynamic dimensions and no compile_shape
    is not compiled at all: a module for size 1 would only fail at run time, saying nothing useful."""
    if inputs.recipe is not None:
        shapes = {}
        for i in inputs.recipe.inputs:
            shape = i.static_shape()
            if shape is None:
                dyn = [d for d in i.shape[1:] if isinstance(d, str)]
                raise NotApplicable(f"tvm: input {i.name!r} has dynamic dimension(s) {dyn} (shape {i.shape}); TVM "
                                    "compiles for static shapes: give the size to build for as "
                                    f"inputs[{i.name}].compile_shape in the recipe")
            shapes[i.name] = shape
        return shapes
    import onnx

    m = onnx.load(str(inputs.canonical_onnx), load_external_data=False)
    return {i.name: [d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim]
            for i in graph_inputs(m)}


def _variant(target: str):
    def build(inputs: BuildInputs, out_dir: Path) -> list[Path]:
        folder = inputs.prerequisites.get("tvm_web_runtime")
        if folder is None:
            raise ConversionError("prerequisite tvm_web_runtime missing from BuildInputs.prerequisites")
        pads = {i.name: i.compile_pad for i in inputs.recipe.inputs if i.compile_pad} if inputs.recipe else {}
        return compile_onnx(inputs.canonical_onnx, out_dir, target=target, runtime_dir=Path(folder),
                            input_shapes=static_shapes(inputs), input_pads=pads)

    return build


VARIANTS = [
    VariantSpec(name="tvm_wasm", runtime="tvm", targets=("wasm",), build=_variant("wasm"), native=None,
                prerequisites=("tvm_web_runtime",), required_features={"wasm": ("wasm-simd",)},
                description="TVM Relax, fp32, wasm32 CPU kernels with 128-bit SIMD (untuned), static batch 1"),
    VariantSpec(name="tvm_webgpu", runtime="tvm", targets=("webgpu",), build=_variant("webgpu"), native=None,
                prerequisites=("tvm_web_runtime",),
                description="TVM Relax, fp32, WebGPU kernels (dlight default schedules), static batch 1"),
]

PREREQUISITES = [PrerequisiteSpec(name="tvm_web_runtime", build=_runtime_prereq_build,
                                  fingerprint=lambda: {"tvm": tvm_version(), "headers": headers_hash()})]

register("tvm", VARIANTS, PREREQUISITES, module=__name__)
