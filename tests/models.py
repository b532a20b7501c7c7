"""Every tiny model and data set the tests use, defined once. Recipes in tests refer to them as 'models:...'.

PyTorch: TinyCNN (conv + BN + activation + pooling + linear), TinyMLP (a transformer-ish block: MatMul-based),
StatefulCell (batch on axis 1, a scalar constant), a tiny BERT sentence embedder (safetensors, tokenizer.json).
ONNX graphs built by hand: mlp, cnn (with depthwise conv and ReLU6 as Clip with rank-0 bounds), celu (an op TVM
lacks), broken (an op nothing knows).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_sources.datasets import EvalSet

# ------------------------------------------------------------------------------------------------ PyTorch


def _torch():
    import torch

    return torch


def TinyCNN(classes: int = 5, activation: str = "relu", width: int = 8):  # noqa: N802 (a class factory)
    """Conv 3->width (8) + BatchNorm (non-trivial statistics, so BN folding is exercised) + ReLU or HardSwish (the op that
    needs TF_ENABLE_ONEDNN_OPTS=0 to stay tfjs-compatible) + global average pool + Linear -> `classes` logits."""
    torch = _torch()
    nn = torch.nn

    class _TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.fc = nn.Linear(width, classes)
            with torch.no_grad():
                self.bn.running_mean.uniform_(-0.5, 0.5)
                self.bn.running_var.uniform_(0.5, 2.0)
                self.bn.weight.uniform_(0.5, 1.5)
                self.bn.bias.uniform_(-0.2, 0.2)

        def forward(self, x):
            h = self.bn(self.conv(x))
            h = nn.functional.hardswish(h) if activation == "hardswish" else torch.relu(h)
            return self.fc(h.mean(dim=(2, 3)))

    return _TinyCNN().eval()


def TinyMLP():  # noqa: N802
    """Transformer-ish block: 3-D activations [B, T, D], Linear layers export as MatMul (+Add)."""
    torch = _torch()
    nn = torch.nn

    class _TinyMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(64)
            self.up = nn.Linear(64, 128)
            self.down = nn.Linear(128, 64)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            h = x + self.down(nn.functional.gelu(self.up(self.norm(x))))
            return self.head(h.mean(dim=1))

    return _TinyMLP().eval()


# Recipe functions ('models:build', 'models:train', 'models:samples'): a 4-class TinyCNN on 8x8 inputs.

def build(width: int = 8):
    return TinyCNN(classes=4, width=width)


def make_weights(path, seed: int = 0, width: int = 8) -> None:
    torch = _torch()
    torch.manual_seed(seed)
    torch.save(TinyCNN(classes=4, width=width).state_dict(), path)


def train(out_path, seed: int = 0, width: int = 8) -> dict:
    """A 'trainer' for recipes: deterministic weights, no data needed (`width` makes a bigger, slower model)."""
    make_weights(out_path, seed, width)
    return {"seed": seed, "width": width}


def train_slowly(out_path, seconds: float = 10, seed: int = 0) -> dict:
    """`train`, taking `seconds` first: a task long enough to kill a worker in the middle of it."""
    import time

    time.sleep(seconds)
    return train(out_path, seed)


def samples(input_name: str = "input", n: int = 12, seed: int = 1, labelled: bool = True) -> EvalSet:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    # Arbitrary labels: tests check that the labelled metrics are computed and compared, not their level.
    labels = (np.arange(n) % 4).astype(np.int64) if labelled else None
    return EvalSet(inputs={input_name: x}, labels=labels, ids=[f"s{i}" for i in range(n)])


# ------------------------------------------------------------------------------------------------ ONNX graphs


def save_graph(graph, path: Path, opset: int = 17, extra_opsets: dict[str, int] | None = None) -> Path:
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return Path(path)


def onnx_mlp(path: Path) -> Path:
    """x [N, 16] -> MatMul + Add + Relu + MatMul + Add -> y [N, 4]."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((16, 32)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    w2, b2 = rng.standard_normal((32, 4)).astype(np.float32) * 0.2, rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Add", ["h", "B1"], ["a"]),
         helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["m"]),
         helper.make_node("Add", ["m", "B2"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))])
    return save_graph(graph, path)


