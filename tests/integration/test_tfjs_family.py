"""TensorFlow.js family: PyTorch->ONNX->onnx2tf->SavedModel->tfjs and Keras->SavedModel->tfjs on tiny models,
fp32/fp16/uint8, checked against the source model in Python and in headless Chromium (wasm, webgl, webgpu).
Budget: < 3 minutes on the 2-core machine (one onnx2tf run, one tiny Keras training)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import importlib.util

import numpy as np
import pytest

for _mod in ("tensorflow", "tensorflowjs", "onnx2tf", "tf2onnx"):  # tensorflowjs imports only with stand-ins
    if importlib.util.find_spec(_mod) is None:
        pytest.skip(f"{_mod} not installed", allow_module_level=True)
torch = pytest.importorskip("torch")

from models import TinyCNN  # noqa: E402
from pipeline.families import BuildInputs, all_prerequisites, families  # noqa: E402
from pipeline.families.tfjs import convert as tfjs  # noqa: E402
from pipeline.families.tfjs.saved_model import IO_FILE, saved_model_outputs  # noqa: E402
from pipeline.fsutil import sha256_file  # noqa: E402
from pipeline.outcome import ConversionError, UnsupportedOp  # noqa: E402
from pipeline.sources.keras import keras_outputs, keras_to_onnx  # noqa: E402
from pipeline.sources.pytorch import export_pytorch  # noqa: E402

pytestmark = pytest.mark.toolchain

# Tolerance relative to the largest reference magnitude: weights-only quantization, float32 compute.
REL_TOL = {"tfjs_fp32": 1e-4, "tfjs_fp16": 5e-3, "tfjs_uint8": 5e-2}
VARIANTS = {s.name: s for s in families()["tfjs"].variants}
SAVED_MODEL = all_prerequisites()["saved_model"]


def _recipe(kind: str, in_name: str = "input", out_name: str = "logits"):
    """The recipe fields the family reads (source.kind, inputs, outputs)."""
    return SimpleNamespace(source=SimpleNamespace(kind=kind),
                           inputs=[SimpleNamespace(name=in_name, layout="NCHW", shape=["batch", 3, 12, 12],
                                                   batch_axis=0, compile_shape=None, compile_pad=None)],
                           outputs=[SimpleNamespace(name=out_name, kind="logits", batch_axis=0)])


def _build_family(inputs: BuildInputs, root: Path) -> dict[str, list[Path]]:
    """Build like the pipeline: prerequisite folder first, then each variant into its own folder."""
    pdir = root / "Prerequisite-saved_model"
    pdir.mkdir(parents=True)
    info = SAVED_MODEL.build(inputs, pdir)
    json.dumps(info)  # JSON-able
    inputs.prerequisites = {"saved_model": pdir}
    out = {}
    for name, spec in VARIANTS.items():
        vdir = root / f"Variant-{name}"
        vdir.mkdir()
        out[name] = spec.build(inputs, vdir)
    return out


@pytest.fixture(scope="module")
def torch_route(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfjs_torch")
    torch.manual_seed(0)
    model = TinyCNN(classes=5, activation="hardswish")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 12, 12)).astype(np.float32)
    canonical = root / "canonical.onnx"
    export_pytorch(model, {"input": x[:1]}, canonical, output_names=["logits"],
                        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        ref = {"logits": model(torch.from_numpy(x)).numpy()}
    before = sha256_file(canonical)
    files = _build_family(BuildInputs(canonical_onnx=canonical, recipe=_recipe("pytorch")), root)
    return SimpleNamespace(root=root, x={"input": x}, ref=ref, files=files, canonical=canonical,
                           canonical_sha256=(before, sha256_file(canonical)),
                           saved_model=root / "Prerequisite-saved_model" / "saved_model")


@pytest.fixture(scope="module")
def keras_route(tmp_path_factory):
    from model_sources import fashion_keras
    from model_sources.datasets import fashion_mnist

    root = tmp_path_factory.mktemp("tfjs_keras")
    src = root / "fashion.keras"
    stats = fashion_keras.train(src, epochs=1, seed=0, limit=256, test_limit=64)
    x = fashion_mnist(split="test", limit=8).inputs["input"]
    ref = keras_outputs(src, {"input": x}, batch=4, output_names=["logits"])
    files = _build_family(BuildInputs(canonical_onnx=root / "unused.onnx", recipe=_recipe("keras"),
                                      source_file=src), root)
    return SimpleNamespace(root=root, src=src, stats=stats, x={"input": x}, ref=ref, files=files,
                           saved_model=root / "Prerequisite-saved_model" / "saved_model")


def _close(got: np.ndarray, ref: np.ndarray, variant: str) -> None:
    tol = REL_TOL[variant] * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got - ref).max())
    assert got.shape == ref.shape
    assert err <= tol, f"{variant}: max abs error {err:.3g} > {tol:.3g}"


# ------------------------------------------------------------------------------------------- conversion


def test_onnx2tf_leaves_the_canonical_model_alone(torch_route):
    """onnx2tf rewrites the file it is given: it must get a private copy (every ORT variant and the native
    reference are built from the canonical file)."""
    before, after = torch_route.canonical_sha256
    assert before == after


def test_trainer_writes_keras_file(keras_route):
    s = keras_route.stats
    assert keras_route.src.is_file() and s["train_samples"] == 256 and s["test_samples"] == 64
    assert 0.0 <= s["test_accuracy"] <= 1.0 and np.isfinite(s["final_loss"])
    assert keras_route.ref["logits"].shape == (8, 10)
    assert not list(keras_route.root.glob(".*.tmp*")), "temp files left behind"


@pytest.mark.parametrize("route", ["torch_route", "keras_route"])
def test_saved_model_matches_native(route, request):
    r = request.getfixturevalue(route)
    io = json.loads((r.saved_model / IO_FILE).read_text())
    assert [s["name"] for s in io["inputs"]] == ["input"] and [s["name"] for s in io["outputs"]] == ["logits"]
    assert io["inputs"][0]["layout"] == "NCHW" and io["inputs"][0]["shape"][1:] == list(r.x["input"].shape[1:])
    got = saved_model_outputs(r.saved_model, r.x)
    _close(got["logits"], r.ref["logits"], "tfjs_fp32")


@pytest.mark.parametrize("route", ["torch_route", "keras_route"])
def test_tfjs_files_and_manifest(route, request):
    r = request.getfixturevalue(route)
    sizes = {}
    for name, files in r.files.items():
        assert files[0].name == "model.json" and files[-1].name == tfjs.MANIFEST_FILE
        assert all(f.is_file() and f.parent == files[0].parent for f in files)
        model_json = json.loads(files[0].read_text())
        shards = [p for g in model_json["weightsManifest"] for p in g["paths"]]
        assert [f.name for f in files[1:-1]] == shards
        man = json.loads(files[-1].read_text())
        assert [i["name"] for i in man["inputs"]] == ["input"] and [o["name"] for o in man["outputs"]] == ["logits"]
        assert man["inputs"][0]["node"] in {v["name"] for v in model_json["signature"]["inputs"].values()}
        assert man["quantization"] == {"tfjs_fp32": None, "tfjs_fp16": "float16", "tfjs_uint8": "uint8"}[name]
        assert not any(op.startswith("_Fused") and "hardswish" in op.lower() for op in man["ops"])
        sizes[name] = sum(f.stat().st_size for f in files[1:-1])
    assert sizes["tfjs_uint8"] < sizes["tfjs_fp16"] < sizes["tfjs_fp32"]


def test_small_shards(keras_route, tmp_path):
    files = tfjs.saved_model_to_tfjs(keras_route.saved_model, tmp_path / "js", shard_bytes=128 * 1024)
    shards = files[1:-1]
    assert len(shards) > 3 and all(f.stat().st_size <= 128 * 1024 for f in shards)


def test_keras_to_onnx_matches_keras(keras_route, tmp_path):
    import onnxruntime as ort

    dst = keras_to_onnx(keras_route.src, tmp_path / "k.onnx", input_names=["input"], output_names=["logits"])
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    got = sess.run(["logits"], keras_route.x)[0]
    _close(got, keras_route.ref["logits"], "tfjs_fp32")


def test_variant_specs():
    assert set(VARIANTS) == {"tfjs_fp32", "tfjs_fp16", "tfjs_uint8"}
    for s in VARIANTS.values():
        assert (s.family, s.runtime, s.native, s.prerequisites) == ("tfjs", "tfjs", None, ("saved_model",))
        assert s.targets == ("wasm", "webgl", "webgpu")
    assert SAVED_MODEL.family == "tfjs" and SAVED_MODEL.fingerprint()["tensorflowjs"] == "4.22.0"


# ------------------------------------------------------------------------------------------- failures


def test_onnx2tf_unsupported_op_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["r"], name="relu"),
         helper.make_node("Frobnicate", ["r"], ["logits"], name="frob", domain="com.example")],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(m, tmp_path / "bad.onnx")
    out = tmp_path / "Prerequisite-saved_model"
    out.mkdir()
    with pytest.raises(UnsupportedOp) as ei:
        SAVED_MODEL.build(BuildInputs(canonical_onnx=tmp_path / "bad.onnx", recipe=_recipe("onnx")), out)
    e = ei.value
    assert (e.step, e.op) == ("onnx2tf", "com.example:Frobnicate")
    assert "Frobnicate" in str(e) and "frob" in str(e) and str(e).startswith("onnx2tf:")
    assert isinstance(e, ConversionError)
    assert not (out / "saved_model").exists()


def test_paddle_style_node_names_convert(tmp_path):
    """Paddle exports name nodes "Softmax@0", which TF refuses as a scope name: onnx2tf gets a private copy with
    such names made safe (the rapidocr text-direction classifier failed on exactly this)."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["r"], name="relu@0"),
         helper.make_node("Softmax", ["r"], ["probs"], name="Softmax@0", axis=1)],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4])])
    src = tmp_path / "paddle.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), src)
    before = sha256_file(src)
    out = tmp_path / "Prerequisite-saved_model"
    out.mkdir()
    SAVED_MODEL.build(BuildInputs(canonical_onnx=src, recipe=_recipe("onnx")), out)
    assert (out / "saved_model" / "saved_model.pb").exists()
    assert sha256_file(src) == before  # the canonical model itself is never touched


