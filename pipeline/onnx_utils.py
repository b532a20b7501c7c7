"""ONNX helpers every stage shares: load with a clear error, save (external data past 2 GB), graph inputs,
a walk over every (sub)graph, the ops a model uses, and an onnxruntime CPU session."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import onnx

from pipeline.outcome import ConversionError

TWO_GB = 2**31
# Leave headroom below the protobuf 2 GB hard limit (graph structure, names, ...).
EXTERNAL_DATA_THRESHOLD = TWO_GB - 64 * 2**20
STANDARD_DOMAINS = ("", "ai.onnx")


def load_model(src: Path, step: str, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file; a missing, empty, corrupt or truncated file is a ConversionError naming it."""
    src = Path(src)
    if not src.is_file():
        raise ConversionError(f"{step}: source model {src} does not exist")
    if src.stat().st_size == 0:
        raise ConversionError(f"{step}: source model {src} is empty (0 bytes)")
    try:
        model = onnx.load(str(src), load_external_data=load_external_data)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(
            f"{step}: cannot parse ONNX file {src} (corrupt or truncated?): {type(e).__name__}: {e}") from e
    if not model.graph.node or not model.graph.output:
        raise ConversionError(f"{step}: ONNX file {src} has no nodes or no outputs (corrupt or truncated?)")
    return model


def model_bytes(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except Exception:  # noqa: BLE001 - protobuf refuses > 2 GB messages
        return TWO_GB


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Save as one file when it fits, otherwise with one external-data file ``<name>.data`` beside it."""
    path = Path(path)
    if model_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    return onnx.external_data_helper._get_all_tensors(model)  # noqa: SLF001 - stable helper, used by onnx itself


def uses_external_data(path: Path) -> bool:
    m = onnx.load(str(path), load_external_data=False)
    return any(onnx.external_data_helper.uses_external_data(t) for t in all_tensors(m))


def check_and_infer_file(path: Path) -> None:
    """checker + shape inference in place (path based, so it also works for > 2 GB models)."""
    onnx.checker.check_model(str(path))
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    onnx.checker.check_model(str(path))


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: graph inputs that are not initializers (old exporters list weights too)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def walk_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from walk_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from walk_graphs(g)


def op_name(node: onnx.NodeProto) -> str:
    """``Conv`` for the standard domain, ``com.microsoft.MatMulNBits`` otherwise."""
    return node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}.{node.op_type}"


def graph_ops(path_or_model: Path | str | onnx.ModelProto) -> set[str]:
    """Op types used by the model (main graph and subgraphs), named as by `op_name`."""
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else \
        onnx.load(str(path_or_model), load_external_data=False)
    return {op_name(n) for g in walk_graphs(model.graph) for n in g.node}


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)


def ort_session(model: Path | str | bytes, threads: int = 1):
    """An onnxruntime CPU session (quiet, `threads` intra-op threads): native reference, native latency, and
    every converter's "does the result still load" check."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])
