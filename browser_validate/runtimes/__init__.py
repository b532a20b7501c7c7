"""Browser runtimes the measuring page can load.

Adding a runtime = one entry here + ``runtimes/<name>.js`` implementing the adapter interface
(``probe``, ``load``, ``run``, ``release``; see ``ort.js``). ``static_mount`` is served by the local
server so the adapter can import the runtime's own JS/wasm from the same origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUNTIMES_DIR = Path(__file__).resolve().parent
NODE_MODULES = RUNTIMES_DIR.parent / "node_modules"


@dataclass(frozen=True)
class RuntimeInfo:
    js: str  # adapter file in this directory, served as /runtimes/<js>
    backends: tuple[str, ...]
    static_mount: tuple[str, Path] | None = None  # (URL prefix, directory)


RUNTIMES: dict[str, RuntimeInfo] = {
    "ort": RuntimeInfo(
        js="ort.js",
        backends=("wasm", "webgpu"),
        static_mount=("/ort/", NODE_MODULES / "onnxruntime-web" / "dist"),
    ),
    "tvm": RuntimeInfo(
        js="tvm.js",
        backends=("wasm", "webgpu"),
        static_mount=("/tvmjs/", NODE_MODULES / "@mlc-ai" / "web-runtime" / "lib"),
    ),
    # One mount for tfjs: its core bundle and the wasm/webgpu backend bundles (+ .wasm files) live in sibling
    # packages, all served from node_modules/@tensorflow (only dist/ files are requested).
    "tfjs": RuntimeInfo(
        js="tfjs.js",
        backends=("wasm", "webgl", "webgpu"),
        static_mount=("/tfjs/", NODE_MODULES / "@tensorflow"),
    ),
}
