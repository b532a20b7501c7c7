"""LiteRT family: a tiny PyTorch CNN -> ONNX -> onnx2tf -> SavedModel (the tfjs family's prerequisite) -> TFLite
(fp32, fp16 weights, dynamic-range int8, full-integer int8), run natively in the ai-edge-litert interpreter and in
headless Chromium by LiteRT.js on wasm and WebGPU; the browser's outputs must equal the interpreter's on the same
file. Also: what native="litert" records and tasks look like, and failures named. Budget: about 2 minutes on the
2-core machine (one onnx2tf run, four conversions, nine page loads)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import yaml

for _mod in ("tensorflow", "onnx2tf", "ai_edge_litert"):
    if importlib.util.find_spec(_mod) is None:
        pytest.skip(f"{_mod} not installed", allow_module_level=True)

import models  # noqa: E402
from browser_validate.runtimes import RUNTIMES  # noqa: E402
from pipeline.evaluate.batching import BatchAxes  # noqa: E402
from pipeline.evaluate.native import NATIVE_RUNNERS, litert_outputs, native_run, native_runner  # noqa: E402
from pipeline.families import BuildInputs, all_prerequisites, families  # noqa: E402
from pipeline.families.litert import convert as litert  # noqa: E402
from pipeline.fsutil import sha256_file  # noqa: E402
from pipeline.outcome import ConversionError, NotApplicable, UnsupportedOp  # noqa: E402
from pipeline.recipe import Recipe  # noqa: E402

VARIANTS = {s.name: s for s in families()["litert"].variants}
SAVED_MODEL = all_prerequisites()["saved_model"]
WIDTH = 48  # conv weights 48x3x3x3 = 1296 >= 1024 elements: dynamic-range int8 has a tensor to quantize
# Browser against the interpreter running the same file, relative to the largest output magnitude: the same XNNPACK
# kernels on wasm; WebGPU computes float32 on SwiftShader (no shader-f16), int8 with its own kernels.
BROWSER_TOL = {"litert_fp32": 1e-5, "litert_fp16": 1e-4, "litert_int8_dynamic": 2e-2, "litert_int8": 2e-2,
               "litert_int8_mixed": 2e-2, "litert_int8_partial": 2e-2}
# The interpreter against PyTorch.
REFERENCE_TOL = {"litert_fp32": 1e-5, "litert_fp16": 5e-3, "litert_int8_dynamic": 5e-2, "litert_int8": 5e-2,
                 "litert_int8_mixed": 5e-2, "litert_int8_partial": 5e-2}


def recipe_dict(**fields) -> dict:
    """models:build at WIDTH (4 classes, 8x8 inputs, NCHW), every litert variant, wasm and WebGPU."""
    return models.tiny_recipe(
        "lite", "1",
        source={"kind": "pytorch", "module": {"function": "models:build", "args": {"width": WIDTH}},
                "weights": {"trainer": {"function": "models:train", "args": {"width": WIDTH}}}},
        data={"eval": {"function": "models:samples"}, "eval_batch": 4,
              "calibration": {"function": "models:samples", "args": {"n": 32, "seed": 7}}},
        **{"targets": ["wasm", "webgpu"], "variants": sorted(VARIANTS), **fields})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import torch

    from pipeline.sources.pytorch import export_pytorch

    root = tmp_path_factory.mktemp("litert")
    recipe = Recipe.model_validate(recipe_dict())
    torch.manual_seed(0)
    model = models.build(width=WIDTH)
    data = models.samples(n=12)
    x = data.inputs["input"]
    calib = models.samples(n=32, seed=7).inputs["input"]
    canonical = root / "canonical.onnx"
    export_pytorch(model, {"input": x[:1]}, canonical, output_names=["logits"], dynamic_axes=models.DYN)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    before = sha256_file(canonical)
    inputs = BuildInputs(canonical_onnx=canonical, calibration={"input": calib}, recipe=recipe)
    pdir = root / "Prerequisite-saved_model"
    pdir.mkdir()
    SAVED_MODEL.build(inputs, pdir)
    inputs.prerequisites = {"saved_model": pdir}
    shared = {p.relative_to(pdir).as_posix(): sha256_file(p) for p in sorted(pdir.rglob("*")) if p.is_file()}
    files = {}
    for name, spec in VARIANTS.items():
        vdir = root / f"Variant-{name}"
        vdir.mkdir()
        files[name] = spec.build(inputs, vdir)
    native = {name: litert_outputs(f[0], {"input": x}, recipe.data.eval_batch, axes=BatchAxes.of(recipe))["logits"]
              for name, f in files.items()}
    after = {p.relative_to(pdir).as_posix(): sha256_file(p) for p in sorted(pdir.rglob("*")) if p.is_file()}
    return dict(root=root, recipe=recipe, x=x, labels=data.labels, ref=ref, files=files, native=native,
                canonical_unchanged=before == sha256_file(canonical), shared_unchanged=shared == after)


def _close(got: np.ndarray, want: np.ndarray, tol: float, what: str) -> float:
    assert got.shape == want.shape, what
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol * max(1.0, float(np.abs(want).max())), f"{what}: max abs error {err:.3g}"
    return err


# ------------------------------------------------------------------------------------------- specs (fast)


def test_variant_specs_and_runtime_row():
    assert set(VARIANTS) == {"litert_fp32", "litert_fp16", "litert_int8_dynamic", "litert_int8", "litert_int8_mixed",
                             "litert_int8_partial"}
    for s in VARIANTS.values():
        assert (s.family, s.runtime, s.native, s.prerequisites) == ("litert", "litert", "litert", ("saved_model",))
        assert s.targets == ("wasm", "webgpu")
        assert s.needs_calibration == (s.name in ("litert_int8", "litert_int8_mixed", "litert_int8_partial"))
        assert (s.quantization_record is not None) == (s.name in ("litert_int8_mixed", "litert_int8_partial"))
    rt = RUNTIMES["litert"]
    assert rt.js == "litert.js" and rt.targets == ("wasm", "webgpu")
    prefix, root = rt.static_mount
    assert prefix == "/litert/"
    for f in ("core/dist/index.js", "core/package.json", "wasm-utils/dist/index.js",
              "core/wasm/litert_wasm_internal.js", "core/wasm/litert_wasm_internal.wasm",
              "core/wasm/litert_wasm_threaded_internal.js", "core/wasm/litert_wasm_jspi_internal.wasm"):
        assert (root / f).is_file(), f"{f} not installed (npm ci in browser_validate/)"
    assert json.loads((root / "core" / "package.json").read_text())["version"] == "2.5.3"


def test_native_runner_table_and_tasks(tmp_path):
    """native="litert" runs the variant's own file in the interpreter (its task needs the variant, says which
    runner ran and keys on its version); onnxruntime variants keep their keys and wording; TF.js falls back to the
    canonical model; the browser's skip_outside_budget rule now holds for every variant with a native runner."""
    from pipeline.tasks import BrowserMeasure, NativeRun

    assert set(NATIVE_RUNNERS) == {"ort", "litert"} and native_runner(None) is None
    assert native_runner("litert").label == "the ai-edge-litert interpreter"
    with pytest.raises(ValueError, match="unknown native runner 'nope'"):
        native_runner("nope")
    path = tmp_path / "lite.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(variants=["fp32", "tfjs_fp32", *sorted(VARIANTS)])))
    art = str(tmp_path / "artifacts")
    lite = NativeRun(str(path), art, variant="litert_int8")
    assert lite.runs_variant() and "variant" in lite.requires() and "onnx" not in lite.requires()
    fp = lite.fingerprint()
    assert fp["runner"] == "litert" and fp["runner_versions"] == {"ai-edge-litert": "2.1.2"}
    ort_fp = NativeRun(str(path), art, variant="fp32").fingerprint()
    assert "runner" not in ort_fp and ort_fp["of_variant"] is True  # onnxruntime's keys as before
    tfjs = NativeRun(str(path), art, variant="tfjs_fp32")
    assert not tfjs.runs_variant() and "onnx" in tfjs.requires()
    for v, has in (("litert_fp16", True), ("fp32", True), ("tfjs_fp32", False)):
        assert ("native" in BrowserMeasure(str(path), art, variant=v, target="wasm").requires()) == has, v


