"""Browser targets: what a web app can count on in its visitors' browsers. One row per target.

A runtime says which targets it runs on (``browser_validate/runtimes/__init__.py``); the measuring page probes
the target in the browser (``probeTarget`` in ``browser_validate/runtimes/adapter.js``). Adding a target is a row
here, a case in ``probeTarget``, and the target in the rows of the runtimes that run on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    gpu: bool  # runs on the GPU (where one exists: this machine's is SwiftShader, software, correctness only)
    # Measurement defaults that differ from pipeline.recipe.Measure's (a recipe's `measure.<target>` overrides).
    measure_defaults: dict = field(default_factory=dict)


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("wasm", "WebAssembly on the CPU (SIMD; threads when the page is cross-origin isolated)", gpu=False,
           measure_defaults={"threads": [1, "cores"]}),
    # Software WebGPU here is 700-2200x slower than native (TOOLCHAIN.md): few runs, correctness first.
    Target("webgpu", "WebGPU", gpu=True, measure_defaults={"warmup": 1, "runs": 3, "timeout_s": 1200}),
    Target("webgl", "WebGL 2", gpu=True, measure_defaults={"warmup": 1, "runs": 5}),
]}
