"""ONNX -> Relax -> a wasm32 (CPU) or WebGPU module for npm @mlc-ai/web-runtime, as plain functions.

* ``compile_onnx(onnx_path, out_dir, target=..., runtime_dir=..., input_shapes=...)``: the Relax ONNX frontend
  with static shapes, compiled for wasm32 or WebGPU (wasm32 host, ``schedules.gpu_schedule``), linked with the
  web runtime into one ``model.wasm``, plus ``tvm_meta.json`` (names, shapes, dtypes) that
  browser_validate/runtimes/tvm.js reads, and ``params.bin`` (the weights).
* ``tvm_outputs(onnx_path, inputs)``: the same Relax module run natively (llvm), for checks.
* ``import_relax``, ``lower``, ``web_target``, ``package``: the steps, for the tuning benchmark.

Target strings are gone in TVM 0.27 (dicts only). Errors: UnsupportedOp naming the ops the frontend lacks,
ToolchainMissing without emcc, ConversionError otherwise.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.families.tvm.runtime_build import DEFAULT_LINK_OPT, link_with_runtime, runtime_objects, tvm_version
from pipeline.families.tvm.schedules import gpu_schedule
from pipeline.fsutil import atomic_dir
from pipeline.onnx_utils import STANDARD_DOMAINS, graph_inputs, op_name, walk_graphs
from pipeline.outcome import ConversionError, UnsupportedOp, describe

log = logging.getLogger(__name__)

META_FILE = "tvm_meta.json"
MODEL_FILE = "model.wasm"
PARAMS_FILE = "params.bin"
WASM_TRIPLE = "wasm32-unknown-unknown-wasm"
FRONTEND = "TVM Relax ONNX frontend"

# Weights ship beside the module (params.bin + layout in tvm_meta.json), not embedded in it. Measured here once
# (2.6 MB fp32 CNN, 4 conv blocks 3->256 ch + fc 1000, 1x3x64x64, wasm, Chromium 156, link -O2, 2 loaded cores):
#   embedded : model.wasm 6.28 MB                      = 6.29 MB; cold start (session + first run) 341 / 352 ms
#   separate : model.wasm 3.68 MB + params.bin 2.58 MB = 6.26 MB; cold start 196 / 326 ms
# Same download and run time (71-97 ms median for both). Separate wins on the rest: the code module no longer
# changes with the weights (a web app caches it across model versions; registry files dedupe), the browser
# compiles a smaller wasm, embedded constants live twice in memory (wasm data segment + VM constant pool), and
# weights stay loadable by other tools. Cold start was no worse (better in both paired runs, noisy).
WEIGHTS_DECISION = "separate"

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64", 12: "uint32", 13: "uint64"}


def graph_io(model) -> tuple[list[dict], list[dict]]:
    def spec(vi):
        t = vi.type.tensor_type
        return {"name": vi.name, "dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type))}

    return [spec(i) for i in graph_inputs(model)], [spec(o) for o in model.graph.output]


def unsupported_ops(model) -> list[str]:
    """ONNX op types (main graph and subgraphs) the Relax frontend has no converter for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map()) | {"Constant", "If"}
    return sorted({op_name(n) for g in walk_graphs(model.graph) for n in g.node
                   if n.domain not in STANDARD_DOMAINS or n.op_type not in known})


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
    for g in walk_graphs(model.graph):
        names.extend(v.name for v in (*g.input, *g.output, *g.value_info, *g.initializer))
        for node in g.node:
            names.extend((*node.input, *node.output))
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
    for g in walk_graphs(safe.graph):
        for v in (*g.input, *g.output, *g.value_info, *g.initializer):
            v.name = renamed.get(v.name, v.name)
        for node in g.node:
            node.input[:] = [renamed.get(x, x) for x in node.input]
            node.output[:] = [renamed.get(x, x) for x in node.output]
    return safe, renamed