def test_dynamic_dimensions_need_a_compile_shape():
    d = recipe_dict()
    d["inputs"] = [{"name": "input", "shape": ["batch", 3, "h", "w"], "layout": "NCHW"}]
    io = {"inputs": [{"name": "input", "signature_key": "input", "dtype": "float32", "shape": [None, 3, None, None]}]}
    with pytest.raises(NotApplicable, match=r"compile_shape"):
        litert.static_io(io, Recipe.model_validate(d))
    d["inputs"][0]["compile_shape"] = [1, 3, 8, 16]
    (s,) = litert.static_io(io, Recipe.model_validate(d))
    assert s["static_shape"] == [1, 3, 8, 16] and s["batch_axis"] == 0
    assert [litert.js_dtype(t) for t in ("float32", "int64", "float64", "bool", "uint8")] == \
        ["float32", "int32", "float32", "uint8", "uint8"]


# ------------------------------------------------------------------------------------------- conversion


@pytest.mark.toolchain
def test_files_and_manifest(built):
    assert built["canonical_unchanged"] and built["shared_unchanged"]  # converters got private copies
    sizes = {}
    for name, files in built["files"].items():
        assert [f.name for f in files] == ["model.tflite", "litert_manifest.json"]
        models.no_temp_files(files[0].parent)
        man = json.loads(files[1].read_text())
        assert man["quantization"] == {"litert_fp32": None, "litert_fp16": "float16",
                                       "litert_int8_dynamic": "dynamic_int8", "litert_int8": "int8",
                                       "litert_int8_mixed": "int8_mixed", "litert_int8_partial": "int8_partial"}[name]
        assert ("quantization_record" in man) == (name in ("litert_int8_mixed", "litert_int8_partial"))
        (i,), (o,) = man["inputs"], man["outputs"]
        # The recipe's names, layout and float32 I/O; the static shape LiteRT.js runs (a dynamic batch as 1).
        assert (i["name"], i["dtype"], i["shape"], i["batch_axis"], i["layout"]) == \
            ("input", "float32", [1, 3, 8, 8], 0, "NCHW")
        assert (o["name"], o["dtype"], o["shape"], o["batch_axis"]) == ("logits", "float32", [1, 4], 0)
        assert "TRANSPOSE" in man["ops"] and man["toolchain"]["ai-edge-litert"] == "2.1.2"
        assert "note" not in man  # every quantization quantized something
        sizes[name] = files[0].stat().st_size
    dtypes = {n: json.loads(f[1].read_text())["tensor_dtypes"] for n, f in built["files"].items()}
    assert "float16" in dtypes["litert_fp16"] and "int8" in dtypes["litert_int8_dynamic"]
    assert dtypes["litert_int8"]["int8"] > dtypes["litert_int8_dynamic"]["int8"]  # activations too
    assert "QUANTIZE" in json.loads(built["files"]["litert_int8"][1].read_text())["ops"]
    assert sizes["litert_int8"] < sizes["litert_fp16"] < sizes["litert_fp32"]
    assert sizes["litert_int8_dynamic"] < sizes["litert_fp32"]


