"""What the browser can reach on this CPU, per kernel: one op at a time, the same weights in every runtime.

The issue's "physical limit" (wasm SIMD is 128-bit, native here has AVX-512) is a claim about kernels, not models.
This measures it: each case is a chain of one op at MobileNetV2's shapes (pointwise 1x1 convs at its early and
middle widths, its depthwise 3x3, a matrix-vector product like its classifier) and a large pointwise conv
(compute-bound, the best case for SIMD width), chained so the tensors crossing the JS/wasm boundary once per call
are a small part of the time; built once as ONNX (onnx.helper, random weights), converted to TFLite by the pipeline's own route (onnx2tf -> SavedModel ->
TFLite converter; NHWC input so no transposes are added), and timed at 1 thread:

- natively: XNNPACK in the ai-edge-litert interpreter (the .tflite) and onnxruntime (the .onnx), the pipeline's own
  native runners (pipeline.evaluate.native);
- in headless Chromium's wasm: LiteRT.js (XNNPACK compiled to wasm SIMD) and onnxruntime-web (MLAS compiled to wasm
  SIMD), through the pipeline's measuring page (browser_validate.harness.measure), cross-origin isolated.

XNNPACK wasm / XNNPACK native is the same library and the same kernel choice on both sides, so that ratio is what
the instruction set and the wasm compiler cost on this machine: the floor for any runtime in the browser here.
Rounds alternate native and browser runs (the machine is shared); medians over rounds, spread as min-max.

Whole models beside them (`--artifacts`: a build's folder): each named recipe's `litert_fp32` file and its canonical
ONNX, timed the same way on a random input, so a model's ratio can be read against its kernels' floor.

    .venv/bin/python benchmarks/simd_limit.py [--rounds 3] [--artifacts artifacts --models mobilenet_v2,text_direction]
    # writes benchmarks/results/simd_limit.md
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name, input NCHW, (op, channels out, kernel, groups) or (gemm, features out), repeats: the op chained `repeats` times
# (channels in = out) so the one tensor in and out per call is a small part of the time, as inside a whole model.
CASES = [
    ("pointwise 1x1, 56x56, 32->32 (MobileNetV2's early width) x8", (1, 32, 56, 56), ("conv", 32, 1, 1), 8),
    ("pointwise 1x1, 14x14, 384->384 (its middle width) x8", (1, 384, 14, 14), ("conv", 384, 1, 1), 8),
    ("depthwise 3x3, 56x56x144 (its block 2) x8", (1, 144, 56, 56), ("conv", 144, 3, 144), 8),
    ("matrix-vector 1280->1280 (the classifier's kind) x8", (1, 1280), ("gemm", 1280), 8),
    ("pointwise 1x1, 28x28, 512->512 (compute-bound) x4", (1, 512, 28, 28), ("conv", 512, 1, 1), 4),
]


def build_onnx(path: Path, shape, op, repeats: int) -> float:
    """The op `repeats` times, each followed by Relu (it fuses into the kernel), random weights; returns the
    floating-point operations (2 per multiply-add)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, flops, x = [], [], 0, "x"
    for i in range(repeats):
        if op[0] == "conv":
            _, cout, k, groups = op
            cin = shape[1]
            fan = cin // groups * k * k
            w = (rng.standard_normal((cout, cin // groups, k, k)) * (2 / fan) ** 0.5).astype(np.float32)
            nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k], group=groups,
                                          pads=[k // 2] * 4))
            out = (1, cout, shape[2], shape[3])
            flops += 2 * cout * shape[2] * shape[3] * fan
        else:
            cout = op[1]
            w = (rng.standard_normal((cout, shape[1])) * (2 / shape[1]) ** 0.5).astype(np.float32)
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"c{i}"], transB=1))
            out = (1, cout)
            flops += 2 * shape[1] * cout
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        x = "y" if i == repeats - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"c{i}"], [x]))
    graph = helper.make_graph(nodes, "one_op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return float(flops)


def to_tflite(onnx_path: Path, work: Path) -> tuple[list[Path], str]:
    """The pipeline's route: onnx2tf (4-D input as NHWC: no transposes in the model) then the TFLite converter."""
    from pipeline.families.litert.convert import saved_model_to_tflite
    from pipeline.families.tfjs.saved_model import onnx_to_saved_model

    io = onnx_to_saved_model(onnx_path, work / "saved_model", keep_nchw=[], verify=False)
    files = saved_model_to_tflite(work / "saved_model", work / "tflite", verify=False)
    return files, io["inputs"][0]["layout"]


def whole_model(artifacts: Path, recipe: str):
    """A build's `litert_fp32` model of `recipe` and its canonical ONNX, with one random input they both take."""
    import json

    folder = max((artifacts / "build" / recipe).glob("*"), key=lambda p: p.stat().st_mtime)

    def newest(pattern):
        found = [p for p in folder.glob(pattern) if (p / "result.json").is_file()
                 and json.loads((p / "result.json").read_text()).get("status") == "ok"]
        if not found:
            raise SystemExit(f"{recipe}: no finished {pattern} in {folder}")
        return max(found, key=lambda p: p.stat().st_mtime)

    tdir, odir = newest("Variant-litert_fp32-*"), newest("CanonicalOnnx-*")
    manifest = json.loads((tdir / "litert_manifest.json").read_text())
    (inp,) = manifest["inputs"]
    if inp["layout"] not in ("NCHW", "as_source", "NC", "other") or inp["dtype"] != "float32":
        raise SystemExit(f"{recipe}: litert input {inp} is not the ONNX model's tensor")
    x = np.random.default_rng(1).standard_normal(inp["shape"]).astype(np.float32)
    import onnx

    name = onnx.load(str(odir / "model.onnx"), load_external_data=False).graph.input[0].name
    return (f"whole model: {recipe} (litert_fp32 / canonical ONNX)", None, odir / "model.onnx",
            [tdir / "model.tflite", tdir / "litert_manifest.json"], {name: x}, {inp["name"]: x})


def build_cases(tmp: Path) -> list[tuple]:
    """Each case as ONNX and TFLite, with its input as each takes it."""
    built = []
    for i, (name, shape, op, repeats) in enumerate(CASES):
        work = tmp / f"case{i}"
        work.mkdir()
        onnx_path = work / "model.onnx"
        flops = build_onnx(onnx_path, shape, op, repeats)
        tfl, layout = to_tflite(onnx_path, work)
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        x_tfl = x.transpose(0, 2, 3, 1).copy() if len(shape) == 4 and layout == "NHWC" else x
        built.append((name, flops, onnx_path, tfl, {"x": x}, {"x": x_tfl}))
    return built


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "simd_limit.md"))
    ap.add_argument("--artifacts", help="a build's artifacts folder: its models' litert_fp32 and canonical ONNX too")
    ap.add_argument("--models", default="mobilenet_v2,text_direction")
    args = ap.parse_args()

    from browser_validate.harness import close_browser
    from pipeline.evaluate.native import litert_latency, ort_latency
    from pipeline.fsutil import machine_lock

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.monotonic()
    rows, env = [], {}
    with tempfile.TemporaryDirectory(prefix="simd-limit-") as tmp:
        # Converting shares the machine as a build's conversions do: never beside a timing (fsutil.machine_lock).
        with machine_lock("timing", shared=True):
            built = [*build_cases(Path(tmp)),
                     *(whole_model(Path(args.artifacts), m) for m in (args.models.split(",") if args.artifacts else []))]
        times: dict[tuple[str, str], list[float]] = {}
        for rnd in range(args.rounds):
            for name, flops, onnx_path, tfl, x, x_tfl in built:
                # Timings own the machine (pipeline.fsutil.machine_lock), as the build's own timed tasks do.
                with machine_lock("timing"):
                    n = args.runs
                    sides = [("native XNNPACK", lambda: litert_latency(tfl[0], x_tfl, 5, n)["latency_ms"]),
                             ("native onnxruntime", lambda: ort_latency(onnx_path, x, 5, n)["latency_ms"]),
                             ("browser LiteRT.js", lambda: _browser("litert", tfl, x_tfl, n, env)),
                             ("browser ORT Web", lambda: _browser("ort", [onnx_path], x, n, env))]
                    for side, run in (sides if rnd % 2 == 0 else sides[::-1]):
                        times.setdefault((name, side), []).append(statistics.median(run()))
        close_browser()
        for name, flops, *_ in built:
            rows.append((name, flops, {side: times[(name, side)] for (n, side) in times if n == name}))
    write(rows, env, args, time.monotonic() - started)


