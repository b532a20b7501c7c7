"""Apache TVM family: our runtime headers, the web runtime build, tiny models compiled for wasm / WebGPU and run in
headless Chromium against onnxruntime, and the error for an op the Relax frontend lacks.

The web runtime build (~3-6 min on 2 busy cores) is cached in artifacts/cache (or $TVM_WEB_RUNTIME_CACHE), shared
with the pipeline: CI builds it once. Everything else stays under ~3 minutes.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm  # (setup installs it: a missing TVM is a failure, not a skip)
from browser_validate.harness import MeasureRequest, measure
from models import onnx_celu, onnx_cnn, onnx_mlp, ort_run, save_graph
from pipeline.families import BuildInputs, all_prerequisites, families
from pipeline.families.tvm import compile as tvmc
from pipeline.families.tvm import runtime_build as rtb
from pipeline.families.tvm import schedules
from pipeline.outcome import ToolchainMissing, UnsupportedOp
from pipeline.recipe import InputSpec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.toolchain

TOL = 1e-5
N_SAMPLES = 6
FAST_LINK = "-O1"  # skips binaryen wasm-opt: <1 s link instead of ~26 s (bigger module, same code paths)
EVAL_BATCH = 4  # not the compiled batch (1): exercises tvm.js splitting a feed into compiled-batch slices


def ort_outputs(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return ort_run(model, inputs)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    d = tmp_path_factory.mktemp("tvm_models")
    rng = np.random.default_rng(7)
    return {
        "mlp": (onnx_mlp(d / "mlp.onnx"), {"x": rng.standard_normal((N_SAMPLES, 16)).astype(np.float32)}),
        "cnn": (onnx_cnn(d / "cnn.onnx"), {"input": rng.standard_normal((N_SAMPLES, 3, 16, 16)).astype(np.float32)}),
    }


# --------------------------------------------------------------------------------------------- headers

@pytest.fixture(scope="module")
def headers_check(tmp_path_factory) -> Path:
    """Our headers compiled natively (g++) into a small checker (tvm_web/tests/headers_check.cc)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if not cxx:
        pytest.skip("no native C++ compiler (g++) for the header unit checks")
    ffi = rtb.package_dir("tvm_ffi")
    exe = tmp_path_factory.mktemp("hc") / "headers_check"
    web = rtb.HEADERS_DIR
    cmd = [cxx, "-O1", "-std=c++17", f"-I{web / 'include'}", f"-I{ffi / 'include'}",
           str(web / "tests" / "headers_check.cc"), f"-L{ffi / 'lib'}", "-ltvm_ffi", f"-Wl,-rpath,{ffi / 'lib'}",
           "-o", str(exe)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return exe


def test_serializer_reads_and_rewrites_tvm_param_blob(headers_check, tmp_path):
    """Byte-for-byte compatibility with TVM's own writer (tvm.runtime.save_param_dict, compiled with TVM's
    real serializer): parse with our Stream/Serializer, write back, compare."""
    params = {"weight": np.arange(12, dtype=np.float32).reshape(3, 4) + 0.5,
              "bias_with_a_longer_name": np.array([1, -2, 3], dtype=np.int64),
              "half": np.ones((2, 2), dtype=np.float16), "empty": np.zeros((0, 3), dtype=np.float32)}
    blob = bytes(tvm.runtime.save_param_dict({k: tvm.runtime.tensor(v) for k, v in params.items()}))
    (tmp_path / "in.bin").write_bytes(blob)
    p = subprocess.run([headers_check, "params", tmp_path / "in.bin", tmp_path / "out.bin"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    got = {t["name"]: t for t in summary["tensors"]}
    assert set(got) == set(params)
    assert got["weight"]["shape"] == [3, 4] and got["weight"]["first"] == 0.5 and got["weight"]["bits"] == 32
    assert got["bias_with_a_longer_name"]["code"] == 0 and got["bias_with_a_longer_name"]["bits"] == 64
    assert got["half"]["bits"] == 16 and got["empty"]["nbytes"] == 0
    assert (tmp_path / "out.bin").read_bytes() == blob


def test_base64_matches_python(headers_check, tmp_path):
    for n in (0, 1, 2, 3, 4, 5, 1000):
        data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
        (tmp_path / "in.bin").write_bytes(data)
        p = subprocess.run([headers_check, "b64", tmp_path / "in.bin", tmp_path / "out.txt"], capture_output=True,
                           text=True)
        assert p.returncode == 0, p.stderr
        assert (tmp_path / "out.txt").read_bytes() == base64.b64encode(data)


def test_fp16_conversions_match_numpy(headers_check, tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32),  # every class
        (rng.standard_normal(50_000) * np.exp(rng.uniform(-25, 12, 50_000))).astype(np.float32),  # near fp16 range
        np.array([0.0, -0.0, 65504.0, 65520.0, 6.1e-5, 5.96e-8, 2.98e-8, np.inf, -np.inf], dtype=np.float32)])
    x.tofile(tmp_path / "x.f32")
    p = subprocess.run([headers_check, "fp16", tmp_path / "x.f32", tmp_path / "h.u16"], capture_output=True)
    assert p.returncode == 0
    h = np.fromfile(tmp_path / "h.u16", dtype=np.uint16)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(h[~nan], ref[~nan])
    assert np.isnan(h[nan].view(np.float16)).all()

    p = subprocess.run([headers_check, "fp16ext", tmp_path / "e.f32"], capture_output=True)
    assert p.returncode == 0
    e = np.fromfile(tmp_path / "e.f32", dtype=np.float32)
    ref = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(e[~nan].view(np.uint32), ref[~nan].view(np.uint32)) and np.isnan(e[nan]).all()


def test_containers_ring_buffer_arena(headers_check):
    p = subprocess.run([headers_check, "containers"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "containers ok" in p.stdout


# --------------------------------------------------------------------------------------------- runtime

@pytest.fixture(scope="session")
def runtime_dir() -> Path:
    cache = Path(os.environ.get("TVM_WEB_RUNTIME_CACHE", ROOT / "artifacts" / "cache"))
    return rtb.build_web_runtime(cache)


def test_runtime_build_is_cached(runtime_dir):
    assert runtime_dir.name == f"tvm-web-runtime-{rtb.tvm_version()}-{rtb.headers_hash()}"
    manifest = json.loads((runtime_dir / "runtime.json").read_text())
    assert manifest["tvm"] == rtb.tvm_version() and manifest["headers"] == rtb.headers_hash()
    for name in rtb.RUNTIME_LIBS:
        assert (runtime_dir / f"{name}.o").stat().st_size > 0
    t0 = time.monotonic()
    assert rtb.build_web_runtime(runtime_dir.parent) == runtime_dir
    assert time.monotonic() - t0 < 1.0


def test_missing_emcc_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(rtb.shutil, "which", lambda name: None)
    with pytest.raises(ToolchainMissing, match="apt-get install emscripten"):
        rtb.build_web_runtime(tmp_path / "empty-cache")


# --------------------------------------------------------------------------------------------- browser

def _measure(files: list[Path], target: str, inputs: dict[str, np.ndarray]):
    return measure(MeasureRequest(runtime="tvm", target=target, model_files=files, inputs=inputs,
                                  eval_batch=EVAL_BATCH, warmup=1, runs=3 if target == "webgpu" else 10,
                                  timeout_s=180, required_features=["wasm-simd"] if target == "wasm" else []))


def _check(res, model: Path, inputs):
    assert res.status == "ok", f"{res.error} console={res.console_errors[:3]}"
    assert not res.console_errors
    ref = ort_outputs(model, inputs)
    assert set(res.outputs) == set(ref)
    for name, want in ref.items():
        got = res.outputs[name]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.browser
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("target", ["wasm", "webgpu"])
def test_browser_matches_onnxruntime(models, runtime_dir, tmp_path, name, target):
    model, inputs = models[name]
    shapes = {k: [1, *v.shape[1:]] for k, v in inputs.items()}
    files = tvmc.compile_onnx(model, tmp_path / "out", target=target, runtime_dir=runtime_dir,
                              input_shapes=shapes, link_opt=FAST_LINK)
    assert [f.name for f in files] == ["model.wasm", "tvm_meta.json", "params.bin"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.name for f in files)  # nothing else
    res = _measure(files, target, inputs)
    _check(res, model, inputs)
    assert res.env.get("compiledBatch") == 1


@pytest.mark.browser
def test_embedded_weights_and_variant_spec(models, runtime_dir, tmp_path):
    """The VariantSpec path (prerequisite pointer file -> compile, default link) and embedded weights."""
    model, inputs = models["cnn"]
    specs = {s.name: s for s in families()["tvm"].variants}
    assert set(specs) == {"tvm_wasm", "tvm_webgpu"}
    assert specs["tvm_wasm"].targets == ("wasm",) and specs["tvm_webgpu"].targets == ("webgpu",)
    prereq = all_prerequisites()["tvm_web_runtime"]
    assert prereq.fingerprint() == {"tvm": rtb.tvm_version(), "headers": rtb.headers_hash()}
    (tmp_path / "prereq").mkdir()
    info = prereq.build(BuildInputs(canonical_onnx=model, cache_dir=runtime_dir.parent), tmp_path / "prereq")
    # The runtime's objects are the task's own output (stored and fetched like any other), not a path into this
    # machine's cache.
    assert info["files"] == sorted(["runtime.json", *(f"{n}.o" for n in rtb.RUNTIME_LIBS)])
    for name in info["files"]:
        assert (tmp_path / "prereq" / name).read_bytes() == (runtime_dir / name).read_bytes()

    recipe = SimpleNamespace(inputs=[InputSpec(name="input", shape=["batch", 3, 16, 16])])
    files = specs["tvm_wasm"].build(BuildInputs(canonical_onnx=model, recipe=recipe,
                                                prerequisites={"tvm_web_runtime": tmp_path / "prereq"}),
                                    tmp_path / "variant")
    meta = json.loads(files[1].read_text())
    assert meta["inputs"][0]["shape"] == [1, 3, 16, 16] and meta["weights"] == tvmc.WEIGHTS_DECISION
    # Kernels compiled with wasm SIMD (binaryen's disassembler comes with Debian's emscripten), and required so.
    assert specs["tvm_wasm"].required_features == {"wasm": ("wasm-simd",)}
    text = subprocess.run(["wasm-dis", str(files[0])], capture_output=True, text=True, check=True).stdout
    assert "f32x4." in text, "tvm_wasm kernels carry no 128-bit SIMD instructions"

    _check(_measure(files, "wasm", inputs), model, inputs)

    emb = tvmc.compile_onnx(model, tmp_path / "emb", target="webgpu", runtime_dir=runtime_dir,
                               input_shapes={"input": [1, 3, 16, 16]}, separate_weights=False, link_opt=FAST_LINK)
    assert [f.name for f in emb] == ["model.wasm", "tvm_meta.json"]
    assert json.loads(emb[1].read_text())["weights"] == "embedded"
    _check(_measure(emb, "webgpu", inputs), model, inputs)


@pytest.mark.browser
def test_runtime_error_reaches_javascript_with_its_message(models, runtime_dir, tmp_path):
    """A TVM error inside the wasm module (here: main called without its weights) arrives as TVM's own message,
    not as a bare "Program terminated with exit(1)" (the runtime is built with wasm exceptions)."""
    model, inputs = models["mlp"]
    files = tvmc.compile_onnx(model, tmp_path / "out", target="wasm", runtime_dir=runtime_dir,
                                 input_shapes={"x": [1, 16]}, link_opt=FAST_LINK)
    meta = json.loads(files[1].read_text())
    meta["params"] = meta["params"][:-1]
    files[1].write_text(json.dumps(meta))
    res = _measure(files, "wasm", inputs)
    assert res.status == "failed"
    assert "exit(" not in res.error and "main" in res.error, res.error


@pytest.mark.browser
def test_tensor_names_that_are_not_identifiers(runtime_dir, tmp_path):
    """tf2onnx-style names ("dense/kernel:0") end up in WGSL as identifiers: the WebGPU module must still be
    valid, and inputs/outputs keep their original names for the caller."""
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((16, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input:0", "model/dense/kernel:0"], ["model/dense/MatMul:0"]),
         helper.make_node("Add", ["model/dense/MatMul:0", "model/dense/bias:0"], ["model/dense/BiasAdd:0"]),
         helper.make_node("Relu", ["model/dense/BiasAdd:0"], ["output/0"])],
        "tf_names", [helper.make_tensor_value_info("input:0", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("output/0", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "model/dense/kernel:0"), numpy_helper.from_array(b, "model/dense/bias:0")])
    model = save_graph(graph, tmp_path / "tf_names.onnx")
    inputs = {"input:0": rng.standard_normal((N_SAMPLES, 16)).astype(np.float32)}
    files = tvmc.compile_onnx(model, tmp_path / "out", target="webgpu", runtime_dir=runtime_dir,
                                 input_shapes={"input:0": [1, 16]}, link_opt=FAST_LINK)
    meta = json.loads(files[1].read_text())
    assert [i["name"] for i in meta["inputs"]] == ["input:0"] and [o["name"] for o in meta["outputs"]] == ["output/0"]
    _check(_measure(files, "webgpu", inputs), model, inputs)


def test_short_reductions_get_one_thread_per_output(models, tmp_path):
    """WebGPU schedules: a depthwise 3x3 convolution (9-element reduction) goes to the serial-reduction rule; a
    256-long MatMul reduction does not (dlight's rules keep it); 3x3 convolutions skip dlight's Matmul rule."""
    from tvm import relax
    from tvm.tirx import PrimFunc

    def prim_funcs(model: Path, shapes) -> dict:
        _, mod, _ = tvmc.import_relax(model, shapes, keep_params=False)
        mod = relax.transform.LegalizeOps()(mod)
        return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, PrimFunc)}

    w = np.ones((256, 4), np.float32)
    long_k = save_graph(helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "k256",
                                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                                     [numpy_helper.from_array(w, "W")]), tmp_path / "k256.onnx")
    cnn = prim_funcs(models["cnn"][0], {"input": [1, 3, 16, 16]})
    depthwise = [f for name, f in cnn.items() if name.startswith("conv2d")
                 and "(T.int64(8), T.int64(1), T.int64(3), T.int64(3))" in f.script()]  # its weight shape
    [matmul] = [f for name, f in prim_funcs(long_k, {"x": [1, 256]}).items() if name.startswith("matmul")]
    conv3x3 = [f for name, f in cnn.items() if name.startswith("conv2d")
               and "(T.int64(8), T.int64(3), T.int64(3), T.int64(3))" in f.script()]
    rule, target = schedules.short_reduction_rule(), tvmc.web_target("webgpu")
    with target:
        assert len(depthwise) == 1 and len(conv3x3) == 1, sorted(cnn)
        assert rule.apply(depthwise[0], target, False) is not None
        assert rule.apply(matmul, target, False) is None
        # dlight's Matmul rule: its own decision for matmuls, never for convolutions with a spatial kernel.
        from tvm.s_tir import dlight as dl

        ours, theirs = schedules.matmul_rule(), dl.gpu.Matmul()
        assert (ours.apply(matmul, target, False) is None) == (theirs.apply(matmul, target, False) is None)
        assert theirs.apply(conv3x3[0], target, False) is not None
        assert ours.apply(conv3x3[0], target, False) is None


def test_native_tvm_outputs(models):
    model, inputs = models["cnn"]
    got = tvmc.tvm_outputs(model, {k: v[:2] for k, v in inputs.items()})
    want = ort_outputs(model, {k: v[:2] for k, v in inputs.items()})
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=TOL)


