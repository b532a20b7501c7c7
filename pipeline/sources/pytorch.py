"""PyTorch sources: a module factory plus weights (a file, a file inside a package, or a trainer).

The module is exported to ONNX with torch.onnx (dynamo, falling back to TorchScript) and checked against PyTorch
on the example inputs and on inputs with every dynamic axis doubled; the reference outputs are PyTorch's own.
"""
from __future__ import annotations

import fnmatch
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.evaluate.batching import LEADING, BatchAxes, run_samples
from pipeline.fsutil import atomic_file
from pipeline.onnx_utils import EXTERNAL_DATA_THRESHOLD, check_and_infer_file, graph_inputs, ort_session, save_model
from pipeline.outcome import ConversionError, SourceError, conversion_step
from pipeline.sources import SourceKind

log = logging.getLogger(__name__)


def load_pytorch(recipe, weights: Path):
    """Build the recipe's module and load its weights strictly (a key mismatch is an error, not a warning)."""
    import torch

    model = recipe.source.module.call()
    try:
        if _is_safetensors(weights):  # Hugging Face checkpoints
            from safetensors.torch import load_file

            state = load_file(str(weights), device="cpu")
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or truncated file, or a pickle that is not plain tensors
        raise SourceError(f"cannot read weights {weights}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # Keys the recipe says the module does not use (a training head, a saved buffer): dropped by name, so that
    # every other key still has to match exactly.
    unused = [k for k in state if any(fnmatch.fnmatchcase(k, pat) for pat in recipe.source.unused_weights)]
    state = {k: v for k, v in state.items() if k not in unused}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise SourceError(f"weights {weights} do not fit {recipe.source.module.function}: {first}") from None
    return model.eval()


def _is_safetensors(path: Path) -> bool:
    """A safetensors file (by content, whatever its name): an 8-byte header length, then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def pytorch_outputs(model, inputs: dict[str, np.ndarray], output_names: list[str], batch: int,
                    axes: BatchAxes = LEADING) -> dict[str, np.ndarray]:
    import torch

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = model(*[torch.from_numpy(np.array(v, order="C")) for v in feed.values()])  # 0-d stays 0-d
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.detach().numpy() for n, o in zip(output_names, out)}

    with torch.inference_mode():
        return run_samples(run, inputs, batch, axes)


def to_onnx(recipe, source_file: Path, example: dict[str, np.ndarray], dst: Path) -> None:
    """The recipe's module with its weights, exported with the recipe's names and dynamic axes."""
    model = load_pytorch(recipe, source_file)
    dyn = {i.name: i.dynamic_axes for i in recipe.inputs if i.dynamic_axes}
    batch_dynamic = any(i.batch_axis is not None and i.batch_axis in i.dynamic_axes for i in recipe.inputs)
    for o in recipe.outputs:  # outputs share the batch axis when the inputs have a dynamic one
        if batch_dynamic and o.batch_axis is not None:
            dyn[o.name] = {o.batch_axis: "batch"}
    export_pytorch(model, example, dst, output_names=[o.name for o in recipe.outputs], dynamic_axes=dyn or None,
                   opset=recipe.source.opset)


def outputs(recipe, source_file: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return pytorch_outputs(load_pytorch(recipe, source_file), inputs, [o.name for o in recipe.outputs],
                           recipe.data.eval_batch, BatchAxes.of(recipe))


SOURCE = SourceKind(kind="pytorch", framework="pytorch", file_ref=lambda source: source.weights,
                    trained_file="weights.pt", to_onnx=to_onnx, outputs=outputs)


@conversion_step("export_pytorch", lambda model, example, dst, *a, **k: f" (-> {dst})")
def export_pytorch(
    model: Any,
    example: dict[str, np.ndarray],
    dst: Path,
    *,
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    opset: int = 18,
    exporter: str = "auto",
    verify: bool = True,
) -> None:
    """Export a torch module to ONNX at ``dst`` (checked, shape-inferred, single file when < 2 GB).

    ``example`` maps input names to example arrays, passed positionally in dict order.
    ``dynamic_axes`` maps input *and* output names to ``{axis: dim_name}``; the exported graph carries those
    dim names. ``exporter``: ``"dynamo"`` (torch.export based, default since torch 2.9, needs onnxscript),
    ``"torchscript"`` (legacy, deprecated) or ``"auto"`` (dynamo, falling back to torchscript if it raises).
    The dynamo exporter implements opset >= 18 only; a lower ``opset`` triggers a version conversion that can
    silently fail, so 18 is the default. With ``verify`` the ONNX model is run in onnxruntime on ``example`` and
    compared with PyTorch (rtol 1e-3, atol 1e-4); dynamic input axes must come out symbolic.
    """
    import torch

    dst = Path(dst)
    if not example:
        raise ConversionError("export_pytorch: example inputs are empty")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"unknown exporter {exporter!r}")
    input_names = list(example)
    dynamic_axes = {k: dict(v) for k, v in (dynamic_axes or {}).items()}
    unknown = set(dynamic_axes) - set(input_names) - set(output_names)
    if unknown:
        raise ConversionError(f"export_pytorch: dynamic_axes names {sorted(unknown)} are neither inputs nor outputs")
    arrays = {k: np.array(v, order="C") for k, v in example.items()}  # not ascontiguousarray: it makes 0-d 1-d
    args = tuple(torch.from_numpy(a.copy()) for a in arrays.values())
    model.eval()

    with atomic_file(dst) as staged:
        errors: list[str] = []
        used = None
        order = {"auto": ["dynamo", "torchscript"], "dynamo": ["dynamo"], "torchscript": ["torchscript"]}[exporter]
        for kind in order:
            try:
                for f in staged.parent.iterdir():
                    f.unlink()
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if kind == "dynamo":
                        _export_dynamo(model, args, staged, input_names, output_names, dynamic_axes, opset)
                    else:
                        _export_torchscript(model, args, staged, input_names, output_names, dynamic_axes, opset)
                used = kind
                break
            except Exception as e:  # noqa: BLE001
                errors.append(f"{kind} exporter: {type(e).__name__}: {str(e)[:2000]}")
                log.warning("export_pytorch: %s exporter failed: %s", kind, e)
        if used is None:
            raise ConversionError("export_pytorch: every exporter failed: " + " | ".join(errors))

        m = onnx.load(str(staged))
        _normalize_io(m, input_names, output_names, dynamic_axes)
        m.producer_name = f"{m.producer_name} ({used} exporter)"
        for f in staged.parent.iterdir():
            f.unlink()
        save_model(m, staged)
        check_and_infer_file(staged)
        got_opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
        if got_opset != opset:
            log.warning("export_pytorch: requested opset %s, model has opset %s", opset, got_opset)
        if verify:
            sess = ort_session(staged)
            _verify_against_torch(model, sess, arrays, output_names, what="example inputs")
            grown = _grow_dynamic_axes(arrays, dynamic_axes)
            if grown is not None:
                _verify_against_torch(model, sess, grown, output_names, what="inputs with dynamic axes doubled")


def _torch_outputs(model, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        ref = model(*(torch.from_numpy(a.copy()) for a in arrays.values()))
    ref_list = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    return [r.detach().cpu().numpy() for r in ref_list]


def _verify_against_torch(model, sess, arrays, output_names, *, what: str) -> None:
    try:
        ref = _torch_outputs(model, arrays)
    except Exception as e:  # noqa: BLE001 - the model itself rejects these inputs: nothing to compare
        log.warning("export_pytorch: PyTorch cannot run %s (%s); skipped that check", what, e)
        return
    try:
        got = sess.run(None, arrays)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"export_pytorch: exported model fails on {what}: {type(e).__name__}: {e}") from e
    if len(got) != len(ref):
        raise ConversionError(f"export_pytorch: ONNX model has {len(got)} outputs, PyTorch {len(ref)}")
    for name, g, r in zip(output_names, got, ref):
        if g.shape != r.shape or not np.allclose(g, r, rtol=1e-3, atol=1e-4):
            diff = float(np.max(np.abs(g - r))) if g.shape == r.shape else float("nan")
            raise ConversionError(
                f"export_pytorch: output {name!r} on {what} differs from PyTorch "
                f"(shapes {g.shape} vs {r.shape}, max abs diff {diff:g})"
            )


def _grow_dynamic_axes(arrays: dict[str, np.ndarray], dynamic_axes) -> dict[str, np.ndarray] | None:
    """Inputs with every dynamic axis doubled (tiled), to check the export did not specialise on its size."""
    if not any(n in dynamic_axes for n in arrays):
        return None
    out = {}
    for name, a in arrays.items():
        for axis in (dynamic_axes.get(name) or {}):
            a = np.concatenate([a, a], axis=axis)
        out[name] = np.array(a, order="C")
    return out


def _export_dynamo(model, args, path: Path, input_names, output_names, dynamic_axes, opset) -> None:
    import torch

    dynamic_shapes = None
    if any(n in dynamic_axes for n in input_names):
        # Tuple form (one entry per positional arg) with string dim names -> torch.export.Dim.DYNAMIC named dims.
        dynamic_shapes = tuple(dynamic_axes.get(n) or None for n in input_names)
    prog = torch.onnx.export(
        model,
        args,
        None,
        input_names=input_names,
        output_names=list(output_names),
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        optimize=True,
        verbose=False,
        report=False,
    )
    if prog is None:
        raise ConversionError("dynamo exporter returned no program")
    _unshadow_outputs(prog.model.graph, output_names)
    big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) >= EXTERNAL_DATA_THRESHOLD
    prog.save(str(path), external_data=big)


def _unshadow_outputs(graph, output_names) -> None:
    """The dynamo exporter names values after their aten op ("embedding", "linear"): an output requested under
    such a name then appears twice and the graph is not valid ONNX. Rename the inner values instead."""
    from onnx_ir.traversal import RecursiveGraphIterator

    outs = {id(v) for v in graph.outputs}
    taken = set(output_names)
    for node in RecursiveGraphIterator(graph):
        for v in node.outputs:
            if v.name in taken and id(v) not in outs:
                k = 1
                while f"{v.name}__inner{k}" in taken:
                    k += 1
                taken.add(f"{v.name}__inner{k}")
                v.name = f"{v.name}__inner{k}"


def _export_torchscript(model, args, path: Path, input_names, output_names, dynamic_axes, opset) -> None:
    import torch

    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=input_names,
        output_names=list(output_names),
        dynamic_axes=dynamic_axes or None,
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )


def _normalize_io(model: onnx.ModelProto, input_names, output_names, dynamic_axes) -> None:
    """Check I/O names; give the requested dynamic axes the requested dim names (inputs and outputs)."""
    ins = [i.name for i in graph_inputs(model)]
    outs = [o.name for o in model.graph.output]
    if ins != list(input_names):
        raise ConversionError(f"export_pytorch: graph inputs are {ins}, requested {list(input_names)}")
    if outs != list(output_names):
        raise ConversionError(f"export_pytorch: graph outputs are {outs}, requested {list(output_names)}")
    vis = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for name, axes in dynamic_axes.items():
        dims = vis[name].type.tensor_type.shape.dim
        for axis, dim_name in axes.items():
            if axis >= len(dims):
                raise ConversionError(f"export_pytorch: {name!r} has rank {len(dims)}, no axis {axis} to make dynamic")
            d = dims[axis]
            if d.HasField("dim_value") and name in input_names:
                raise ConversionError(
                    f"export_pytorch: input {name!r} axis {axis} was exported as fixed size {d.dim_value}, "
                    "not dynamic (the model specialises on it)"
                )
            if d.HasField("dim_value"):
                log.warning("export_pytorch: output %r axis %s exported as fixed size %s", name, axis, d.dim_value)
                continue
            d.dim_param = str(dim_name)