def import_relax(onnx_path: Path, input_shapes: dict[str, list[int]], keep_params: bool):
    """(ONNX model, Relax module, weights detached from it when `keep_params`) for static `input_shapes`."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    missing = unsupported_ops(model)
    if missing:
        raise UnsupportedOp(FRONTEND, missing, f"model {onnx_path}")
    inputs, _ = graph_io(model)
    for spec in inputs:
        if spec["name"] not in input_shapes:
            raise ConversionError(f"no static shape given for input {spec['name']!r} of {onnx_path}")
        if any((not isinstance(d, int)) or d <= 0 for d in input_shapes[spec["name"]]):
            raise ConversionError(f"input {spec['name']!r}: static positive dims required, "
                                  f"got {input_shapes[spec['name']]}")
    model = _fold_static_shapes(model, input_shapes)
    safe_model, renamed = _with_identifier_names(model)
    try:
        mod = from_onnx(safe_model, shape_dict={renamed.get(k, k): list(v) for k, v in input_shapes.items()},
                        dtype_dict={renamed.get(s["name"], s["name"]): s["dtype"] for s in inputs},
                        keep_params_in_input=keep_params)
    except tvm.error.OpNotImplemented as e:
        raise UnsupportedOp(FRONTEND, [str(e).rsplit(":", 1)[-1].strip()], f"model {onnx_path}") from e
    except Exception as e:
        raise ConversionError(f"{FRONTEND} failed on {onnx_path}: {describe(e)}") from e
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
    mod = relax.transform.BindParams("main", bind)(mod)
    return mod, [p for i, p in enumerate(params) if i not in set(scalar)]


def web_target(target: str):
    """TVM target for a browser target: wasm32 CPU code, or WebGPU kernels with a wasm32 host."""
    import tvm

    host = tvm.target.Target({"kind": "llvm", "mtriple": WASM_TRIPLE})
    if target == "wasm":
        # 128-bit wasm SIMD for the kernels (every current browser has it; the variant requires `wasm-simd`).
        # Measured on text_direction, untuned, in Chromium: 20-29 ms -> 6-8 ms, outputs identical.
        return tvm.target.Target({"kind": "llvm", "mtriple": WASM_TRIPLE, "mattr": ["+simd128"]})
    if target == "webgpu":
        return tvm.target.Target({"kind": "webgpu"}, host=host)
    raise ConversionError(f"unknown TVM web target {target!r} (wasm | webgpu)")


def lower(mod, tgt, target: str):
    """Relax -> VM executable. WebGPU kernels are scheduled first (every kernel needs thread bindings)."""
    import tvm

    if target == "webgpu":
        mod = gpu_schedule(mod, tgt)
    try:
        return tvm.compile(mod, tgt)
    except Exception as e:
        raise ConversionError(f"TVM compile for {target} failed: {describe(e, 800)}") from e


def package(ex, model, input_shapes: dict[str, list[int]], out_dir: Path, *, target: str, runtime_dir: Path,
            params: list[np.ndarray] | None, link_opt: str = DEFAULT_LINK_OPT,
            input_pads: dict[str, str] | None = None) -> list[Path]:
    """Link a compiled executable with the web runtime and write ``model.wasm``, ``tvm_meta.json`` and (with
    `params`, the detached weights) ``params.bin`` into `out_dir` atomically. Returns them, entry first."""
    out_dir = Path(out_dir)
    inputs, outputs = graph_io(model)
    for spec in inputs:
        spec["shape"] = [int(d) for d in input_shapes[spec["name"]]]
        if (input_pads or {}).get(spec["name"]):  # a smaller input is padded up to the shape (adapter.js runStatic)
            spec["pad"] = input_pads[spec["name"]]
    batch = inputs[0]["shape"][0] if inputs and inputs[0]["shape"] else 1
    meta = {"format": 1, "target": target, "batch": int(batch), "tvm_version": tvm_version(),
            "inputs": inputs, "outputs": outputs, "weights": "embedded" if params is None else "separate",
            "params": [], "params_file": None}
    names = [MODEL_FILE, META_FILE]
    with atomic_dir(out_dir, merge=True, last=MODEL_FILE) as stage:
        try:
            ex.export_library(str(stage / MODEL_FILE), fcompile=link_with_runtime(runtime_dir, link_opt))
        except ConversionError:
            raise
        except Exception as e:
            raise ConversionError(f"packaging for the web failed: {describe(e, 800)}") from e
        for leftover in stage.iterdir():  # export_library's intermediate objects are not ours to ship
            if leftover.name != MODEL_FILE:
                leftover.unlink()
        if params is not None:
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
    return [out_dir / n for n in names]


def compile_onnx(onnx_path: Path, out_dir: Path, *, target: Literal["wasm", "webgpu"], runtime_dir: Path,
                 input_shapes: dict[str, list[int]], input_pads: dict[str, str] | None = None,
                 separate_weights: bool | None = None,
                 link_opt: str = DEFAULT_LINK_OPT) -> list[Path]:
    """Compile an ONNX model for the browser with TVM. Returns the files, entry first:
    ``[model.wasm, tvm_meta.json]`` (+ ``params.bin`` with separate weights). Shapes are static, as given (batch
    included). Outputs appear atomically."""
    if separate_weights is None:
        separate_weights = WEIGHTS_DECISION == "separate"
    tgt = web_target(target)
    runtime_objects(runtime_dir)  # fail early, before the slow steps
    model, mod, params = import_relax(Path(onnx_path), input_shapes, keep_params=separate_weights)
    ex = lower(mod, tgt, target)
    return package(ex, model, input_shapes, out_dir, target=target, runtime_dir=runtime_dir, input_pads=input_pads,
                   params=params if separate_weights else None, link_opt=link_opt)


def tvm_outputs(onnx_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the Relax module natively (llvm, static shapes of the given inputs). Output names from the ONNX graph."""
    import tvm
    from tvm import relax

    shapes = {k: list(np.asarray(v).shape) for k, v in inputs.items()}
    model, mod, _ = import_relax(Path(onnx_path), shapes, keep_params=False)
    ins, outputs = graph_io(model)
    ex = lower(mod, tvm.target.Target({"kind": "llvm"}), "llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    ret = vm["main"](*[tvm.runtime.tensor(np.array(inputs[s["name"]], order="C")) for s in ins])
    rets = [ret] if hasattr(ret, "numpy") else list(ret)
    return {o["name"]: r.numpy() for o, r in zip(outputs, rets)}
