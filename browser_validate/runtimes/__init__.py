"""Browser runtimes the measuring page can load, and the targets each runs on.

Adding a runtime = ``runtimes/<name>.js`` implementing the adapter interface of ``adapter.js``
(``load({files, target, threads})``, ``run``, ``release``, ``env``) + one row in ``RUNTIMES``.

``RUNTIMES`` is the only place that says which targets (``wasm``, ``webgpu``, ``webgl``: what a web app can
count on in a visitor's browser) a runtime runs on: the harness refuses any other target before a page is
opened, so the adapters carry no list of their own. ``static_mount`` is served by the local server so the
adapter can import the runtime's own JS/wasm from the same origin, as a deployed app would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RUNTIMES_DIR = Path(__file__).resolve().parent
NODE_MODULES = RUNTIMES_DIR.parent / "node_modules"
ADAPTER_INTERFACE = RUNTIMES_DIR / "adapter.js"  # shared by every adapter and the measuring page


@dataclass(frozen=True)
class RuntimeInfo:
    js: str  # adapter file in this directory, served as /runtimes/<js>
    targets: tuple[str, ...]
    static_mount: tuple[str, Path] | None = None  # (URL prefix, directory)
    # Browser features each target of this runtime needs (the registry lists them; a loader probes them).
    # Vocabulary: wasm, wasm-simd, wasm-relaxed-simd, wasm-jspi, wasm-threads, webgpu, shader-f16, webgl2.
    features: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Whether its wasm backend runs the thread count it is given (wasm threads); False: one thread whatever is
    # asked, so it is measured at one count only.
    threads: bool = True


RUNTIMES: dict[str, RuntimeInfo] = {
    "ort": RuntimeInfo(
        js="ort.js",
        targets=("wasm", "webgpu"),
        static_mount=("/ort/", NODE_MODULES / "onnxruntime-web" / "dist"),
        # onnxruntime-web 1.30 ships SIMD builds only.
        features={"wasm": ("wasm", "wasm-simd"), "webgpu": ("webgpu",)},
    ),
    "tvm": RuntimeInfo(
        js="tvm.js",
        targets=("wasm", "webgpu"),
        static_mount=("/tvmjs/", NODE_MODULES / "@mlc-ai" / "web-runtime" / "lib"),
        features={"wasm": ("wasm",), "webgpu": ("webgpu",)},
        threads=False,  # @mlc-ai/web-runtime's wasm runs on the calling thread
    ),
    # One mount for tfjs: its core bundle and the wasm/webgpu backend bundles (+ .wasm files) live in sibling
    # packages, all served from node_modules/@tensorflow (only dist/ files are requested).
    "tfjs": RuntimeInfo(
        js="tfjs.js",
        targets=("wasm", "webgl", "webgpu"),
        static_mount=("/tfjs/", NODE_MODULES / "@tensorflow"),
        # tfjs-backend-wasm picks its SIMD / threaded build by feature detection: plain wasm suffices.
        features={"wasm": ("wasm",), "webgl": ("webgl2",), "webgpu": ("webgpu",)},
    ),
    # LiteRT.js: its ES module (core/dist), the tiny wasm-utils module it imports, and the Emscripten builds
    # (core/wasm/litert_wasm_*_internal.{js,wasm}) all come from node_modules/@litertjs. Its builds need relaxed
    # SIMD (a compat build without it is not measured); the WebGPU accelerator runs beside the same wasm.
    "litert": RuntimeInfo(
        js="litert.js",
        targets=("wasm", "webgpu"),
        static_mount=("/litert/", NODE_MODULES / "@litertjs"),
        features={"wasm": ("wasm", "wasm-simd", "wasm-relaxed-simd"),
                  "webgpu": ("webgpu", "wasm-simd", "wasm-relaxed-simd", "wasm-jspi")},  # its JSPI build (litert.js)
    ),
}


def served_file(url: str) -> Path:
    """The local file behind a runtime URL the measuring page loaded (/runtimes/…, or a runtime's static mount):
    what the registry publishes so that a web app loads exactly those bytes."""
    mounts = {"/runtimes/": RUNTIMES_DIR, **{r.static_mount[0]: r.static_mount[1] for r in RUNTIMES.values()
                                             if r.static_mount}}
    for prefix, root in mounts.items():
        if url.startswith(prefix):
            rel = url[len(prefix):]
            path = (root / rel).resolve()
            if ".." not in rel.split("/") and path.is_file():
                return path
    raise FileNotFoundError(f"no runtime file is served at {url}")
