"""Apache TVM family: ONNX -> Relax -> wasm32 (CPU) or WebGPU module for npm @mlc-ai/web-runtime.

Plain functions (atomic outputs, exceptions that name the cause):

* ``build_web_runtime(cache_dir)``: compiles TVM's web runtime (wasm_runtime, tvmjs_support, webgpu_runtime) with
  Debian's emcc from the sources the apache-tvm / apache-tvm-ffi wheels ship, plus the headers the wheel omits,
  which are our own (``tvm_web/``). Built once into ``cache_dir/tvm-web-runtime-<tvm>-<headers hash>/``.
* ``compile_onnx(onnx_path, out_dir, target=..., runtime_dir=..., input_shapes=...)``: Relax ONNX frontend with
  static shapes, compiled for wasm32 or WebGPU (wasm32 host, dlight default schedules), linked with the runtime into
  one ``model.wasm``, plus ``tvm_meta.json`` (names, shapes, dtypes) that browser_validate/runtimes/tvm.js reads.
* ``tvm_outputs(onnx_path, inputs)``: the same Relax module run natively (llvm), for checks.

``prerequisites()`` / ``variants()`` plug the family into pipeline.families.

Toolchain notes (../shared/TOOLCHAIN.md): target strings are gone in TVM 0.27 (dicts only); TVM's bundled LLVM 22
writes bitcode Debian's wasm-ld 14 cannot read, so the model is emitted as wasm object files; the runtime is also
compiled to wasm objects (not bitcode): linking bitcode made every model link redo LTO of the 16 MB runtime.
"""
from __future__ import annotations

import logging
import math

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.families import BuildInputs, Prerequisite, VariantSpec
from pipeline.fsutil import digest_files

HEADERS_DIR = Path(__file__).resolve().parent / "tvm_web"
RUNTIME_LIBS = ("wasm_runtime", "tvmjs_support", "webgpu_runtime")
RUNTIME_MANIFEST = "runtime.json"
META_FILE = "tvm_meta.json"
MODEL_FILE = "model.wasm"
PARAMS_FILE = "params.bin"
WASM_TRIPLE = "wasm32-unknown-unknown-wasm"

# Weights ship beside the module (params.bin + layout in tvm_meta.json), not embedded in it. Measured here once
# (2.6 MB fp32 CNN, 4 conv blocks 3->256 ch + fc 1000, 1x3x64x64, wasm, Chromium 156, link -O2, 2 loaded cores):
#   embedded : model.wasm 6.28 MB                      = 6.29 MB; cold start (session + first run) 341 / 352 ms
#   separate : model.wasm 3.68 MB + params.bin 2.58 MB = 6.26 MB; cold start 196 / 326 ms
# Same download and run time (71-97 ms median for both). Separate wins on the rest: the code module no longer
# changes with the weights (a web app caches it across model versions; registry files dedupe), the browser
# compiles a smaller wasm, embedded constants live twice in memory (wasm data segment + VM constant pool), and
# weights stay loadable by other tools. Cold start was no worse (better in both paired runs, noisy).
_WEIGHTS_DECISION = "separate"

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
EMCC_LDFLAGS = ["-std=c++17", "-fwasm-exceptions", "--no-entry", "-s", "WASM_BIGINT=1", "-s", "ERROR_ON_UNDEFINED_SYMBOLS=0",
                "-s", "STANDALONE_WASM=1", "-s", "ALLOW_MEMORY_GROWTH=1", "-s", "TOTAL_MEMORY=160MB"]


log = logging.getLogger(__name__)

class TVMError(RuntimeError):
    """A TVM build step failed; the message names the step and the cause."""


class ToolchainMissing(TVMError):
    """emcc (or the apache-tvm wheel) is not installed."""