def test_unsupported_op_is_named(runtime_dir, tmp_path):
    model = onnx_celu(tmp_path / "celu.onnx")
    with pytest.raises(UnsupportedOp, match="Celu") as err:
        tvmc.compile_onnx(model, tmp_path / "out", target="wasm", runtime_dir=runtime_dir,
                             input_shapes={"x": [1, 4]})
    assert err.value.ops == ["Celu"]
    assert not (tmp_path / "out" / "model.wasm").exists()


def test_dynamic_batch_reshape_is_folded_for_static_compile(tmp_path):
    """Exporters compute Reshape targets from Shape() for a dynamic batch; the static-shape compile folds them."""
    import torch

    from pipeline.sources.pytorch import export_pytorch

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc(y.reshape(y.shape[0], -1))

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    src = tmp_path / "flat.onnx"
    export_pytorch(Flat().eval(), {"input": x}, src, output_names=["logits"],
                        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    got = tvmc.tvm_outputs(src, {"input": x})
    ref = ort_run(src, {"input": x})["logits"]
    assert np.abs(next(iter(got.values())) - ref).max() < 1e-5


@pytest.mark.browser
def test_inputs_of_another_shape_are_refused_clearly(models, runtime_dir, tmp_path):
    """A module compiled for 16x16 fed 8x8 samples: the error says so (it used to be "Expect the data's length
    equals nbytes=…"), and a recipe input with dynamic spatial dims and no compile_shape is not built at all."""
    from pipeline.families.tvm import static_shapes
    from pipeline.outcome import NotApplicable

    model, _ = models["cnn"]
    files = tvmc.compile_onnx(model, tmp_path / "out", target="wasm", runtime_dir=runtime_dir,
                              input_shapes={"input": [1, 3, 16, 16]}, link_opt=FAST_LINK)
    small = {"input": np.zeros((2, 3, 8, 8), np.float32)}
    res = _measure(files, "wasm", small)
    assert res.status == "failed" and "compiled for [1,3,16,16]" in res.error and "compile_shape" in res.error
    # compile_pad "zero" (text lines narrower than compile_shape): padded up to it in the page (adapter.js
    # runStatic), each sample of the batch alike; the same as native on the zero-padded inputs.
    files = tvmc.compile_onnx(model, tmp_path / "padded", target="wasm", runtime_dir=runtime_dir,
                              input_shapes={"input": [1, 3, 16, 16]}, input_pads={"input": "zero"}, link_opt=FAST_LINK)
    assert json.loads(files[1].read_text())["inputs"][0]["pad"] == "zero"
    small = {"input": np.random.default_rng(3).standard_normal((2, 3, 8, 12)).astype(np.float32)}
    res = _measure(files, "wasm", small)
    _check(res, model, {"input": np.pad(small["input"], [(0, 0), (0, 0), (0, 8), (0, 4)])})

    dynamic = InputSpec(name="input", shape=["batch", 3, "h", "w"])
    with pytest.raises(NotApplicable, match=r"dynamic dimension\(s\) \['h', 'w'\].*compile_shape"):
        static_shapes(BuildInputs(canonical_onnx=model, recipe=SimpleNamespace(inputs=[dynamic])))
    fixed = InputSpec(name="input", shape=["batch", 3, "h", "w"], compile_shape=[1, 3, 32, 100])
    assert static_shapes(BuildInputs(canonical_onnx=model, recipe=SimpleNamespace(inputs=[fixed]))) == \
        {"input": [1, 3, 32, 100]}