def onnx_cnn(path: Path) -> Path:
    """Conv + BatchNorm + ReLU6 + depthwise Conv + MaxPool + global average pool + Gemm: a small image classifier,
    input [batch, 3, 16, 16] -> logits [batch, 5]. ReLU6 is Clip with rank-0 min/max initializers, as in
    MobileNet V2 (rank-0 weights once broke the TVM browser run)."""
    rng = np.random.default_rng(1)
    init = {
        "Wc": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "Bc": rng.standard_normal(8).astype(np.float32) * 0.1,
        "scale": rng.uniform(0.5, 1.5, 8).astype(np.float32), "shift": rng.uniform(-0.2, 0.2, 8).astype(np.float32),
        "mean": rng.uniform(-0.3, 0.3, 8).astype(np.float32), "var": rng.uniform(0.5, 2.0, 8).astype(np.float32),
        "Wf": rng.standard_normal((5, 8)).astype(np.float32) * 0.5, "Bf": rng.standard_normal(5).astype(np.float32),
        "lo": np.array(0.0, np.float32), "hi": np.array(1.5, np.float32),
        "Wd": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.3,
    }
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "Wc", "Bc"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["bn"]),
         helper.make_node("Clip", ["bn", "lo", "hi"], ["r"]),
         helper.make_node("Conv", ["r", "Wd"], ["d"], pads=[1, 1, 1, 1], group=8),  # depthwise, as in MobileNet
         helper.make_node("MaxPool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("GlobalAveragePool", ["p"], ["g"]),
         helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "Wf", "Bf"], ["logits"], transB=1)],
        "cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(v, k) for k, v in init.items()])
    return save_graph(graph, path)


def onnx_celu(path: Path) -> Path:
    """Celu: a standard ONNX op (opset 12) without a Relax frontend converter in TVM 0.27."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Celu", ["r"], ["y"], alpha=1.0)],
        "celu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return save_graph(graph, path)


def onnx_broken(path: Path) -> Path:
    """Structurally loadable model whose op does not exist: converters and onnxruntime must refuse it."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])
    g = helper.make_graph([helper.make_node("NoSuchOp", ["input"], ["logits"])], "broken", [x], [y])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return Path(path)