@pytest.mark.toolchain
def test_interpreter_matches_reference(built):
    for name, got in built["native"].items():
        _close(got, built["ref"], REFERENCE_TOL[name], name)
    assert (built["native"]["litert_fp32"].argmax(1) == built["ref"].argmax(1)).all()


@pytest.mark.toolchain
def test_native_record(built):
    """The record NativeRun keeps for native="litert": the variant's own accuracy against the reference, latency at
    batch 1 on one thread, and what ran."""
    rec = native_run(built["recipe"], built["files"]["litert_int8"][0], {"input": built["x"]}, built["labels"],
                     {"logits": built["ref"]}, measured="litert_int8 in the ai-edge-litert interpreter", runner="litert")
    assert rec["measured"] == "litert_int8 in the ai-edge-litert interpreter" and rec["threads"] == 1
    acc = rec["accuracy"]
    assert acc["samples"] == 12 and acc["outputs"]["logits"]["max_abs_error"] <= 5e-2 * max(1, np.abs(built["ref"]).max())
    assert len(rec["latency_runs"]) == 30 and 0 < rec["latency_ms"]["median"] < 50
    assert rec["session_ms"] > 0 and rec["first_inference_ms"] > 0


def _float_layers(model: bytes) -> dict[str, list[str]]:
    """Each tensor an op produces, by name -> [op, its output's dtype, the dtypes of its inputs (weights included)],
    read from the flatbuffer without a delegate."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=model, num_threads=1,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    out = {}
    for op in it._get_ops_details():
        for o in op["outputs"]:
            if o in tensors:
                out[tensors[o]["name"]] = [op["op_name"], np.dtype(tensors[o]["dtype"]).name,
                                           *[np.dtype(tensors[i]["dtype"]).name for i in op["inputs"] if i in tensors]]
    return out


def _mixed_without_top1_bound(built, tmp_path, quantization):
    """A mixed-precision model of the built CNN for a budget that bounds no top-1 agreement (the output error decides),
    calibrated on 32 samples: (recipe, calibration, files, manifest)."""
    recipe = Recipe.model_validate(recipe_dict(budget={"max_abs_error": 10.0}))
    calib = {"input": models.samples(n=32, seed=7).inputs["input"]}
    files = litert.saved_model_to_tflite(built["root"] / "Prerequisite-saved_model" / "saved_model",
                                         tmp_path / quantization, quantization=quantization, calibration=calib,
                                         recipe=recipe)
    return recipe, calib, files, json.loads(files[1].read_text())


@pytest.mark.toolchain
def test_int8_mixed_keeps_the_layers_it_names_float(built, tmp_path):
    """litert_int8_mixed's sensitivity pass, on calibration samples: with a budget that bounds no top-1 agreement
    it lowers the output error; every layer it names is float in the .tflite (its op's output and weights
    float32), the rest stays int8; the record says why with the measured errors, and the variant's build record,
    the report's candidate row and kept_float() carry it."""
    from pipeline.families import build_variant, kept_float
    from pipeline.release.candidates import candidate
    from pipeline.release.report import candidate_rows

    recipe, calib, files, man = _mixed_without_top1_bound(built, tmp_path, "int8_mixed")
    rec = man["quantization_record"]
    assert rec == litert.quantization_record(files[0]) and "goal" not in rec  # no top-1 bound: the error decides
    kept = rec["float_nodes"]
    assert kept, f"nothing kept float: {rec['tried']}"  # int8 error on a 48-channel CNN: a float conv lowers it
    assert len(kept) <= rec["rule"]["max_float"] and rec["result"]["error"] < rec["all_int8"]["error"]
    layers = _float_layers(files[0].read_bytes())
    for step in kept:
        op, out_dtype, *in_dtypes = layers[step["node"]]
        # float output, float data and weights (an axis or shape input stays int32), nothing int8
        assert out_dtype == "float32" and "float32" in in_dtypes and not {"int8", "uint8"} & set(in_dtypes), \
            (step["node"], op, in_dtypes)
        assert step["error_after"] <= step["error_before"] * (1 - rec["rule"]["min_gain"])
        assert "rmse/scale" in step["why"] and "calibration samples" in step["why"]
    assert any("int8" in d for name, d in layers.items() if name not in {s["node"] for s in kept})
    assert man["tensor_dtypes"]["int8"] > 0 and rec["calibration"]["samples"] == 32
    # The default recipe (top-1 bound 0.9): whatever it keeps, the build record and the report say so.
    spec = VARIANTS["litert_int8_mixed"]
    out = tmp_path / "Variant-litert_int8_mixed"
    inputs = BuildInputs(canonical_onnx=built["root"] / "canonical.onnx", calibration=calib, recipe=recipe,
                         prerequisites={"saved_model": built["root"] / "Prerequisite-saved_model"})
    got = build_variant(spec, inputs, out)
    assert got["quantization"] == litert.quantization_record(out / "model.tflite")
    line = kept_float(got["quantization"])
    assert line.startswith("kept float: ") and all(s["node"] in line for s in got["quantization"]["float_nodes"])
    skipped = {"status": "skipped", "stage": "native", "error": "outside the budget natively"}
    c = candidate(recipe, "litert_int8_mixed", "litert", "wasm", skipped, [], {"status": "ok"},
                  quantization=got["quantization"])
    assert candidate_rows([c])[0]["kept_float"] == line