class UnsupportedOpError(TVMError):
    """The Relax ONNX frontend has no converter for some op(s) of the model."""

    def __init__(self, ops: list[str], model: Path | str = ""):
        self.ops = sorted(set(ops))
        super().__init__(f"TVM Relax ONNX frontend lacks op(s) {', '.join(self.ops)}"
                         + (f" (model {model})" if model else ""))


# ------------------------------------------------------------------------------------------------ versions

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


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainMissing(f"python package {name} not found (pip install apache-tvm==0.27.0.post1)")
    return Path(list(spec.submodule_search_locations)[0])


def _emcc() -> str:
    emcc = shutil.which("emcc")
    if not emcc:
        raise ToolchainMissing("emcc not found: install Emscripten (apt-get install emscripten)")
    return emcc


# ------------------------------------------------------------------------------------------------ runtime

@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def runtime_dir_name() -> str:
    return f"tvm-web-runtime-{tvm_version()}-{headers_hash()}"


def _runtime_complete(d: Path) -> bool:
    return (d / RUNTIME_MANIFEST).is_file() and all((d / f"{n}.o").is_file() for n in RUNTIME_LIBS)


def _stage_sources(root: Path) -> None:
    """Lay out the wheel's runtime sources the way web/Makefile expects (TVM_ROOT), then add our headers."""
    tvm_dir, ffi_dir = _package_dir("tvm"), _package_dir("tvm_ffi")
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
    emcc = _emcc()
    with _file_lock(cache_dir / f".{final.name}.lock"):
        if _runtime_complete(final):
            return final
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{final.name}.tmp-"))
        try:
            src = tmp / "src"
            _stage_sources(src)
            out = tmp / "out"
            out.mkdir()
            inc = ["-I.", "-Iinclude", "-I3rdparty/tvm-ffi/include", "-I3rdparty/tvm-ffi/3rdparty/dlpack/include",
                   "-I3rdparty/compiler-rt"]

            def compile_one(name: str) -> None:
                cmd = [emcc, *inc, *EMCC_CFLAGS, "-c", "-o", str(out / f"{name}.o"), f"web/emcc/{name}.cc"]
                p = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
                if p.returncode != 0:
                    raise TVMError(f"emcc failed on web/emcc/{name}.cc (exit {p.returncode}):\n{p.stderr[-4000:]}")

            # wasm_runtime dominates; two workers keep a 2-core machine usable.
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(compile_one, RUNTIME_LIBS))
            emcc_version = subprocess.run([emcc, "--version"], capture_output=True, text=True).stdout.splitlines()
            manifest = {"tvm": tvm_version(), "headers": headers_hash(), "libs": [f"{n}.o" for n in RUNTIME_LIBS],
                        "emcc": emcc_version[0] if emcc_version else None,
                        "build_seconds": round(time.monotonic() - t0, 1)}
            (out / RUNTIME_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if final.exists():  # an incomplete leftover (e.g. older layout): replace it
                shutil.rmtree(final)
            os.rename(out, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _runtime_objects(runtime_dir: Path) -> list[str]:
    runtime_dir = Path(runtime_dir)
    if not _runtime_complete(runtime_dir):
        raise TVMError(f"no complete TVM web runtime in {runtime_dir} (run build_web_runtime first)")
    return [str(runtime_dir / f"{n}.o") for n in RUNTIME_LIBS]


# ------------------------------------------------------------------------------------------------ compile

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64", 12: "uint32", 13: "uint64"}


def _graph_io(model) -> tuple[list[dict], list[dict]]:
    inits = {i.name for i in model.graph.initializer}

    def spec(vi):
        t = vi.type.tensor_type
        return {"name": vi.name, "dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type))}

    return [spec(i) for i in model.graph.input if i.name not in inits], [spec(o) for o in model.graph.output]


def unsupported_ops(model) -> list[str]:
    """ONNX op types (main graph and subgraphs) the Relax frontend has no converter for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map()) | {"Constant", "If"}
    seen: set[str] = set()

    def walk(graph):
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                seen.add(f"{node.domain}.{node.op_type}")
            elif node.op_type not in known:
                seen.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return sorted(seen)


def _fold_static_shapes(model, input_shapes: dict[str, list[int]]):
    """The module is compiled for static shapes; with them fixed, onnxsim folds the Shape -> Concat -> Reshape
    chains exporters emit for a dynamic batch, which the Relax frontend cannot import ("Reshape requires the
    input new shape to be Shape")."""
    import onnxsim

    try:
        folded, ok = onnxsim.simplify(model, overwrite_input_shapes={k: list(v) for k, v in input_shapes.items()})
    except Exception as e:  # noqa: BLE001  (keep the original graph; the frontend gives its own error)
        log.warning("tvm: constant folding with static shapes failed (%s); importing the graph as is", e)
        return model
    return folded if ok else model


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _with_identifier_names(model):
    """A copy of the model whose tensor names are all identifiers, and the renaming {old: new}. TVM's WebGPU
    codegen writes weight names into WGSL as they are: tf2onnx's "fashion_keras_1/conv2_1/.../ReadVariableOp_0"
    made every shader of the Keras demo model invalid. Graph input/output order is kept, so results still map
    to the original names positionally."""
    import onnx

    names: list[str] = []

    def collect(graph):
        names.extend(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        names.extend(i.name for i in graph.initializer)
        for node in graph.node:
            names.extend((*node.input, *node.output))
            for attr in node.attribute:
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    collect(g)

    collect(model.graph)
    used = {n for n in names if _IDENTIFIER.match(n)}
    renamed: dict[str, str] = {}
    for n in names:
        if n and n not in used and n not in renamed:
            base = re.sub(r"\W", "_", n)
            base = base if _IDENTIFIER.match(base) else f"t_{base}"
            new, i = base, 1
            while new in used:
                new, i = f"{base}_{i}", i + 1
            used.add(new)
            renamed[n] = new
    if not renamed:
        return model, {}
    safe = onnx.ModelProto()
    safe.CopyFrom(model)

    def rename(graph):
        for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
            v.name = renamed.get(v.name, v.name)
        for node in graph.node:
            node.input[:] = [renamed.get(x, x) for x in node.input]
            node.output[:] = [renamed.get(x, x) for x in node.output]
            for attr in node.attribute:
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    rename(g)

    rename(safe.graph)
    return safe, renamed


def _import_relax(onnx_path: Path, input_shapes: dict[str, list[int]], keep_params: bool):
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    missing = unsupported_ops(model)
    if missing:
        raise UnsupportedOpError(missing, onnx_path)
    inputs, _ = _graph_io(model)
    for spec in inputs:
        if spec["name"] not in input_shapes:
            raise TVMError(f"no static shape given for input {spec['name']!r} of {onnx_path}")
        if any((not isinstance(d, int)) or d <= 0 for d in input_shapes[spec["name"]]):
            raise TVMError(f"input {spec['name']!r}: static positive dims required, got {input_shapes[spec['name']]}")
    model = _fold_static_shapes(model, input_shapes)
    safe_model, renamed = _with_identifier_names(model)
    try:
        mod = from_onnx(safe_model, shape_dict={renamed.get(k, k): list(v) for k, v in input_shapes.items()},
                        dtype_dict={renamed.get(s["name"], s["name"]): s["dtype"] for s in inputs},
                        keep_params_in_input=keep_params)
    except tvm.error.OpNotImplemented as e:
        raise UnsupportedOpError([str(e).rsplit(":", 1)[-1].strip()], onnx_path) from e
    except Exception as e:
        raise TVMError(f"Relax ONNX frontend failed on {onnx_path}: {type(e).__name__}: {str(e)[:500]}") from e
    params = []
    if keep_params:
        from tvm import relax

        mod, detached = relax.frontend.detach_params(mod)
        params = [np.asarray(p.numpy()) for p in detached.get("main", [])]
        mod, params = _bind_scalar_params(mod, params)
    return model, mod, params


def _bind_scalar_params(mod, params: list[np.ndarray]):
    """Fold rank-0 weights (e.g. Clip's min/max in ReLU6) back into the module as constants. Passed from
    JavaScript as separate tensors they reached the kernels with the wrong rank (MobileNet V2 failed in Chromium
    with "Mismatched min_val_cast.ndim ... expected 0"); as constants they also fold away."""
    import tvm
    from tvm import relax

    scalar = [i for i, p in enumerate(params) if p.ndim == 0]
    if not scalar:
        return mod, params
    fparams = list(mod["main"].params)
    first = len(fparams) - len(params)  # weights follow the graph inputs
    bind = {fparams[first + i]: tvm.runtime.tensor(params[i]) for i in scalar}
    bind_index = set(scalar)
    mod = relax.transform.BindParams("main", bind)(mod)
    return mod, [p for i, p in enumerate(params) if i not in bind_index]


def _targets(target: str):
    import tvm

    host = tvm.target.Target({"kind": "llvm", "mtriple": WASM_TRIPLE})
    if target == "wasm":
        return host
    if target == "webgpu":
        return tvm.target.Target({"kind": "webgpu"}, host=host)
    raise TVMError(f"unknown TVM web target {target!r} (wasm | webgpu)")


# Reductions at most this long run serially in one thread per output (dlight Fallback) instead of dlight's
# GeneralReduction, which gives every output element a 64-thread workgroup and a shared-memory tree reduction.
# Measured on MobileNet V2 (SwiftShader, Chromium 156): its depthwise 3x3 convolutions reduce 9 elements, and with
# GeneralReduction one inference took 146 s (401,408 workgroups for the first depthwise layer alone).
SHORT_REDUCTION = 64


def _reduction_extents(func) -> list[list[int]] | None:
    """Static extents of the reduction iterators of each reduction block (None when a block has a symbolic one)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    infos = normalize_prim_func(s_tir.Schedule(func))
    if not infos:
        return None
    out = []
    for info in infos:
        if not info.is_reduction():
            continue
        extents = []
        for kind, dom in zip(info.dom_kind(), info.dom()):
            if kind == "R":
                if not isinstance(dom, int) and not hasattr(dom, "value"):
                    return None
                extents.append(int(dom if isinstance(dom, int) else dom.value))
        out.append(extents)
    return out


def _matmul_rule():
    """dlight's Matmul rule, except for convolutions with a spatial kernel (several reduction axes longer than 1):
    on fashion_cnn's 3x3 convolutions its shaders never finished compiling in SwiftShader (session stage > 5 min,
    then the GPU process was lost: "A valid external Instance reference no longer exists"). Without it the same
    model loads in 0.8 s. Matmuls and 1x1 convolutions (MobileNet's) keep the rule."""
    from tvm import tirx
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

    class MatmulNoSpatialConv(GPUScheduleRule):
        def apply(self, func, target, tunable):
            if not isinstance(func, tirx.PrimFunc):
                return None
            blocks = _reduction_extents(func)
            if blocks is None or any(sum(e > 1 for e in extents) > 1 for extents in blocks):
                return None
            return dl.gpu.Matmul().apply(func, target, tunable)

    return MatmulNoSpatialConv()


def _short_reduction_rule():
    """dlight rule: Fallback for blocks whose reductions are all short (static extent <= SHORT_REDUCTION)."""
    from tvm import tirx
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

    class ShortReduction(GPUScheduleRule):
        def apply(self, func, target, tunable):
            if not isinstance(func, tirx.PrimFunc):
                return None
            blocks = _reduction_extents(func)
            if not blocks or max(math.prod(extents) for extents in blocks) > SHORT_REDUCTION:
                return None  # symbolic, no reduction, or a long one: the general rules
            return dl.gpu.Fallback().apply(func, target, tunable)

    return ShortReduction()


def _lower(mod, tgt, target: str):
    """Relax -> VM executable. WebGPU: zero pipeline (legalize + fuse), then dlight default GPU schedules
    (untuned rules; every kernel needs thread bindings)."""
    import tvm
    from tvm import relax

    if target == "webgpu":
        from tvm.s_tir import dlight as dl

        with tgt:
            mod = relax.get_pipeline("zero")(mod)
            mod = dl.ApplyDefaultSchedule(_matmul_rule(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                          _short_reduction_rule(), dl.gpu.GeneralReduction(),
                                          dl.gpu.Fallback())(mod)
    try:
        return tvm.compile(mod, tgt)
    except Exception as e:
        raise TVMError(f"TVM compile for {target} failed: {type(e).__name__}: {str(e)[:800]}") from e


def _emcc_fcompile(runtime_dir: Path, link_opt: str = DEFAULT_LINK_OPT):
    """export_library fcompile: link the model's wasm objects with our runtime objects into one .wasm."""
    libs = _runtime_objects(runtime_dir)
    emcc = _emcc()

    def fcompile(output, objects, options=None, **_):
        objects = [objects] if isinstance(objects, str) else list(objects)
        cmd = [emcc, link_opt, *EMCC_LDFLAGS, "-o", output, *libs, *objects, *(options or [])]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise TVMError(f"emcc link failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")

    # TVM's LLVM 22 emits bitcode Debian's wasm-ld 14 cannot read: ask export_library for wasm object files.
    fcompile.object_format = "o"
    return fcompile


def compile_onnx(onnx_path: Path, out_dir: Path, *, target: Literal["wasm", "webgpu"], runtime_dir: Path,
                 input_shapes: dict[str, list[int]], separate_weights: bool | None = None,
                 link_opt: str = DEFAULT_LINK_OPT) -> list[Path]:
    """Compile an ONNX model for the browser with TVM. Returns the files, entry first:
    ``[model.wasm, tvm_meta.json]`` (+ ``params.bin`` with separate weights).

    Shapes are static, as given (batch included). Raises UnsupportedOpError naming the ops the Relax frontend
    lacks, ToolchainMissing without emcc, TVMError otherwise. Outputs appear atomically (staging folder + rename).
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if separate_weights is None:
        separate_weights = _WEIGHTS_DECISION == "separate"
    tgt = _targets(target)
    _runtime_objects(runtime_dir)  # fail early, before the slow steps
    model, mod, params = _import_relax(onnx_path, input_shapes, keep_params=separate_weights)
    ex = _lower(mod, tgt, target)

    inputs, outputs = _graph_io(model)
    for spec in inputs:
        spec["shape"] = [int(d) for d in input_shapes[spec["name"]]]
    batch = inputs[0]["shape"][0] if inputs and inputs[0]["shape"] else 1

    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=".tvm-stage-"))
    try:
        try:
            ex.export_library(str(stage / MODEL_FILE), fcompile=_emcc_fcompile(runtime_dir, link_opt))
        except TVMError:
            raise
        except Exception as e:
            raise TVMError(f"packaging for the web failed: {type(e).__name__}: {str(e)[:800]}") from e
        meta = {"format": 1, "target": target, "batch": int(batch), "tvm_version": tvm_version(),
                "inputs": inputs, "outputs": outputs, "weights": "separate" if separate_weights else "embedded",
                "params": [], "params_file": None}
        names = [MODEL_FILE, META_FILE]
        if separate_weights:
            offset = 0
            with open(stage / PARAMS_FILE, "wb") as f:
                for i, p in enumerate(params):
                    arr = np.ascontiguousarray(p)
                    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
                    pad = (-offset) % 16  # aligned views; WebGPU copies want 4-byte multiples
                    f.write(b"\0" * pad)
                    offset += pad
                    f.write(arr.tobytes())
                    meta["params"].append({"index": i, "shape": list(arr.shape), "dtype": str(arr.dtype),
                                           "offset": offset, "nbytes": arr.nbytes})
                    offset += arr.nbytes
            meta["params_file"] = PARAMS_FILE
            names.append(PARAMS_FILE)
        (stage / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        result = []
        for name in names:
            os.replace(stage / name, out_dir / name)
            result.append(out_dir / name)
        return result
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def tvm_outputs(onnx_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the Relax module natively (llvm, static shapes of the given inputs). Output names from the ONNX graph."""
    import tvm
    from tvm import relax

    shapes = {k: list(np.asarray(v).shape) for k, v in inputs.items()}
    model, mod, _ = _import_relax(Path(onnx_path), shapes, keep_params=False)
    _, outputs = _graph_io(model)
    ex = _lower(mod, tvm.target.Target({"kind": "llvm"}), "llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[s["name"]])) for s in _graph_io(model)[0]]
    ret = vm["main"](*args)
    rets = [ret] if hasattr(ret, "numpy") else list(ret)
    return {o["name"]: r.numpy() for o, r in zip(outputs, rets)}


# ------------------------------------------------------------------------------------------------ family

def _runtime_prereq_build(inputs: BuildInputs, out_dir: Path) -> dict:
    if inputs.cache_dir is None:
        raise TVMError("tvm_web_runtime needs BuildInputs.cache_dir (shared cache for the runtime build)")
    rt = build_web_runtime(Path(inputs.cache_dir))
    info = {"runtime_dir": str(rt.resolve()), "tvm": tvm_version(), "headers": headers_hash()}
    out_dir.mkdir(parents=True, exist_ok=True)
    from pipeline.fsutil import write_json_atomic

    write_json_atomic(Path(out_dir) / RUNTIME_MANIFEST, info)
    return info


def prerequisites() -> list[Prerequisite]:
    return [Prerequisite(name="tvm_web_runtime", build=_runtime_prereq_build,
                         fingerprint=lambda: {"tvm": tvm_version(), "headers": headers_hash()})]


def _static_shapes(recipe) -> dict[str, list[int]]:
    """Recipe input shapes with dynamic dims (strings) set to 1: the module is compiled for batch 1."""
    return {i.name: [d if isinstance(d, int) else 1 for d in i.shape] for i in recipe.inputs}


def _variant_builder(target: str):
    def build(inputs: BuildInputs, out_dir: Path) -> list[Path]:
        folder = inputs.prerequisites.get("tvm_web_runtime")
        if folder is None:
            raise TVMError("prerequisite tvm_web_runtime missing from BuildInputs.prerequisites")
        info = json.loads((Path(folder) / RUNTIME_MANIFEST).read_text())
        if inputs.recipe is not None:
            shapes = _static_shapes(inputs.recipe)
        else:  # no recipe: the canonical model's own shapes, dynamic dims -> 1
            import onnx

            m = onnx.load(str(inputs.canonical_onnx), load_external_data=False)
            shapes = {i.name: [d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim]
                      for i in m.graph.input if i.name not in {x.name for x in m.graph.initializer}}
        return compile_onnx(inputs.canonical_onnx, out_dir, target=target, runtime_dir=Path(info["runtime_dir"]),
                            input_shapes=shapes)

    return build


def variants() -> list[VariantSpec]:
    common = dict(family="tvm", runtime="tvm", prerequisites=("tvm_web_runtime",), native=None)
    return [
        VariantSpec(name="tvm_wasm", backends=("wasm",), build=_variant_builder("wasm"),
                    description="TVM Relax, fp32, wasm32 CPU kernels (untuned), static batch 1", **common),
        VariantSpec(name="tvm_webgpu", backends=("webgpu",), build=_variant_builder("webgpu"),
                    description="TVM Relax, fp32, WebGPU kernels (dlight default schedules), static batch 1",
                    **common),
    ]
