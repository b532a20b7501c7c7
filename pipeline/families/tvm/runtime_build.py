"""TVM's web runtime (wasm_runtime, tvmjs_support, webgpu_runtime), compiled with Debian's emcc from the sources the
apache-tvm / apache-tvm-ffi wheels ship plus the headers the wheel omits, which are our own (``tvm_web/``), and
the emcc link that joins it with a model's kernels into one ``model.wasm``.

The runtime is compiled to wasm objects (not bitcode): TVM's LLVM 22 writes bitcode Debian's wasm-ld 14 cannot
read, and linking bitcode made every model link redo LTO of the 16 MB runtime. Built once per (TVM version,
headers, flags) into ``artifacts/cache`` and shared by every recipe.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.fsutil import atomic_dir, digest_files, file_lock, scratch_dir
from pipeline.outcome import ConversionError, ToolchainMissing

HEADERS_DIR = Path(__file__).resolve().parent / "tvm_web"
RUNTIME_LIBS = ("wasm_runtime", "tvmjs_support", "webgpu_runtime")
RUNTIME_MANIFEST = "runtime.json"

# -fwasm-exceptions (compile and link): TVM reports every runtime error by throwing. Without exception catching
# (emcc's default) a throw ends the module with a bare `exit(1)`; with native wasm exceptions TVM's FFI catches it
# and tvm.js raises a JavaScript Error carrying TVM's message. Upstream's Makefile does not set it.
EMCC_CFLAGS = ["-O3", "-std=c++17", "-Wno-ignored-attributes", "-fwasm-exceptions"]
# Same link flags as tvm.support.emcc.create_tvmjs_wasm (the web runtime expects these), without ASYNCIFY:
# tvm.js waits for WebGPU from JavaScript (device.sync()), never from inside a C++ call.
# Link optimisation (emcc runs binaryen's wasm-opt at -O2 and above), small CNN, measured here on 2 busy cores:
#   -O1: 0.7 s link, 6.3 MB module;  -O2: 26 s, 3.6 MB;  -O3: 65 s, 3.5 MB;  -Oz: 64 s, 3.4 MB.
# -O2 is the default: nearly the smallest download for a third of the -O3 link time. Tests may pass -O1.
DEFAULT_LINK_OPT = "-O2"
EMCC_LDFLAGS = ["-std=c++17", "-fwasm-exceptions", "--no-entry", "-s", "WASM_BIGINT=1", "-s",
                "ERROR_ON_UNDEFINED_SYMBOLS=0", "-s", "STANDALONE_WASM=1", "-s", "ALLOW_MEMORY_GROWTH=1", "-s",
                "TOTAL_MEMORY=160MB"]


def tvm_version() -> str:
    try:
        return importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError as e:
        raise ToolchainMissing("apache-tvm is not installed (pip install apache-tvm==0.27.0.post1)") from e


def headers_hash() -> str:
    """Content hash of our headers (tvm_web/**/*.h) and of the runtime's compile flags: the runtime cache key."""
    headers = [p for p in sorted(HEADERS_DIR.rglob("*.h"))
               if p.is_file() and "tests" not in p.relative_to(HEADERS_DIR).parts]
    return digest_files(((p.relative_to(HEADERS_DIR).as_posix(), p) for p in headers),
                        seed=" ".join(EMCC_CFLAGS).encode() + b"\0")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainMissing(f"python package {name} not found (pip install apache-tvm==0.27.0.post1)")
    return Path(list(spec.submodule_search_locations)[0])


def emcc() -> str:
    exe = shutil.which("emcc")
    if not exe:
        raise ToolchainMissing("emcc not found: install Emscripten (apt-get install emscripten)")
    return exe


def runtime_dir_name() -> str:
    return f"tvm-web-runtime-{tvm_version()}-{headers_hash()}"


def _runtime_complete(d: Path) -> bool:
    return (d / RUNTIME_MANIFEST).is_file() and all((d / f"{n}.o").is_file() for n in RUNTIME_LIBS)