@pytest.mark.toolchain
def test_int8_partial_makes_int8_only_what_calibration_allows(built, tmp_path):
    """litert_int8_partial, on calibration samples: each op measured int8 alone, then added in order of its error
    while the model stays inside the goal (no top-1 bound here: output error <= max_error). Every op it names int8
    has an int8 output in the .tflite, every op it keeps float a float32 one; the result is inside the goal; each
    op kept float says why; the report's line carries them."""
    from pipeline.families import build_variant, kept_float

    _, calib, files, man = _mixed_without_top1_bound(built, tmp_path, "int8_partial")
    rec = man["quantization_record"]
    assert rec == litert.quantization_record(files[0]) and rec["goal"] == {"max_error": litert.PARTIAL_MAX_ERROR}
    assert rec["int8_ops"] == len(rec["int8_nodes"]) > 0 and rec["calibration"]["samples"] == 32
    assert rec["result"]["error"] <= litert.PARTIAL_MAX_ERROR and 0 < rec["int8_mac_share"] <= 1
    assert len(rec["alone"]) == rec["ops"] == rec["int8_ops"] + len(rec["float_nodes"])
    # the int8 ops were added in order of their own error
    alone = {r["node"]: r["error"] for r in rec["alone"]}
    assert all(alone[n["node"]] == n["error"] for n in rec["int8_nodes"])
    layers = _float_layers(files[0].read_bytes())
    for n in rec["int8_nodes"]:  # int8, or the model's float output dequantized from it under the op's name
        op, out_dtype, *in_dtypes = layers[n["node"]]
        assert out_dtype == "int8" or (op, in_dtypes) == ("DEQUANTIZE", ["int8"]), (n, layers[n["node"]])
    for n in rec["float_nodes"]:
        assert layers[n["node"]][1] == "float32", (n, layers[n["node"]])
        assert "outside the goal" in n["why"] and "output error" in n["why"]
    assert man["tensor_dtypes"]["int8"] > 0 and man["tensor_dtypes"]["float32"] > 0
    # The default recipe (top-1 bound 0.9): the build record and the report's line say what stayed float.
    spec = VARIANTS["litert_int8_partial"]
    out = tmp_path / "Variant-litert_int8_partial"
    inputs = BuildInputs(canonical_onnx=built["root"] / "canonical.onnx", calibration=calib, recipe=built["recipe"],
                         prerequisites={"saved_model": built["root"] / "Prerequisite-saved_model"})
    got = build_variant(spec, inputs, out)
    rec = got["quantization"]
    assert rec == litert.quantization_record(out / "model.tflite") and rec["goal"]["reached"] is True
    assert rec["result"]["top1_agreement"] >= rec["goal"]["top1_agreement"]["logits"] == 0.92
    line = kept_float(rec)
    assert line.startswith("kept float: ") and all(n["node"] in line for n in rec["float_nodes"])