def _browser(runtime, files, x, runs, env) -> list[float]:
    from browser_validate.harness import MeasureRequest, measure

    res = measure(MeasureRequest(runtime=runtime, target="wasm", model_files=list(files), inputs=x,
                                 warmup=5, runs=runs, threads=1, timeout_s=300))
    if res.status != "ok":
        raise RuntimeError(f"{runtime}: {res.error}")
    env[runtime] = {k: res.env.get(k) for k in ("version", "build", "userAgent", "crossOriginIsolated", "threads")}
    return res.latency_ms


def write(rows, env, args, seconds) -> None:
    def med(v):
        return statistics.median(v)

    def spread(v):
        return f"{min(v):.3g}-{max(v):.3g}"

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("flags")), [])
    lines = [
        "# The browser's floor on this CPU, per kernel (1 thread)", "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {seconds:.0f} s; regenerate: "
        f"`.venv/bin/python benchmarks/simd_limit.py --rounds {args.rounds}"
        + (f" --artifacts <a build's artifacts> --models {args.models}` (whole models from {args.artifacts})"
           if args.artifacts else "`") + " (how: the script's docstring).", "",
        f"- CPU: {cpu}, {os.cpu_count()} cores; "
        f"{' '.join(f for f in flags if f.startswith(('avx512f', 'avx512_vnni', 'fma', 'avx2')))}",
        f"- browser: {env.get('litert', {}).get('userAgent', '?')}; LiteRT.js {env.get('litert', {}).get('version')} "
        f"({env.get('litert', {}).get('build')}), onnxruntime-web {env.get('ort', {}).get('version')}; "
        f"crossOriginIsolated={env.get('litert', {}).get('crossOriginIsolated')}",
        f"- {args.rounds} rounds (native and browser alternating, order flipped each round), {args.runs} timed runs "
        "per side per round; ms: median over rounds of each round's median (min-max over rounds); GFLOP/s at the "
        "median (2 flops per multiply-add).", "",
        "| op | MFLOP | native XNNPACK ms (GFLOP/s) | LiteRT.js wasm ms (GFLOP/s) | **wasm / native, same library** "
        "| native onnxruntime ms | ORT Web wasm ms | ORT Web / native ORT | LiteRT.js / native ORT |",
        "|---|---:|---|---|---:|---|---|---:|---:|",
    ]
    for name, flops, t in rows:
        xn, lj, on, ow = (t["native XNNPACK"], t["browser LiteRT.js"], t["native onnxruntime"], t["browser ORT Web"])

        def g(v):
            return f"{flops / med(v) / 1e6:.1f}" if flops else "–"

        lines.append(f"| {name} | {f'{flops / 1e6:.1f}' if flops else '–'} | {med(xn):.3g} ({spread(xn)}) ({g(xn)}) | {med(lj):.3g} "
                     f"({spread(lj)}) ({g(lj)}) | **×{med(lj) / med(xn):.2f}** | {med(on):.3g} ({spread(on)}) "
                     f"({g(on)}) | {med(ow):.3g} ({spread(ow)}) ({g(ow)}) | ×{med(ow) / med(on):.2f} "
                     f"| ×{med(lj) / med(on):.2f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