def ort_run(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model in onnxruntime (CPU): the native answer tests compare with."""
    from pipeline.onnx_utils import ort_session

    sess = ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


# ------------------------------------------------------------------------------------------------ exported

DYN = {"input": {0: "batch"}, "logits": {0: "batch"}}


def tiny(kind: str):
    """(model, per-sample shape) of the two PyTorch test models, deterministically initialised."""
    _torch().manual_seed(0)
    if kind == "cnn":
        return TinyCNN(classes=5), (3, 16, 16)
    return TinyMLP(), (4, 64)


def export_tiny_models(work: Path) -> dict:
    """{kind: {model, shape, path (canonical ONNX), x (eval inputs), ref (PyTorch outputs), calib}} for cnn and mlp."""
    from pipeline.sources.pytorch import export_pytorch

    torch = _torch()
    out = {}
    rng = np.random.default_rng(0)
    for kind in ("cnn", "mlp"):
        model, shape = tiny(kind)
        dst = Path(work) / kind / "canonical.onnx"
        example = {"input": rng.standard_normal((1, *shape)).astype(np.float32)}
        export_pytorch(model, example, dst, output_names=["logits"], dynamic_axes=DYN)
        x = rng.standard_normal((32, *shape)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        calib = rng.standard_normal((32, *shape)).astype(np.float32)
        out[kind] = dict(model=model, shape=shape, path=dst, x=x, ref=ref, calib=calib)
    return out


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    return ort_run(path, {"input": x})["logits"]


def no_temp_files(d: Path) -> None:
    leftovers = [p.name for p in Path(d).iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


# ------------------------------------------------------------------------------------------------ recipes


def tiny_recipe(name: str, version: str, **fields) -> dict:
    """A recipe for the 4-class TinyCNN on 8x8 inputs (models:build / train / samples), wasm only, fp32, quick
    measurements; `fields` replace top-level fields."""
    return {"name": name, "version": version,
            "source": {"kind": "pytorch", "module": {"function": "models:build"},
                       "weights": {"trainer": {"function": "models:train"}}},
            "inputs": [{"name": "input", "shape": ["batch", 3, 8, 8], "layout": "NCHW"}],
            "outputs": [{"name": "logits", "kind": "logits"}],
            "data": {"eval": {"function": "models:samples"}, "eval_batch": 4},
            "budget": {"min_top1_agreement": 0.9},
            "targets": ["wasm"], "variants": ["fp32"],
            "measure": {"wasm": {"runs": 3, "warmup": 1, "qoe_modes": [], "threads": [1]}},
            **fields}


# ------------------------------------------------------------------------------------------------ real-shaped


def StatefulCell():  # noqa: N802
    """A recurrent-style step: inputs x [batch, 4], state [2, batch, 3] (batch on axis 1), gain [] (a scalar the
    recipe fixes); outputs y [batch, 3] and the next state [2, batch, 3]."""
    torch = _torch()
    nn = torch.nn

    class _Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, state, gain):
            y = self.fc(x) * gain + state.sum(0)
            return y, torch.tanh(state + y.unsqueeze(0))

    return _Cell().eval()


def train_cell(out_path, seed: int = 0) -> dict:
    torch = _torch()
    torch.manual_seed(seed)
    torch.save(StatefulCell().state_dict(), out_path)
    return {"seed": seed}


def cell_samples(n: int = 6, seed: int = 2) -> EvalSet:
    """Samples stacked on a leading axis, one sample's shape each: x [4], state [2, 3] (gain is the recipe's)."""
    rng = np.random.default_rng(seed)
    return EvalSet(inputs={"x": rng.standard_normal((n, 4)).astype(np.float32),
                           "state": rng.standard_normal((n, 2, 3)).astype(np.float32)},
                   labels=None, ids=[f"c{i}" for i in range(n)])


def cell_recipe(**fields) -> dict:
    return {"name": "cell", "version": "1",
            "source": {"kind": "pytorch", "module": {"function": "models:StatefulCell"},
                       "weights": {"trainer": {"function": "models:train_cell"}}},
            "inputs": [{"name": "x", "shape": ["batch", 4]},
                       {"name": "state", "shape": [2, "batch", 3], "batch_axis": 1},
                       {"name": "gain", "shape": [], "value": 2.0}],
            "outputs": [{"name": "y"}, {"name": "state_out", "batch_axis": 1}],
            "data": {"eval": {"function": "models:cell_samples"}, "eval_batch": 1},
            "budget": {"max_abs_error": 1e-4},
            "targets": ["wasm", "webgpu"], "variants": ["fp32"],
            "measure": {t: {"runs": 3, "warmup": 1, "qoe_modes": [], "threads": [1]} for t in ("wasm", "webgpu")},
            **fields}


# A sentence-embedding transformer as real ones ship: transformers' BERT (our MiniLM module, tiny config), a
# safetensors checkpoint with a key the module does not use (BERT's pooler), a Hugging Face tokenizer.json.
TINY_BERT = {"vocab_size": 256, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}


def tiny_embedder():
    from model_sources.minilm import build

    return build(config=TINY_BERT)


def train_embedder(out_path, seed: int = 0) -> dict:
    """Random weights saved as safetensors (under whatever name the pipeline asks for) plus a pooler, as the real
    checkpoint has it."""
    torch = _torch()
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in tiny_embedder().state_dict().items()}
    state["pooler.dense.weight"] = torch.zeros(TINY_BERT["hidden_size"], TINY_BERT["hidden_size"])
    save_file(state, str(out_path))
    return {"seed": seed}


def write_tokenizer(path: Path) -> Path:
    """A WordPiece tokenizer trained on the evaluation sentences (BERT's normaliser, special tokens and
    post-processing), saved as the tokenizer.json an app would load."""
    from tokenizers import Tokenizer, models as tm, normalizers, pre_tokenizers, processors, trainers

    from model_sources.datasets import python_doc_sentences

    tok = Tokenizer(tm.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([s for _, s in python_doc_sentences()], trainers.WordPieceTrainer(
        vocab_size=TINY_BERT["vocab_size"], special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    tok.save(str(path))
    return path


def embedder_recipe(**fields) -> dict:
    tokens = {"shape": ["batch", "tokens"], "dtype": "int64", "layout": "NT", "compile_shape": [1, 16]}
    return {"name": "embedder", "version": "1",
            "source": {"kind": "pytorch", "module": {"function": "models:tiny_embedder"},
                       "weights": {"trainer": {"function": "models:train_embedder"}},
                       "unused_weights": ["pooler.*"]},
            "assets": {"tokenizer": {"file": "tokenizer.json"}},
            "inputs": [{"name": n, **tokens} for n in ("input_ids", "attention_mask", "token_type_ids")],
            "outputs": [{"name": "embedding", "kind": "embedding"}],
            "data": {"eval": {"function": "model_sources.datasets:tokenized_sentences",
                              "args": {"max_length": 16, "limit": 12}}, "eval_batch": 4},
            "budget": {"min_cosine": 0.99, "min_retrieval_agreement": 0.9},
            "targets": ["wasm"], "variants": ["fp32", "int8_weights", "int4", "int4_fp16"],
            # Measured in the browser even when a 4-bit variant is outside the budget natively: the tests check
            # that every variant loads and runs there.
            "measure": {"wasm": {"runs": 3, "warmup": 1, "qoe_modes": [], "threads": [1], "skip_outside_budget": False}},
            **fields}


def TinyCTC(classes: int = 6):  # noqa: N802
    """A text-recognizer head as OCR models have it: image [batch, 1, 8, width] -> per 2-pixel column the
    probabilities of `classes` (blank first) [batch, width/2, classes]."""
    torch = _torch()
    nn = torch.nn

    class _CTC(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, stride=(1, 2), padding=1)
            self.head = nn.Linear(8, classes)

        def forward(self, x):
            f = torch.relu(self.conv(x)).mean(2).transpose(1, 2)  # [batch, steps, 8]
            return torch.softmax(self.head(f) * 4, -1)

    return _CTC().eval()


def train_ctc(out_path, seed: int = 0) -> dict:
    torch = _torch()
    torch.manual_seed(seed)
    torch.save(TinyCTC().state_dict(), out_path)
    return {"seed": seed}


def ctc_samples(n: int = 8, width: int = 24, seed: int = 3) -> EvalSet:
    rng = np.random.default_rng(seed)
    return EvalSet(inputs={"image": rng.standard_normal((n, 1, 8, width)).astype(np.float32)}, labels=None,
                   ids=[f"line{i}" for i in range(n)])


def ctc_recipe(**fields) -> dict:
    return {"name": "ctc", "version": "1",
            "source": {"kind": "pytorch", "module": {"function": "models:TinyCTC"},
                       "weights": {"trainer": {"function": "models:train_ctc"}}},
            "inputs": [{"name": "image", "shape": ["batch", 1, 8, "width"], "compile_shape": [1, 1, 8, 24]}],
            "outputs": [{"name": "probs", "kind": "ctc"}],
            "data": {"eval": {"function": "models:ctc_samples"}, "eval_batch": 4},
            "budget": {"max_char_error_rate": 0.0, "min_sequence_match": 1.0},
            "targets": ["wasm"], "variants": ["fp32", "int8_dynamic"],
            "measure": {"wasm": {"runs": 3, "warmup": 1, "qoe_modes": [], "threads": [1]}},
            **fields}


def TinyDetector(anchors: int = 8, classes: int = 3):  # noqa: N802
    """A single-stage detector head as real ones ship, three outputs of three kinds: image [batch, 3, 16, 16] ->
    boxes [batch, anchors, 4] (x1, y1, x2, y2 in pixels, anchor + offset), scores [batch, anchors] (sigmoid),
    class logits [batch, anchors, classes]."""
    torch = _torch()
    nn = torch.nn

    class _Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.head = nn.Linear(8 * 8 * 8, anchors * (5 + classes))
            centres = torch.linspace(2, 14, anchors)
            self.register_buffer("anchor", torch.stack([centres - 2, centres - 2, centres + 2, centres + 2], 1))

        def forward(self, x):
            f = self.head(torch.relu(self.conv(x)).flatten(1)).reshape(x.shape[0], anchors, 5 + classes)
            boxes = self.anchor + 2 * torch.tanh(f[..., :4])
            return boxes, torch.sigmoid(4 * f[..., 4]), f[..., 5:]

    return _Detector().eval()


def train_detector(out_path, seed: int = 0) -> dict:
    torch = _torch()
    torch.manual_seed(seed)
    torch.save(TinyDetector().state_dict(), out_path)
    return {"seed": seed}


def detector_samples(n: int = 8, seed: int = 5) -> EvalSet:
    rng = np.random.default_rng(seed)
    return EvalSet(inputs={"image": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)}, labels=None,
                   ids=[f"img{i}" for i in range(n)])


def decode_detections(outputs, threshold: float = 0.5, nms_iou: float = 0.5) -> list[dict]:
    """The detector's own rules: anchors scoring at least `threshold`, the class by argmax, then per-class
    non-maximum suppression."""
    out = []
    for boxes, scores, logits in zip(outputs["boxes"], outputs["scores"], outputs["classes"]):
        keep = np.where(scores >= threshold)[0]
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        cls = logits.argmax(-1)
        chosen: list[int] = []
        for i in keep:
            b = boxes[i]
            if all(cls[j] != cls[i] or _iou(boxes[j], b) < nms_iou for j in chosen):
                chosen.append(int(i))
        out.append({"boxes": boxes[chosen], "scores": scores[chosen], "classes": cls[chosen]})
    return out


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def detector_recipe(**fields) -> dict:
    return {"name": "detector", "version": "1",
            "source": {"kind": "pytorch", "module": {"function": "models:TinyDetector"},
                       "weights": {"trainer": {"function": "models:train_detector"}}},
            "inputs": [{"name": "image", "shape": ["batch", 3, 16, 16], "layout": "NCHW"}],
            "outputs": [{"name": "boxes"}, {"name": "scores", "kind": "probabilities"}, {"name": "classes"}],
            "detections": [{"name": "objects", "decode": {"function": "models:decode_detections"}, "iou": 0.5}],
            "data": {"eval": {"function": "models:detector_samples"}, "eval_batch": 4},
            "budget": {"outputs": {"boxes": {"max_abs_error": 0.01}, "scores": {"max_abs_error": 0.01},
                                   "classes": {"max_rel_error": 0.01},
                                   "objects": {"max_missed_detections": 0.0, "max_extra_detections": 0.0,
                                               "min_box_iou": 0.99, "max_score_error": 0.01}}},
            "targets": ["wasm", "webgpu"], "variants": ["fp32", "int8_dynamic"],
            "measure": {t: {"runs": 3, "warmup": 1, "qoe_modes": [], "threads": [1]} for t in ("wasm", "webgpu")},
            **fields}


def ctc_lines(widths=(16, 24, 24, 32, 16, 24, 32, 32), seed: int = 3) -> EvalSet:
    """Text lines as they come: each its own width (a list of samples, not a stack)."""
    rng = np.random.default_rng(seed)
    return EvalSet(inputs={"image": [rng.standard_normal((1, 8, w)).astype(np.float32) for w in widths]},
                   labels=None, ids=[f"line{i}" for i in range(len(widths))])