@pytest.mark.toolchain
def test_unsupported_op_is_named(tmp_path):
    """tf.linalg.det has no TFLite builtin (only TF Select, which LiteRT.js lacks): the op is named, nothing kept."""
    import tensorflow as tf

    class Det(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"output_0": tf.expand_dims(tf.linalg.det(x), -1)}

    m = Det()
    sm = tmp_path / "saved_model"
    tf.saved_model.save(m, str(sm), signatures={"serving_default": m.serve})
    (sm / "io_signature.json").write_text(json.dumps({
        "signature": "serving_default",
        "inputs": [{"name": "x", "signature_key": "x", "dtype": "float32", "shape": [None, 3, 3]}],
        "outputs": [{"name": "y", "signature_key": "output_0", "dtype": "float32", "shape": [None, 1]}]}))
    out = tmp_path / "Variant-litert_fp32"
    with pytest.raises(UnsupportedOp) as ei:
        litert.saved_model_to_tflite(sm, out)
    e = ei.value
    assert isinstance(e, ConversionError) and (e.step, e.op) == ("tflite converter", "MatrixDeterminant")
    assert "unsupported op MatrixDeterminant" in str(e) and "TF Select" in str(e)
    assert not (out / "model.tflite").exists() and not list(tmp_path.glob(".*"))