def test_onnx2tf_crash_in_an_op_converter_is_named():
    """onnx2tf 2.6 names the node after the traceback, and the op only through the converter file it crashed in
    (seen on all-MiniLM-L6-v2: its Slice converter on a dynamic sequence length)."""
    from pipeline.families.tfjs.saved_model import _onnx2tf_failure

    log = """\x1b[31mERROR:\x1b[0m The trace log is below.
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/onnx2tf/utils/common_functions.py", line 478, in print_wrapper_func
  File "/venv/lib/python3.11/site-packages/onnx2tf/ops/Slice.py", line 89, in make_node
    if input_tensor_shape.rank is not None else None
AttributeError: 'tuple' object has no attribute 'rank'

\x1b[31mERROR:\x1b[0m input_onnx_file_path: model.onnx
\x1b[31mERROR:\x1b[0m onnx_op_name: node_slice_1
\x1b[31mERROR:\x1b[0m Read this and deal with it.
"""
    assert _onnx2tf_failure(log) == ("Slice", "node_slice_1", "AttributeError: 'tuple' object has no attribute 'rank'")


def _tiny_bert(root: Path, tokens: int = 16):
    """The minilm recipe's module (BERT + mean pooling + L2 norm) at a tiny size, exported by torch's dynamo
    exporter with batch and tokens dynamic, and samples with padding (attention mask zeros)."""
    from model_sources.minilm import build

    torch.manual_seed(0)
    model = build({"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 64, "max_position_embeddings": 32, "type_vocab_size": 2})
    rng = np.random.default_rng(0)
    mask = (np.arange(tokens)[None] < rng.integers(1, tokens + 1, (5, 1))).astype(np.int64)
    x = {"input_ids": rng.integers(1, 50, (5, tokens)) * mask, "attention_mask": mask,
         "token_type_ids": np.zeros((5, tokens), np.int64)}
    canonical = root / "bert.onnx"
    dyn = {k: {0: "batch", 1: "tokens"} for k in x}
    export_pytorch(model, {k: v[:2] for k, v in x.items()}, canonical, output_names=["embedding"],
                   dynamic_axes={**dyn, "embedding": {0: "batch"}}, exporter="dynamo")
    spec = lambda n: SimpleNamespace(name=n, layout="NT", shape=["batch", "tokens"], batch_axis=0,  # noqa: E731
                                     compile_shape=[1, tokens], compile_pad=None)
    recipe = SimpleNamespace(source=SimpleNamespace(kind="pytorch"), inputs=[spec(n) for n in x],
                             outputs=[SimpleNamespace(name="embedding", kind="embedding", batch_axis=0)])
    with torch.no_grad():
        ref = model(*(torch.from_numpy(v) for v in x.values())).numpy()
    return canonical, recipe, x, ref


def test_shape_prepass_keeps_the_model(tmp_path):
    """The second try's pre-pass (tokens pinned, shape arithmetic folded or made batch-free): no Shape, Slice or
    GatherND left, the batch still dynamic, and onnxruntime gives the same embeddings at any batch size."""
    import onnx

    from pipeline.families.tfjs.saved_model import _shape_prepass
    from pipeline.onnx_utils import graph_ops, ort_session

    canonical, _, x, ref = _tiny_bert(tmp_path)
    assert {"Shape", "Slice", "GatherND"} <= graph_ops(canonical)  # the dynamo exporter's shape arithmetic
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(canonical.read_bytes())
    notes = _shape_prepass(copy, {n: [None, 16] for n in x})
    assert notes["pinned_dims"] == {n: {1: 16} for n in x} and notes["gathernd_as_reshape"] == 1
    assert not {"Shape", "Slice", "GatherND", "Range", "Expand"} & graph_ops(copy)
    m = onnx.load(str(copy))
    assert [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input] == \
        [["batch", 16]] * 3
    sess = ort_session(copy)
    for rows in (slice(0, 1), slice(0, 2), slice(0, 5)):
        got = sess.run(["embedding"], {k: v[rows] for k, v in x.items()})[0]
        assert np.abs(got - ref[rows]).max() < 1e-5


@pytest.mark.slow
def test_dynamo_exported_transformer_converts(tmp_path):
    """all-MiniLM-L6-v2's failure at a tiny size: onnx2tf fails on the exported shape arithmetic (the Slice of the
    position ids at the dynamic token count), the second try with the pre-pass converts, batch dynamic and tokens
    at the recipe's compile_shape, verified against onnxruntime, and matches PyTorch with padded samples."""
    canonical, recipe, x, ref = _tiny_bert(tmp_path)
    out = tmp_path / "Prerequisite-saved_model"
    out.mkdir()
    info = SAVED_MODEL.build(BuildInputs(canonical_onnx=canonical, recipe=recipe), out)
    assert [s["shape"] for s in info["inputs"]] == [[None, 16]] * 3
    assert info["verify_max_abs_error"] is not None and info["verify_max_abs_error"] < 1e-4
    io = json.loads((out / "saved_model" / IO_FILE).read_text())
    assert io["onnx2tf_prepass"]["pinned_dims"] == {n: {"1": 16} for n in x}
    got = saved_model_outputs(out / "saved_model", x)["embedding"]
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4
    # GELU's Erf (no TFLite builtin) is onnx2tf's polynomial pseudo op: the litert variants can convert it
    import tensorflow as tf

    graph = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"].graph.as_graph_def()
    ops = {n.op for f in graph.library.function for n in f.node_def} | {n.op for n in graph.node}
    assert "MatMul" in ops or "BatchMatMulV2" in ops
    assert "Erf" not in ops
    # three alike int64 [batch, 16] inputs: tensorflowjs names them by tensor ("input_ids:0"); the manifest maps them
    tfjs.saved_model_to_tfjs(out / "saved_model", tmp_path / "tfjs")
    manifest = json.loads((tmp_path / "tfjs" / tfjs.MANIFEST_FILE).read_text())
    assert [(i["name"], i["node"]) for i in manifest["inputs"]] == [(n, f"{n}:0") for n in x]


def test_tfjs_unsupported_op_is_named(tmp_path):
    """A Keras layer computing a determinant: fine in TF, no TensorFlow.js kernel (MatrixDeterminant)."""
    import keras

    @keras.saving.register_keras_serializable(package="test_tfjs")
    class Det(keras.layers.Layer):
        def call(self, x):
            return keras.ops.expand_dims(keras.ops.linalg.det(x), -1)

    inp = keras.Input((3, 3), name="input")
    model = keras.Model(inp, Det(name="logits")(inp))
    src = tmp_path / "det.keras"
    model.save(src)
    root = tmp_path / "build"
    with pytest.raises(UnsupportedOp) as ei:
        _build_family(BuildInputs(canonical_onnx=tmp_path / "unused.onnx", recipe=_recipe("keras"),
                                  source_file=src), root)
    e = ei.value
    assert e.step == "tfjs converter" and "MatrixDeterminant" in e.op
    assert "unsupported op MatrixDeterminant" in str(e)
    assert not (root / "Variant-tfjs_fp32" / "model.json").exists()


def test_unsupported_fused_activation_is_named():
    import base64

    enc = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    graph = {"modelTopology": {"node": [{"name": "c", "op": "_FusedConv2D",
                                          "attr": {"fused_ops": {"list": {"s": [enc("BiasAdd"), enc("_FusedHardSwish")]}}}}]}}
    with pytest.raises(UnsupportedOp, match="_FusedHardSwish"):
        tfjs.check_tfjs_graph(graph, "tfjs converter")


# ------------------------------------------------------------------------------------------- browser

BROWSER_CASES = [
    ("torch_route", "tfjs_fp32", "wasm"), ("torch_route", "tfjs_fp32", "webgl"), ("torch_route", "tfjs_fp32", "webgpu"),
    ("torch_route", "tfjs_fp16", "wasm"), ("torch_route", "tfjs_uint8", "wasm"),
    ("keras_route", "tfjs_fp32", "wasm"), ("keras_route", "tfjs_fp32", "webgpu"), ("keras_route", "tfjs_uint8", "webgl"),
]


@pytest.mark.browser
@pytest.mark.parametrize("route,variant,target", BROWSER_CASES)
def test_browser_matches_native(route, variant, target, request):
    from browser_validate.harness import MeasureRequest, measure

    r = request.getfixturevalue(route)
    runs = 2 if target == "webgpu" else 3
    res = measure(MeasureRequest(runtime="tfjs", target=target, model_files=r.files[variant], inputs=r.x,
                                 eval_batch=4, warmup=1, runs=runs, timeout_s=180))
    assert res.status == "ok", f"{res.error} {res.console_errors[:3]}"
    assert res.env["runtime"] == "tfjs" and res.env["target"] == target and res.env["backend"] == target
    # SwiftShader here: WebGPU is measured as a correctness check (one timed run) unless asked otherwise.
    assert len(res.latency_ms) == (1 if target == "webgpu" else runs)
    _close(res.outputs["logits"], r.ref["logits"], variant)
    if variant == "tfjs_fp32":
        assert (res.outputs["logits"].argmax(1) == r.ref["logits"].argmax(1)).all()
    if target == "wasm":
        assert res.env["wasmThreads"] == 1 and res.env["wasmSimd"] is True


@pytest.mark.browser
def test_browser_multi_shard_model(keras_route, tmp_path):
    from browser_validate.harness import MeasureRequest, measure

    files = tfjs.saved_model_to_tfjs(keras_route.saved_model, tmp_path / "js", shard_bytes=128 * 1024)
    res = measure(MeasureRequest(runtime="tfjs", target="wasm", model_files=files, inputs=keras_route.x,
                                 eval_batch=8, warmup=0, runs=1, timeout_s=120))
    assert res.status == "ok", res.error
    _close(res.outputs["logits"], keras_route.ref["logits"], "tfjs_fp32")


@pytest.mark.browser
def test_a_dynamic_width_converts_at_compile_shape_and_pads_in_the_page(tmp_path):
    """An input dynamic beyond its batch (a text line's width): the SavedModel is converted at the recipe's
    compile_shape (onnx2tf does not carry such sizes through shape arithmetic) and checked; the tfjs graph takes
    a batch of narrower samples through adapter.js runStatic (split to its batch of 1, each zero-padded up to the
    compiled width, as compile_pad says): the same as onnxruntime on the zero-padded samples."""
    from onnx import TensorProto, helper, numpy_helper

    from browser_validate.harness import MeasureRequest, measure
    from models import ort_run, save_graph
    from pipeline.recipe import InputSpec, OutputSpec

    rng = np.random.default_rng(5)
    init = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3,
            "Wf": rng.standard_normal((5, 4)).astype(np.float32), "Bf": rng.standard_normal(5).astype(np.float32)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["line", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "Wf", "Bf"], ["logits"], transB=1)],
        "line", [helper.make_tensor_value_info("line", TensorProto.FLOAT, ["batch", 3, 8, "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(v, k) for k, v in init.items()])
    src = save_graph(graph, tmp_path / "line.onnx")
    recipe = SimpleNamespace(source=SimpleNamespace(kind="onnx"), outputs=[OutputSpec(name="logits", kind="logits")],
                             inputs=[InputSpec(name="line", shape=["batch", 3, 8, "width"], layout="NCHW",
                                               compile_shape=[1, 3, 8, 16], compile_pad="zero")])
    files = _build_family(BuildInputs(canonical_onnx=src, recipe=recipe), tmp_path / "built")
    io = json.loads((tmp_path / "built" / "Prerequisite-saved_model" / "saved_model" / IO_FILE).read_text())
    assert io["inputs"][0]["shape"] == [1, 3, 8, 16] and io["inputs"][0]["pad"] == "zero"
    manifest = json.loads(files["tfjs_fp32"][-1].read_text())
    assert manifest["inputs"][0]["batch_axis"] == 0 and manifest["inputs"][0]["pad"] == "zero"

    x = rng.standard_normal((2, 3, 8, 12)).astype(np.float32)
    res = measure(MeasureRequest(runtime="tfjs", target="wasm", model_files=files["tfjs_fp32"], inputs={"line": x},
                                 eval_batch=2, warmup=0, runs=1, timeout_s=120))
    assert res.status == "ok", f"{res.error} {res.console_errors[:3]}"
    ref = ort_run(src, {"line": np.pad(x, [(0, 0), (0, 0), (0, 0), (0, 4)])})["logits"]
    _close(res.outputs["logits"], ref, "tfjs_fp32")
