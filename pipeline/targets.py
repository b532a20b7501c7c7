"""Browser targets a recipe can ask for. A target is what a web app can count on in its users' browsers;
each runtime family maps its own backends onto these names."""

TARGETS: dict[str, str] = {
    "wasm": "WebAssembly on the CPU (SIMD; threads when the page is cross-origin isolated)",
    "webgpu": "WebGPU",
    "webgl": "WebGL 2",
}
