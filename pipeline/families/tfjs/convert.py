"""SavedModel -> TensorFlow.js graph model (float32, float16 or uint8 weights), for runtime ``tfjs``.

tensorflowjs 4.22.0 is installed with --no-deps and imported with two stand-in modules (see TOOLCHAIN.md). Every
tfjs folder written here carries ``tfjs_manifest.json`` (recipe names <-> graph-model node / signature names), so
the browser adapter feeds and collects by the recipe's names.
"""
from __future__ import annotations

import base64
import json
import re
import sys
import types
import warnings
from pathlib import Path

from pipeline.families.tfjs.saved_model import IO_FILE, SIGNATURE, toolchain_versions, write_json
from pipeline.fsutil import atomic_dir
from pipeline.outcome import ConversionError, ToolchainMissing, UnsupportedOp
from pipeline.sources.keras import tensorflow

MANIFEST_FILE = "tfjs_manifest.json"   # beside model.json
MODEL_JSON = "model.json"
QUANTIZATIONS = (None, "float16", "uint8")
# Activations the tfjs executors accept inside _FusedConv2D / FusedDepthwiseConv2dNative / _FusedMatMul
# (tfjs-converter executors + the wasm/webgl/webgpu fused kernels); anything else fails only in the browser.
TFJS_FUSED_OPS = {"biasadd", "relu", "relu6", "elu", "leakyrelu", "prelu", "sigmoid"}
FUSED_NODE_OPS = {"_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedMatMul", "FusedConv2D"}


def _stand_ins() -> None:
    """tensorflowjs imports jax2tf and tensorflow_decision_forests at module load even for SavedModel input.
    Neither is installed (they would drag TF 2.19 / protobuf 5 along): empty stand-ins satisfy the imports."""

    def _unavailable(*_a, **_k):
        raise NotImplementedError("not installed here (stand-in module): JAX / decision-forest inputs unsupported")

    for name in ("tensorflowjs.converters.jax_conversion", "tensorflow_decision_forests"):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.convert_jax = _unavailable
            mod.__doc__ = "stand-in (pipeline.families.tfjs)"
            sys.modules[name] = mod


def _tfjs_saved_model_converter():
    tensorflow()
    _stand_ins()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tensorflow_hub: "pkg_resources is deprecated"
            from tensorflowjs.converters import tf_saved_model_conversion_v2 as sm2
    except ImportError as e:
        raise ToolchainMissing(f"import tensorflowjs: {e} (pip install --no-deps tensorflowjs==4.22.0 "
                               "tf-keras==2.21.0 tensorflow-hub==0.16.1; 'setuptools<81')") from None
    return sm2


def check_tfjs_graph(model_json: dict, stage: str) -> list[str]:
    """Ops in the graph model; raises UnsupportedOp for fused kernels no tfjs backend implements."""
    nodes = list(model_json.get("modelTopology", {}).get("node", []))
    for fn in model_json.get("modelTopology", {}).get("library", {}).get("function", []):
        nodes += fn.get("nodeDef", [])
    ops = set()
    for node in nodes:
        op = node.get("op", "")
        ops.add(op)
        if op in FUSED_NODE_OPS:
            fused = node.get("attr", {}).get("fused_ops", {}).get("list", {}).get("s", [])
            names = [base64.b64decode(s).decode(errors="replace") for s in fused]
            bad = [f for f in names if f.lower() not in TFJS_FUSED_OPS]
            if bad:
                raise UnsupportedOp(stage, f"{op}[{'+'.join(names)}]",
                                    f"node {node.get('name')}: fused {', '.join(bad)} is not implemented by the "
                                    "tfjs backends (was TF_ENABLE_ONEDNN_OPTS=0 set before TensorFlow was imported?)")
    return sorted(ops)


def _signature_entry(sig: dict, key: str) -> dict:
    """model.json's signature entry for SavedModel signature key `key`. tensorflowjs keeps the key only where dtype
    and shape tell the tensors apart; alike ones (a BERT's three int64 [batch, 64] token inputs) it names by their
    tensor ("input_ids:0"), which onnx2tf names after the key."""
    if key in sig:
        return sig[key]
    hits = [v for k, v in sig.items() if k.split(":")[0] == key]
    return hits[0] if len(hits) == 1 else {}