def _stage_sources(root: Path) -> None:
    """Lay out the wheel's runtime sources the way web/Makefile expects (TVM_ROOT), then add our headers."""
    tvm_dir, ffi_dir = package_dir("tvm"), package_dir("tvm_ffi")
    for sub in ("src", "include"):
        shutil.copytree(tvm_dir / sub, root / sub)
    shutil.copytree(tvm_dir / "web" / "emcc", root / "web" / "emcc")
    ffi_root = root / "3rdparty" / "tvm-ffi"
    for sub in ("src", "include"):
        shutil.copytree(ffi_dir / sub, ffi_root / sub)
    dlpack = ffi_dir / "3rdparty" / "dlpack" / "include"
    if dlpack.is_dir():
        shutil.copytree(dlpack, ffi_root / "3rdparty" / "dlpack" / "include")
    for src in HEADERS_DIR.rglob("*.h"):
        dst = root / src.relative_to(HEADERS_DIR)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def build_web_runtime(cache_dir: Path) -> Path:
    """Compile the TVM web runtime libraries into ``cache_dir/tvm-web-runtime-<tvm>-<headers hash>/`` and return
    that folder (``wasm_runtime.o``, ``tvmjs_support.o``, ``webgpu_runtime.o``, ``runtime.json``).

    Cached: returns at once when the folder exists. Concurrent callers serialise on a file lock; the folder appears
    by an atomic rename only when complete."""
    cache_dir = Path(cache_dir).resolve()  # emcc runs inside the staging tree: absolute paths only
    final = cache_dir / runtime_dir_name()
    if _runtime_complete(final):
        return final
    exe = emcc()
    with file_lock(cache_dir / f".{final.name}.lock"):
        if _runtime_complete(final):
            return final
        t0 = time.monotonic()
        with scratch_dir(final) as src, atomic_dir(final) as out:
            _stage_sources(src)
            inc = ["-I.", "-Iinclude", "-I3rdparty/tvm-ffi/include", "-I3rdparty/tvm-ffi/3rdparty/dlpack/include",
                   "-I3rdparty/compiler-rt"]

            def compile_one(name: str) -> None:
                cmd = [exe, *inc, *EMCC_CFLAGS, "-c", "-o", str(out / f"{name}.o"), f"web/emcc/{name}.cc"]
                p = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
                if p.returncode != 0:
                    raise ConversionError(f"emcc failed on web/emcc/{name}.cc (exit {p.returncode}):\n"
                                          f"{p.stderr[-4000:]}")

            # wasm_runtime dominates; two workers keep a 2-core machine usable.
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(compile_one, RUNTIME_LIBS))
            version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.splitlines()
            manifest = {"tvm": tvm_version(), "headers": headers_hash(), "libs": [f"{n}.o" for n in RUNTIME_LIBS],
                        "emcc": version[0] if version else None, "build_seconds": round(time.monotonic() - t0, 1)}
            (out / RUNTIME_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return final


def runtime_objects(runtime_dir: Path) -> list[str]:
    runtime_dir = Path(runtime_dir)
    if not _runtime_complete(runtime_dir):
        raise ConversionError(f"no complete TVM web runtime in {runtime_dir} (run build_web_runtime first)")
    return [str(runtime_dir / f"{n}.o") for n in RUNTIME_LIBS]


def link_with_runtime(runtime_dir: Path, link_opt: str = DEFAULT_LINK_OPT):
    """export_library's fcompile: link the model's wasm objects with our runtime objects into one .wasm."""
    libs = runtime_objects(runtime_dir)
    exe = emcc()

    def fcompile(output, objects, options=None, **_):
        objects = [objects] if isinstance(objects, str) else list(objects)
        cmd = [exe, link_opt, *EMCC_LDFLAGS, "-o", output, *libs, *objects, *(options or [])]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise ConversionError(f"emcc link failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")

    # TVM's LLVM 22 emits bitcode Debian's wasm-ld 14 cannot read: ask export_library for wasm object files.
    fcompile.object_format = "o"
    return fcompile