# ------------------------------------------------------------------------------------------- browser

BROWSER_CASES = [(v, t) for v in ("litert_fp32", "litert_fp16", "litert_int8_dynamic", "litert_int8")
                 for t in ("wasm", "webgpu")] + [("litert_int8_mixed", "wasm"),  # float islands in an int8 model
                                                 ("litert_int8_partial", "wasm")]  # int8 islands in a float one


@pytest.mark.toolchain
@pytest.mark.browser
@pytest.mark.parametrize("variant,target", BROWSER_CASES)
def test_browser_matches_interpreter(built, variant, target):
    from browser_validate.harness import MeasureRequest, measure

    res = measure(MeasureRequest(runtime="litert", target=target, model_files=built["files"][variant],
                                 inputs={"input": built["x"]}, eval_batch=4, warmup=2, runs=10, timeout_s=180))
    assert res.status == "ok", f"{res.error} {res.console_errors[:3]}"
    assert not res.console_errors
    env = res.env
    assert (env["runtime"], env["version"], env["target"]) == ("litert", "2.5.3", target)
    assert env["backend"] == env["accelerator"] == target  # what LiteRT.js compiled for, not merely what was asked
    # WebGPU runs on LiteRT.js's JSPI build (WebGPU/wasm partitioning needs it; Chromium has JSPI)
    assert env["threads"] == env["wasmThreads"] == 1
    assert env["build"] == ("litert_wasm_jspi_internal" if target == "webgpu" else "litert_wasm_internal")
    if target == "webgpu":
        assert env["fullyAccelerated"] is True and env["webGpuDevice"] is True
    # SwiftShader here: WebGPU is a correctness check (one timed run, the first 8 samples).
    assert len(res.latency_ms) == (1 if target == "webgpu" else 10)
    n = env["evaluated_samples"]
    assert n == (8 if target == "webgpu" else 12)
    err = _close(res.outputs["logits"], built["native"][variant][:n], BROWSER_TOL[variant], f"{variant} on {target}")
    urls = {f["url"] for f in res.runtime_files}
    build = "litert_wasm_jspi_internal" if target == "webgpu" else "litert_wasm_internal"
    assert {"/runtimes/litert.js", "/litert/core/dist/index.js", "/litert/wasm-utils/dist/index.js",
            f"/litert/core/wasm/{build}.wasm"} <= urls
    print(f"{variant} {target}: max abs error vs interpreter {err:.3g}, browser median "
          f"{float(np.median(res.latency_ms)):.3f} ms, session {res.session_ms:.0f} ms")


@pytest.mark.toolchain
@pytest.mark.browser
def test_browser_threads_and_worker(built):
    """threads=2: LiteRT.js's threaded build (the page is cross-origin isolated), also inside a module Worker
    (where the adapter lends importScripts)."""
    from browser_validate.harness import MeasureRequest, measure

    res = measure(MeasureRequest(runtime="litert", target="wasm", model_files=built["files"]["litert_fp32"],
                                 inputs={"input": built["x"]}, eval_batch=4, warmup=1, runs=3, threads=2,
                                 qoe_modes=["worker"], qoe_duration_ms=500, timeout_s=180))
    assert res.status == "ok", f"{res.error} {res.console_errors[:3]}"
    env = res.env
    assert env["threads"] == env["wasmThreads"] == 2 and env["build"] == "litert_wasm_threaded_internal"
    assert env["crossOriginIsolated"] is True
    assert res.qoe["worker"]["inferences"] > 0 and "error" not in res.qoe["worker"]
    _close(res.outputs["logits"], built["native"]["litert_fp32"], BROWSER_TOL["litert_fp32"], "threads=2")