def saved_model_to_tfjs(saved_model_dir: str | Path, out_dir: str | Path, *, quantization: str | None = None,
                        shard_bytes: int = 4 * 1024 * 1024) -> list[Path]:
    """SavedModel (with io_signature.json, as written here) -> tfjs graph model in ``out_dir``.

    ``quantization``: None | "float16" | "uint8" (weights only: tfjs dequantizes to float32 before compute).
    ``shard_bytes``: weight shard size (browser-cache friendly). Writes ``model.json``, ``group1-shardXofY.bin``
    and ``tfjs_manifest.json`` (model.json last); returns them with model.json first.
    """
    sm_dir, out_dir = Path(saved_model_dir), Path(out_dir)
    stage = "tfjs converter"
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    io_path = sm_dir / IO_FILE
    if not io_path.is_file():
        raise ConversionError(f"{stage}: {io_path} missing (SavedModel not written by pipeline.families.tfjs)")
    io = json.loads(io_path.read_text())
    sm2 = _tfjs_saved_model_converter()
    with atomic_dir(out_dir, merge=True, last=MODEL_JSON) as tmp:
        qmap = {quantization: True} if quantization else None
        try:
            sm2.convert_tf_saved_model(str(sm_dir), str(tmp), signature_def=io.get("signature", SIGNATURE),
                                       saved_model_tags="serve", quantization_dtype_map=qmap,
                                       weight_shard_size_bytes=int(shard_bytes))
        except ValueError as e:
            msg = str(e)
            m = re.search(r"Unsupported Ops in the model[^\n]*\n\s*(.+)", msg)
            if m:
                ops = [o.strip() for o in m.group(1).split(",") if o.strip()]
                raise UnsupportedOp(stage, ops, "no TensorFlow.js kernel") from None
            raise ConversionError(f"{stage}: ValueError: {msg[:400]}") from None
        except Exception as e:
            raise ConversionError(f"{stage}: {type(e).__name__}: {str(e)[:400]}") from None
        model_json_path = tmp / MODEL_JSON
        if not model_json_path.is_file():
            raise ConversionError(f"{stage}: converter wrote no model.json")
        model_json = json.loads(model_json_path.read_text())
        ops = check_tfjs_graph(model_json, stage)

        sig = model_json.get("signature") or {}
        sig_in, sig_out = sig.get("inputs", {}), sig.get("outputs", {})
        shards = [p for group in model_json.get("weightsManifest", []) for p in group.get("paths", [])]
        manifest = {
            "format": "pipeline-tfjs-manifest/1", "model": MODEL_JSON, "quantization": quantization,
            "shard_bytes": int(shard_bytes), "shards": shards, "inputs": [], "outputs": [], "ops": ops,
            "toolchain": io.get("toolchain") or toolchain_versions(),
        }
        for s in io["inputs"]:
            node = _signature_entry(sig_in, s["signature_key"]).get("name")
            if node is None:
                raise ConversionError(f"{stage}: graph model has no input {s['signature_key']!r} ({list(sig_in)})")
            manifest["inputs"].append({"name": s["name"], "signature_key": s["signature_key"], "node": node,
                                       "dtype": s["dtype"], "shape": s["shape"], "layout": s.get("layout"),
                                       # converted at static shapes (saved_model._static_shapes): how feeds fit
                                       **{k: s[k] for k in ("batch_axis", "pad") if k in s}})
        for s in io["outputs"]:
            node = _signature_entry(sig_out, s["signature_key"]).get("name")
            if node is None:
                raise ConversionError(f"{stage}: graph model has no output {s['signature_key']!r} ({list(sig_out)})")
            manifest["outputs"].append({"name": s["name"], "signature_key": s["signature_key"], "node": node,
                                        "dtype": s["dtype"], "shape": s["shape"],
                                        **({"batch_axis": s["batch_axis"]} if "batch_axis" in s else {})})
        write_json(tmp / MANIFEST_FILE, manifest)
        missing = [p for p in shards if not (tmp / p).is_file()]
        if missing:
            raise ConversionError(f"{stage}: shards missing: {missing}")
    return [out_dir / MODEL_JSON, *(out_dir / p for p in shards), out_dir / MANIFEST_FILE]
