"""Which op holds each model back in the browser: per-node time of the same model natively and in ORT Web's wasm.

For each recipe (default mobilenet_v2 and text_direction) this takes the ORT variant a build made (default
`simplified`, what wasm chose) from `<artifacts>/build/<recipe>/<version>/Variant-<variant>-*/model.onnx` and the
first evaluation sample from `EvalData-eval-*/data.npz`, and profiles it per node on both sides at the same
thread count:
- natively: onnxruntime (Python, CPU provider) with `SessionOptions.enable_profiling`, at ORT_ENABLE_ALL (what the
  pipeline's native side runs: on x86 the NCHWc layout transformer replaces Conv with blocked-layout kernels) and
  at ORT_ENABLE_EXTENDED (no NCHWc: nearly the graph the wasm build runs, so kernel against kernel);
- in headless Chromium: onnxruntime-web's wasm backend with the session option `enableProfiling: true`, graph
  optimization `all` (what the measuring page and the loader use; a variant's shipped
  `ort-session-options.json` is honoured). The wasm build of onnxruntime writes its profile (Chrome-trace JSON,
  one event per line) to stdout, which Emscripten sends to `console.log`: the page keeps those lines and they
  are read after `session.endProfiling()`.
Profiles are cut into runs by their `model_run` events; warm-up runs are dropped. Nodes are grouped by op kind
(Conv by depthwise / pointwise 1x1 / regular kxk from its weight shape; Gemm/MatMul; each elementwise op; pooling
and reductions; NCHWc reorders; shape ops); per run each kind's time is summed, and the median (IQR) over runs is
reported. A node's profiled time also holds the profiler's own work (building the event's arguments: several µs,
far more than a small node's compute), so each side also runs a calibration chain of tiny Conv and Sub nodes,
profiled and plain, and that per-node cost is taken off every node. Unprofiled sessions of the model are timed
beside the profiled ones for the whole-model figures. Every session runs a chunk per round, the order flipping
every round, and ratios are paired within a round, so a machine shared with other jobs disturbs both sides alike.

Writes benchmarks/results/op_gap.md and prints it:

    .venv/bin/python benchmarks/op_gap.py --artifacts artifacts [--recipes mobilenet_v2,text_direction]
        [--variant simplified] [--threads 1,2] [--rounds 20] [--seconds-per-chunk 0.2]
        [--raw FILE [--report-only]]   # keep the raw measurements / rewrite the report from them
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_CHUNK = 200  # runs per session per round (profiles hold every event: keep them small)
MAX_WARMUP = 400
CALIB_PAIRS = 50
EVENT_BUDGET = 100_000  # node events per profiled session over the rounds
SESSION_OPTIONS_FILE = "ort-session-options.json"  # a variant's shipped ORT Web session options (runtimes/ort.js)
ORT_WASM = {"module": "ort.wasm.min.mjs", "mjs": "ort-wasm-simd-threaded.mjs", "wasm": "ort-wasm-simd-threaded.wasm"}
LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}
JS_DTYPES = {"float32": "Float32Array", "int64": "BigInt64Array", "int32": "Int32Array", "uint8": "Uint8Array",
             "int8": "Int8Array", "float16": "Uint16Array", "bool": "Uint8Array"}
ORT_DTYPES = {"float32": "float32", "int64": "int64", "int32": "int32", "uint8": "uint8", "int8": "int8",
              "float16": "float16", "bool": "bool"}

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Clip", "Relu", "LeakyRelu", "HardSwish", "HardSigmoid", "Sigmoid",
               "Tanh", "Sum", "Erf", "Gelu", "FastGelu", "BiasGelu", "Sqrt", "Pow", "Exp", "Neg", "Where", "Cast",
               "Max", "Min", "Abs", "PRelu", "Equal", "Not", "Less", "Greater", "QuickGelu", "BatchNormalization"}
POOLING = {"GlobalAveragePool", "GlobalMaxPool", "MaxPool", "AveragePool", "ReduceMean", "ReduceSum", "ReduceMax"}
GEMM = {"Gemm", "MatMul", "FusedGemm", "FusedMatMul", "MatMulNBits"}
LAYOUT = {"ReorderInput", "ReorderOutput", "Transpose"}
SHAPE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat", "Slice", "Gather", "Shape", "Expand",
         "Split"}

# The page: ORT Web's wasm bundle, sessions kept by name, runs in chunks timed with performance.now().
PAGE = """<!doctype html><meta charset="utf-8"><title>op gap</title><script type="module">
// The wasm module binds console.log for its stdout when it is first loaded: keep those lines here, taken in bulk
// (one DevTools event per line would make a profile of 100k lines take minutes).
const logLines = [];
console.log = (...a) => { logLines.push(a.map(String).join(' ')); };
window.opTakeLog = (n) => logLines.splice(0, n);
const sessions = {};
let ort = null;
const feeds = {};
window.opInit = async (threads) => {
  ort = await import('/ort/%(module)s');
  ort.env.wasm.wasmPaths = {mjs: '/ort/%(mjs)s', wasm: '/ort/%(wasm)s'};
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = 'warning';
  return {versions: ort.env.versions, crossOriginIsolated: self.crossOriginIsolated,
          userAgent: navigator.userAgent, hardwareConcurrency: navigator.hardwareConcurrency};
};
window.opOpen = async (name, url, options) => {
  const buf = new Uint8Array(await (await fetch(url)).arrayBuffer());
  sessions[name] = await ort.InferenceSession.create(buf, {executionProviders: ['wasm'], ...options});
  return true;
};
window.opInputs = async (session, specs) => {
  const f = {};
  for (const s of specs) {
    const b = await (await fetch(s.url)).arrayBuffer();
    f[s.name] = new ort.Tensor(s.dtype, new self[s.array](b), s.dims);
  }
  feeds[session] = f;
  return true;
};
window.opRun = async (name, n) => {
  const s = sessions[name], t = [];
  for (let i = 0; i < n; i++) { const a = performance.now(); await s.run(feeds[name]); t.push(performance.now() - a); }
  return t;
};
window.opEnd = async (name) => { await sessions[name].endProfiling(); return true; };
</script>
""" % ORT_WASM


# ------------------------------------------------------------------------------------------------ build layout

def find_build(artifacts: Path, recipe: str, variant: str, version: str | None) -> dict:
    """The variant's model file, its shipped session options and the first evaluation sample of one recipe."""
    base = artifacts / "build" / recipe
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no build of {recipe} (run BuildAll, or pass --artifacts)")
    versions = sorted((p.name for p in base.iterdir() if p.is_dir()),
                      key=lambda v: [int(x) if x.isdigit() else x for x in v.replace("-", ".").split(".")])
    version = version or versions[-1]
    vdir = base / version

    def newest_ok(pattern: str) -> Path:
        found = []
        for d in vdir.glob(pattern):
            res = d / "result.json"
            if res.is_file() and json.loads(res.read_text()).get("status", "ok") == "ok":
                found.append(d)
        if not found:
            raise FileNotFoundError(f"{vdir}/{pattern}: none built")
        return max(found, key=lambda d: (d / "result.json").stat().st_mtime)

    vd = newest_ok(f"Variant-{variant}-*")
    model = vd / "model.onnx"
    if not model.is_file():
        raise FileNotFoundError(f"{model}: the variant is not an ONNX model (ORT variants only)")
    extra = [p for p in vd.iterdir() if p.name not in ("model.onnx", "result.json", SESSION_OPTIONS_FILE)
             and p.is_file()]
    if extra:
        raise ValueError(f"{vd}: external data files ({', '.join(p.name for p in extra)}) are not supported here")
    shipped = json.loads((vd / SESSION_OPTIONS_FILE).read_text()) if (vd / SESSION_OPTIONS_FILE).is_file() else {}
    data = np.load(newest_ok("EvalData-eval-*") / "data.npz")
    sample = {k.split(":", 1)[1]: np.ascontiguousarray(data[k][:1]) for k in data.files if k.startswith("input:")}
    if any(isinstance(v, np.ndarray) and v.dtype == object for v in sample.values()):
        raise ValueError(f"{recipe}: evaluation samples of different sizes are not supported here")
    return {"recipe": recipe, "version": version, "variant": variant, "model": model, "dir": vd,
            "session_options": shipped, "sample": sample}


# ------------------------------------------------------------------------------------------------ classification

def _dims(shape_entry) -> list[int]:
    return list(next(iter(shape_entry.values()))) if shape_entry else []


def op_kind(args: dict) -> str:
    """The op kind of one profiled node, from its op type and (for convolutions) its input shapes."""
    op = args.get("op_name", "?")
    shapes = [_dims(s) for s in args.get("input_type_shape", [])]
    if op in ("Conv", "FusedConv", "NhwcFusedConv", "NhwcConv") and len(shapes) >= 2 and len(shapes[1]) == 4:
        x, w = shapes[0], shapes[1]
        kh, kw = w[2], w[3]
        if w[1] == 1 and len(x) == 4 and x[1] > 1 and kh * kw > 1:
            return f"Conv depthwise {kh}x{kw}"
        if kh == 1 and kw == 1:
            return "Conv pointwise 1x1"
        return f"Conv regular {kh}x{kw}"
    if op in GEMM:
        return "Gemm/MatMul"
    if op in ELEMENTWISE:
        return f"elementwise {op}"
    if op in POOLING:
        return "pooling/reduce"
    if op in LAYOUT:
        return "layout (NCHWc reorder/transpose)"
    if op in SHAPE:
        return "shape/copy"
    return op


# ------------------------------------------------------------------------------------------------ profiles

def runs_of(events: list[dict], skip: int) -> list[dict]:
    """Cut a Chrome-trace profile into runs (its `model_run` events, in order), dropping the first `skip`.
    Each run: its total µs and its nodes (name, op, kind, µs, input shapes)."""
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    out, i = [], 0
    for r in runs:
        end = r["ts"] + r["dur"]
        mine = []
        while i < len(nodes) and nodes[i]["ts"] < r["ts"]:
            i += 1
        while i < len(nodes) and nodes[i]["ts"] <= end:
            n = nodes[i]
            mine.append({"name": n["name"][: -len("_kernel_time")], "op": n["args"].get("op_name"),
                         "kind": op_kind(n["args"]), "us": n["dur"],
                         "shapes": [_dims(s) for s in n["args"].get("input_type_shape", [])]})
            i += 1
        out.append({"us": r["dur"], "nodes": mine})
    return out[skip:]


def parse_console_profile(lines: list[str]) -> list[dict]:
    """The JSON array ORT's wasm profiler printed line by line to the console."""
    start = max(i for i, l in enumerate(lines) if l.strip() == "[")
    body = []
    for l in lines[start:]:
        body.append(l)
        if l.strip() == "]":
            break
    else:
        raise RuntimeError("the wasm profile never ended (no closing ']' on the console)")
    return json.loads("\n".join(body))


def summarize(rounds: list[list[dict]], floor: dict | None = None) -> dict:
    """Profiled runs (one list per round) summed per op kind. Per kind: node count, the median (IQR) over all
    runs of the kind's summed time, and the median per round (for ratios paired round by round); per node: the
    median. `floor` (the profiler's own cost inside each node's kernel_time, for convolutions and for other ops, from
    the calibration chain) is taken off every node (not below 0); `node_sum_raw` keeps the profile's own sum."""
    def t(n):
        return max(0.0, n["us"] - (node_floor(floor, n["op"]) if floor else 0.0)) / 1e3

    runs = [r for rr in rounds for r in rr]
    first = runs[0]["nodes"]
    kinds = sorted({n["kind"] for r in runs for n in r["nodes"]})
    per_kind = {}
    for k in kinds:
        def ksum(r, k=k):
            return sum(t(n) for n in r["nodes"] if n["kind"] == k)
        per_kind[k] = {"count": sum(1 for n in first if n["kind"] == k),
                       "ops": sorted({n["op"] for n in first if n["kind"] == k}),
                       **stats([ksum(r) for r in runs]),
                       "rounds": [float(np.median([ksum(r) for r in rr])) for rr in rounds]}
    per_node = {}
    for idx, n in enumerate(first):
        per_node[n["name"]] = {"op": n["op"], "kind": n["kind"], "shapes": n["shapes"], "order": idx,
                               "ms": float(np.median([t(r["nodes"][idx]) for r in runs if len(r["nodes"]) > idx]))}
    return {"kinds": per_kind, "nodes": per_node, "runs": len(runs), "node_count": len(first),
            "node_sum": stats([sum(t(n) for n in r["nodes"]) for r in runs]),
            "node_sum_raw": stats([sum(n["us"] for n in r["nodes"]) / 1e3 for r in runs]),
            "total": stats([r["us"] / 1e3 for r in runs])}


def paired_ratio(a: list[float], b: list[float]) -> dict:
    """Median (IQR) over rounds of a/b, each round's own medians paired."""
    return stats([x / y for x, y in zip(a, b) if y > 0 and x > 0])


def stats(xs: list[float]) -> dict:
    a = np.asarray(xs, dtype=float)
    if a.size == 0:
        return {"median": None, "iqr": None, "n": 0}
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "iqr": float(q3 - q1), "n": int(a.size)}


# ------------------------------------------------------------------------------------------------ calibration

def calibration_model(path: Path) -> dict:
    """The profiler-cost chain: CALIB_PAIRS x (Conv 1x1 → Sub), all on [1,1,1,1] tensors (4-D shape strings, like
    the models', in each event; no compute to speak of). Profiled, each node's kernel_time is then the profiler's
    own cost per node (for convolutions and for other ops); plain, a run / nodes is what a node costs to run.
    Sub, because no optimizer folds it into the Conv (Add/Mul of a constant, Clip and a residual Add would be)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = [1, 1, 1, 1]
    nodes, prev = [], "x"
    for i in range(CALIB_PAIRS):
        out = "y" if i == CALIB_PAIRS - 1 else f"s{i}"
        nodes.append(helper.make_node("Conv", [prev, "w", "b"], [f"c{i}"], name=f"conv{i}"))
        nodes.append(helper.make_node("Sub", [f"c{i}", "k"], [out], name=f"sub{i}"))
        prev = out
    graph = helper.make_graph(
        nodes, "calibration", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.ones(shape, np.float32), "w"), numpy_helper.from_array(np.zeros(1, np.float32), "b"),
         numpy_helper.from_array(np.full(shape, 1e-3, np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return {"x": np.zeros(shape, np.float32)}


CONV_OPS = {"Conv", "FusedConv", "NhwcConv", "NhwcFusedConv"}


def floors(rounds: list[list[dict]]) -> dict:
    """The calibration chain's kernel_time per node (µs), for its convolutions and for its other nodes: the mean
    over a run's nodes (5 µs-coarse browser timestamps average out), then the median over runs (a run that
    another process interrupted does not count)."""
    runs = [r for rr in rounds for r in rr]

    def per_run(conv: bool):
        xs = [float(np.mean(v)) for r in runs
              if (v := [n["us"] for n in r["nodes"] if (n["op"] in CONV_OPS) == conv])]
        return float(np.median(xs)) if xs else None

    return {"conv": per_run(True), "other": per_run(False)}


def node_floor(fl: dict, op: str) -> float:
    return (fl["conv"] if op in CONV_OPS else fl["other"]) or 0.0


# ------------------------------------------------------------------------------------------------ native side

class Native:
    """onnxruntime sessions at one thread count: the model profiled and plain at each optimization level, and the
    calibration chain profiled and plain (at `extended`: at `all` NCHWc would wrap each Conv in reorders)."""

    def __init__(self, model: Path, sample: dict, calib: Path, calib_sample: dict, threads: int, levels: list[str],
                 tmp: Path):
        import onnxruntime as ort

        self.sessions, self.feeds = {}, {}
        for name, path, feed, level in [*((lv, model, sample, lv) for lv in levels),
                                        ("calibration", calib, calib_sample, "extended")]:
            for profiled in (True, False):
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
                so.log_severity_level = 3
                so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
                if profiled:
                    so.enable_profiling = True
                    so.profile_file_prefix = str(tmp / f"native_{name}_{threads}")
                key = f"native {name}{' profiled' if profiled else ''}"
                self.sessions[key] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                self.feeds[key] = feed

    def run(self, key: str, n: int) -> list[float]:
        s, feed, t = self.sessions[key], self.feeds[key], []
        for _ in range(n):
            a = time.perf_counter()
            s.run(None, feed)
            t.append((time.perf_counter() - a) * 1e3)
        return t

    def end(self, key: str) -> list[dict]:
        path = Path(self.sessions[key].end_profiling())
        events = json.loads(path.read_text())
        path.unlink()
        return events


# ------------------------------------------------------------------------------------------------ browser side

class Browser:
    """One Chromium page (cross-origin isolated, served by the project's static server) with ORT Web's wasm
    bundle at `threads` threads: the model and the calibration chain, each in a profiled and a plain session."""

    def __init__(self, pw, model: Path, sample: dict, calib: Path, calib_sample: dict, threads: int, options: dict,
                 tmp: Path):
        from browser_validate.browser import CHROMIUM_ARGS
        from browser_validate.runtimes import RUNTIMES
        from browser_validate.server import StaticServer

        site = tmp / "site"
        site.mkdir()
        (site / "index.html").write_text(PAGE)
        shutil.copy(model, site / "model.onnx")
        shutil.copy(calib, site / "calibration.onnx")
        self.server = StaticServer()
        self.server.mount("/site/", site)
        self.server.mount("/ort/", RUNTIMES["ort"].static_mount[1])
        exe = os.environ.get("BROWSER_VALIDATE_CHROMIUM") or shutil.which("chromium")
        self.browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        self.version = self.browser.version
        self.page = self.browser.new_context().new_page()
        self.page.set_default_timeout(600_000)
        self.page.goto(self.server.origin + "/site/index.html")
        self.env = self.page.evaluate("t => window.opInit(t)", threads)
        if threads > 1 and not self.env["crossOriginIsolated"]:
            raise RuntimeError("the page is not cross-origin isolated: wasm threads unavailable")
        opts = {"graphOptimizationLevel": "all", **options}
        for name, url, feed, o in (("model", "/site/model.onnx", sample, opts),
                                   ("calibration", "/site/calibration.onnx", calib_sample,
                                    {"graphOptimizationLevel": "all"})):
            specs = []
            for i, (input_name, arr) in enumerate(feed.items()):
                dt = str(arr.dtype)
                if dt not in JS_DTYPES:
                    raise ValueError(f"input {input_name}: dtype {dt} not supported here")
                arr.tofile(site / f"{name}_input{i}.bin")
                specs.append({"name": input_name, "url": f"/site/{name}_input{i}.bin", "dtype": ORT_DTYPES[dt],
                              "array": JS_DTYPES[dt], "dims": list(arr.shape)})
            for profiled in (True, False):
                key = f"{name}{' profiled' if profiled else ''}"
                self.page.evaluate("([k, u, a]) => window.opOpen(k, u, a)",
                                   [key, url, {**o, "enableProfiling": profiled}])
                self.page.evaluate("([k, s]) => window.opInputs(k, s)", [key, specs])

    def run(self, key: str, n: int) -> list[float]:
        return self.page.evaluate("([k, n]) => window.opRun(k, n)", [key, n])

    def end(self, key: str) -> list[dict]:
        self.page.evaluate("n => window.opTakeLog(n)", 1 << 30)  # drop anything logged before
        self.page.evaluate("k => window.opEnd(k)", key)
        lines: list[str] = []
        deadline = time.time() + 120
        while time.time() < deadline:  # the last lines may arrive after the call returns
            got = self.page.evaluate("n => window.opTakeLog(n)", 50_000)
            lines += got
            if not got and any(l.strip() == "]" for l in lines[-3:]):
                break
            if not got:
                self.page.wait_for_timeout(100)
        return parse_console_profile(lines)

    def close(self):
        try:
            self.browser.close()
        finally:
            self.server.close()


# ------------------------------------------------------------------------------------------------ measuring

def measure_model(pw, build: dict, threads: int, rounds: int, chunk_s: float, warmup_s: float, tmp: Path,
                  log) -> dict:
    """Profiled and plain sessions of the model (and of the calibration chain) on both sides at `threads`, in
    alternating rounds. Returns the profiled runs per round (warm-up dropped), the plain sessions' run times and
    the calibration: the profiler's own cost per node and a plain node's cost, on each side."""
    import onnx

    shipped_level = build["session_options"].get("graphOptimizationLevel", "all")
    levels = list(dict.fromkeys([shipped_level, "all", "extended"]))
    calib = tmp / "calibration.onnx"
    calib_sample = calibration_model(calib)
    native = Native(build["model"], build["sample"], calib, calib_sample, threads, levels, tmp)
    browser = Browser(pw, build["model"], build["sample"], calib, calib_sample, threads, build["session_options"],
                      tmp)
    sessions = {k: (lambda n, k=k: native.run(k, n)) for k in native.sessions}
    sessions.update({f"browser {k}": (lambda n, k=k: browser.run(k, n))
                     for k in ("model profiled", "model", "calibration profiled", "calibration")})
    try:
        # Warm-up: at least `warmup_s` seconds (native: a quarter) and 10 runs per session (Chromium tiers wasm
        # code up while it runs).
        warm = {k: _warm(fn, warmup_s if k.startswith("browser") else warmup_s / 4) for k, fn in sessions.items()}
        per_run_ms = {k: float(np.median(t[-5:])) for k, t in warm.items()}
        # Profiles keep every event until the end (and the page prints them line by line): a budget of events per
        # profiled session bounds its runs per round.
        nodes = {"model": len(onnx.load(str(build["model"]), load_external_data=False).graph.node),
                 "calibration": 2 * CALIB_PAIRS}
        cap = {k: (max(3, EVENT_BUDGET // (rounds * nodes["calibration" if "calibration" in k else "model"]))
                   if k.endswith("profiled") else MAX_CHUNK) for k in sessions}
        chunk = {k: min(cap[k], max(3, int(chunk_s * 1e3 / max(v, 1e-3)))) for k, v in per_run_ms.items()}
        log("  warm: " + ", ".join(f"{k} {v:.3g} ms x{chunk[k]}" for k, v in per_run_ms.items()))
        times = {k: [] for k in sessions}  # per session: one list of run times per round
        for r in range(rounds):
            for k in (list(sessions) if r % 2 == 0 else list(reversed(list(sessions)))):
                times[k].append(sessions[k](chunk[k]))
            log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {np.median(v[-1]):.3g}" for k, v in times.items()))

        def by_round(events, k):  # the profiled runs, warm-up dropped, cut into the rounds they ran in
            runs = runs_of(events, skip=len(warm[k]))
            if len(runs) != rounds * chunk[k]:
                raise RuntimeError(f"{k}: {len(runs)} profiled runs, expected {rounds} x {chunk[k]}")
            return [runs[i * chunk[k]:(i + 1) * chunk[k]] for i in range(rounds)]

        profiles = {k: by_round(browser.end(k[len("browser "):]), k)
                    for k in ("browser model profiled", "browser calibration profiled")}
        profiles.update({k: by_round(native.end(k), k) for k in native.sessions if k.endswith(" profiled")})
    finally:
        browser.close()
    plain_rounds = {k: [float(np.median(c)) for c in v] for k, v in times.items()}
    calib_nodes = {side: len(profiles[f"{side} calibration profiled"][0][0]["nodes"]) for side in ("browser", "native")}
    return {
        "threads": threads, "shipped_level": shipped_level, "levels": levels,
        "browser_runs": profiles["browser model profiled"],
        "native_runs": {lv: profiles[f"native {lv} profiled"] for lv in levels},
        "plain": {k: stats([x for c in v for x in c]) for k, v in times.items()},
        "plain_rounds": plain_rounds,
        "calibration": {
            "floor_us": {"browser": floors(profiles["browser calibration profiled"]),
                         "native": floors(profiles["native calibration profiled"])},
            "node_us": {side: 1e3 * float(np.median(plain_rounds[f"{side} calibration"])) / calib_nodes[side]
                        for side in ("browser", "native")},
            "nodes": calib_nodes},
        "browser_env": browser.env, "browser_version": browser.version}


def _warm(fn, seconds: float) -> list[float]:
    t0, times = time.perf_counter(), []
    while len(times) < 10 or (time.perf_counter() - t0 < seconds and len(times) < MAX_WARMUP):
        times += fn(5)
    return times


# ------------------------------------------------------------------------------------------------ report

def fmt(v, nd=3):
    return "–" if v is None else f"{v:.{nd}g}"


def fmt_ms(s: dict | None, nd=3) -> str:
    if not s or s.get("median") is None:
        return "–"
    return f"{s['median']:.{nd}g} ({s['iqr']:.2g})"


def analyse(res: dict) -> dict:
    """Per-kind summaries of the profiled runs, each side with its own profiler cost per node taken off."""
    fl = res["calibration"]["floor_us"]
    return {"browser": summarize(res["browser_runs"], fl["browser"]),
            "ship": summarize(res["native_runs"][res["shipped_level"]], fl["native"]),
            "same": summarize(res["native_runs"]["extended"], fl["native"])}


def fmt_ratio(r: dict | None) -> str:
    if not r or r.get("median") is None:
        return "–"
    return f"{r['median']:.3g} ({r['iqr']:.2g})"


def kind_rows(res: dict) -> dict:
    """Per op kind: browser and native ms, ratios (paired by round), share of the browser's node time, excess."""
    lv = res["shipped_level"]
    an = analyse(res)
    b, ns, ne = an["browser"], an["ship"], an["same"]
    rows = {}
    for k in set(b["kinds"]) | set(ns["kinds"]) | set(ne["kinds"]):
        bk, nk, ek = b["kinds"].get(k), ns["kinds"].get(k), ne["kinds"].get(k)
        bm, nm, em = ((x or {}).get("median") or 0.0 for x in (bk, nk, ek))
        ratio = paired_ratio(bk["rounds"], nk["rounds"]) if bk and nk else None
        ratio_same = paired_ratio(bk["rounds"], ek["rounds"]) if bk and ek else None
        rows[k] = {"browser": bm, "native": nm, "same": em,
                   "native_us_per_node": 1e3 * nm / nk["count"] if nk and nk["count"] else 0.0,
                   "ratio": ratio["median"] if ratio else None, "ratio_iqr": ratio,
                   "ratio_same": ratio_same["median"] if ratio_same else None, "ratio_same_iqr": ratio_same,
                   "excess": bm - nm, "excess_same": bm - em, "b": bk, "n": nk, "e": ek}
    bsum = sum(r["browser"] for r in rows.values())  # the kinds' medians: shares add up to 100 %
    for r in rows.values():
        r["share"] = r["browser"] / bsum
    return {"lv": lv, "an": an, "rows": rows}


def best_observed(results: list, threads: int, min_node_us: float) -> tuple | None:
    """The lowest browser/native ratio of any compute-bound op kind (native time per node at least `min_node_us`,
    so that neither per-node overhead nor the profiler correction decides it) over every model measured at
    `threads`: (ratio, recipe, kind)."""
    cands = [(r["ratio"], build["recipe"], k) for build, res in results if res["threads"] == threads
             for k, r in kind_rows(res)["rows"].items() if r["ratio"] and r["native_us_per_node"] >= min_node_us]
    return min(cands) if cands else None


def model_section(build: dict, res: dict, best_obs: tuple | None, min_node_us: float) -> tuple[list[str], dict]:
    kr = kind_rows(res)
    lv, an, rows = kr["lv"], kr["an"], kr["rows"]
    cal = res["calibration"]
    b, ns, ne = an["browser"], an["ship"], an["same"]
    plain, pr = res["plain"], res["plain_rounds"]
    pr = {"browser plain": pr["browser model"], **pr}
    bp, np_, ne_p = plain["browser model"], plain[f"native {lv}"], plain["native extended"]
    btot, ntot, etot = bp["median"], np_["median"], ne_p["median"]
    whole = paired_ratio(pr["browser plain"], pr[f"native {lv}"])
    whole_same = paired_ratio(pr["browser plain"], pr["native extended"])
    kinds = sorted(rows, key=lambda k: (-rows[k]["browser"], -rows[k]["native"]))
    lines = [
        f"### {build['recipe']} {build['version']}, variant `{build['variant']}`, {res['threads']} thread(s)",
        "",
        f"`{build['model']}`. Browser graph optimization `{lv}` (as the measuring page and the loader); native at "
        f"`{lv}` (what the pipeline pairs with) and at `extended` (the wasm graph's kernels). {b['runs']} profiled "
        f"runs in the browser, {ns['runs']} / {ne['runs']} natively (`{lv}` / `extended`), in "
        f"{len(pr['browser plain'])} rounds. ms: median (IQR) over runs of the kind's summed node time, the "
        f"profiler's cost per node taken off; ratio: browser / native, median (IQR) over rounds of the per-round "
        f"ratio; share: of the browser's summed node time (after the correction). Profiler cost per node "
        f"(calibration chain, same page and "
        f"rounds): browser {fmt(cal['floor_us']['browser']['conv'])} µs per Conv, "
        f"{fmt(cal['floor_us']['browser']['other'])} µs per other node; native {fmt(cal['floor_us']['native']['conv'])}"
        f" / {fmt(cal['floor_us']['native']['other'])} µs. A plain chain node costs {fmt(cal['node_us']['browser'])} µs"
        f" in the browser, {fmt(cal['node_us']['native'])} µs natively.",
        "",
        f"| op kind | nodes browser / `{lv}` / `extended` | ops | browser ms | native `{lv}` ms | ratio |"
        f" native `extended` ms | ratio vs `extended` | µs per node browser / `{lv}` | share of browser node time |"
        f" browser − native ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in kinds:
        r = rows[k]
        bk, nk, ek, bm, nm = r["b"], r["n"], r["e"], r["browser"], r["native"]
        ratio, ratio_same = r["ratio_iqr"], r["ratio_same_iqr"]
        ops = sorted(set((bk or {}).get("ops", [])) | set((nk or {}).get("ops", [])) | set((ek or {}).get("ops", [])))
        per_node = (f"{fmt(1e3 * bm / bk['count'], 2) if bk else '–'} / "
                    f"{fmt(1e3 * nm / nk['count'], 2) if nk else '–'}")
        lines.append(
            f"| {k} | {bk['count'] if bk else 0} / {nk['count'] if nk else 0} / {ek['count'] if ek else 0}"
            f" | {', '.join(ops)} | {fmt_ms(bk)} | {fmt_ms(nk)} | {fmt_ratio(ratio)} | {fmt_ms(ek)}"
            f" | {fmt_ratio(ratio_same)} | {per_node} | {fmt(100 * rows[k]['share'], 3)} % | {bm - nm:+.3g} |")
    rest = {side: tot - sum(rows[k][col] for k in rows) for side, tot, col in
            (("b", btot, "browser"), ("n", ntot, "native"), ("e", etot, "same"))}
    nu = cal["node_us"]
    lines.append(
        f"| *rest of the run (plain run − Σ kinds)* | | expected ≈ nodes × plain cost per node: "
        f"{fmt(b['node_count'] * nu['browser'] / 1e3)} / {fmt(ns['node_count'] * nu['native'] / 1e3)}"
        f" ms | {fmt(rest['b'])} | {fmt(rest['n'])} | | {fmt(rest['e'])} | | | {fmt(100 * rest['b'] / btot, 3)} % |"
        f" {rest['b'] - rest['n']:+.3g} |")
    lines.append(
        f"| **whole run, not profiled** | {b['node_count']} / {ns['node_count']} / {ne['node_count']} | |"
        f" {fmt_ms(bp)} | {fmt_ms(np_)} | **{fmt_ratio(whole)}** | {fmt_ms(ne_p)} | {fmt_ratio(whole_same)} | |"
        f" 100 % | {btot - ntot:+.3g} |")
    lines.append(
        f"| *whole run, profiled (Σ nodes as profiled)* | | | {fmt_ms(b['total'])} ({fmt(b['node_sum_raw']['median'])})"
        f" | {fmt_ms(ns['total'])} ({fmt(ns['node_sum_raw']['median'])}) | | {fmt_ms(ne['total'])}"
        f" ({fmt(ne['node_sum_raw']['median'])}) | | | | |")
    lines.append("")

    # The kind that holds it back: the largest excess over native. The best ratio observed: the lowest of any kind
    # that is compute-bound (native time per node >= min_node_us) in any model at this thread count.
    # What-ifs are worked out on node time (the kinds' sums, both sides measured the same way): the rest of the
    # run is small and alike on both sides (see its row).
    bn, nn = sum(r["browser"] for r in rows.values()), sum(r["native"] for r in rows.values())
    excess_total = bn - nn
    worst = max(rows, key=lambda k: rows[k]["excess"])
    w = rows[worst]
    best_ratio, best_recipe, best = best_obs if best_obs else (None, None, None)
    improves = best_ratio is not None and w["ratio"] is not None and best_ratio < w["ratio"]
    gap_after = (bn - w["browser"] + w["native"] * best_ratio) / nn if improves else None
    gap_2x = (bn - w["browser"] + w["native"] * 2.0) / nn
    top2 = sorted(rows, key=lambda k: -rows[k]["excess"])[:2]
    gap_2x_top2 = (bn - sum(rows[k]["browser"] - min(rows[k]["browser"], 2.0 * rows[k]["native"])
                            for k in top2)) / nn
    worst_same = max(rows, key=lambda k: rows[k]["excess_same"])
    ws = rows[worst_same]
    second = sorted(rows, key=lambda k: -rows[k]["excess"])[1:3]
    lines.append(
        f"**Held back by {worst}**: {fmt(w['browser'])} ms in the browser against {fmt(w['native'])} ms natively "
        f"(×{fmt(w['ratio'])}), {fmt(100 * w['share'], 3)} % of the browser's node time and "
        f"{fmt(100 * w['excess'] / excess_total, 3)} % of the {fmt(excess_total)} ms by which the browser's node "
        f"time ({fmt(bn)} ms) exceeds native's ({fmt(nn)} ms, ×{fmt(bn / nn)}) (next: "
        + ", ".join(f"{k} {rows[k]['excess']:+.3g} ms, ×{fmt(rows[k]['ratio'])}" for k in second)
        + f"). Whole model, not profiled: ×{fmt(whole['median'])} ({fmt(btot)} ms vs {fmt(ntot)} ms). "
        + (f"If {worst} ran at the best ratio observed for a compute-bound op kind (≥ {min_node_us:g} µs per node "
           f"natively) in any model at this thread count (×{fmt(best_ratio)}, {best} in {best_recipe}) it would "
           f"take {fmt(w['native'] * best_ratio)} ms and the model's node time would be ×{fmt(gap_after)} native; "
           if improves else
           f"{worst} already runs at the best ratio observed for a compute-bound op kind (≥ {min_node_us:g} µs per "
           f"node natively) at this thread count (×{fmt(best_ratio)}, {best} in {best_recipe}); "
           if best_ratio is not None else "")
        + f"with it at ×2 (the wasm limit: 128-bit SIMD, no FMA), ×{fmt(gap_2x)}; with {top2[0]} and {top2[-1]} both at "
        f"×2 (or below), ×{fmt(gap_2x_top2)}. "
        f"Against native's own non-NCHWc kernels (`extended`: whole model ×{fmt(whole_same['median'])}) the "
        f"largest excess is {worst_same} (×{fmt(ws['ratio_same'])}, {ws['excess_same']:+.3g} ms).")
    lines.append("")
    lines.append(f"Excess over native `{lv}` by kind (browser − native, ms): " + "; ".join(
        f"{k} {r['excess']:+.3g}" for k, r in sorted(rows.items(), key=lambda kv: -kv[1]["excess"])
        if abs(r["excess"]) >= 0.01 * abs(excess_total)) + f"; rest of the run {rest['b'] - rest['n']:+.3g}.")
    lines.append("")

    top = sorted(b["nodes"].items(), key=lambda kv: -kv[1]["ms"])[:10]
    lines += ["Slowest browser nodes (median ms, profiler cost taken off; native `extended`: the node of the same "
              "name, whose op may differ where wasm folded a residual Add into the Conv):", "",
              "| node | kind | op browser / native | input, weight shapes | browser ms | native `extended` ms | ratio |",
              "|---|---|---|---|---|---|---|"]
    for name, n in top:
        e = ne["nodes"].get(name)
        em = e["ms"] if e else None
        shp = ", ".join("x".join(map(str, d)) or "scalar" for d in n["shapes"][:2])
        lines.append(f"| {name} | {n['kind']} | {n['op']} / {e['op'] if e else '–'} | {shp} | {fmt(n['ms'])}"
                     f" | {fmt(em)} | {fmt(n['ms'] / em if em else None)} |")
    lines.append("")
    summary = {"worst": worst, "ratio": w["ratio"], "ratio_same": w["ratio_same"], "share": w["share"],
               "whole": whole, "whole_same": whole_same, "best": f"{best} in {best_recipe}", "best_ratio": best_ratio,
               "gap_after": gap_after, "gap_2x": gap_2x, "gap_2x_top2": gap_2x_top2, "top2": top2,
               "browser_ms": btot, "native_ms": ntot, "node_ratio": bn / nn}
    return lines, summary


def machine_lines(chromium: str, page_env: dict, load: tuple | None = None) -> list[str]:
    import onnxruntime as ort

    flags = set()
    model_name = "?"
    try:
        for l in Path("/proc/cpuinfo").read_text().splitlines():
            if l.startswith("flags") and not flags:
                flags = set(l.split(":", 1)[1].split())
            if l.startswith("model name") and model_name == "?":
                model_name = l.split(":", 1)[1].strip()
    except OSError:
        pass
    shown = sorted(f for f in flags if f.startswith(("avx512", "avx_vnni", "amx")) or f in ("avx2", "fma"))
    load = load or os.getloadavg()
    return [
        f"- CPU: {model_name}, {os.cpu_count()} cores; flags: {' '.join(shown) or 'none of avx2/fma/avx512/vnni'}",
        f"- native: onnxruntime {ort.__version__} (Python {platform.python_version()}, CPUExecutionProvider)",
        f"- browser: onnxruntime-web {page_env.get('versions', {}).get('web')} wasm "
        f"(`{ORT_WASM['wasm']}`: 128-bit SIMD, threads), {chromium} "
        f"(headless; crossOriginIsolated={page_env.get('crossOriginIsolated')})",
        f"- load average at the end: {', '.join(f'{x:.2f}' for x in load) if load else '?'} "
        f"(the machine is shared: native and browser chunks alternate, medians with IQR)",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", default="artifacts", help="build folder with build/<recipe>/<version>/…")
    ap.add_argument("--recipes", default="mobilenet_v2,text_direction")
    ap.add_argument("--variant", default="simplified")
    ap.add_argument("--version", default=None, help="default: the highest version built")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=20, help="alternating rounds over every session")
    ap.add_argument("--seconds-per-chunk", type=float, default=0.2, help="per session per round (at least 3 runs)")
    ap.add_argument("--warmup-seconds", type=float, default=4.0, help="per browser session (native: a quarter)")
    ap.add_argument("--best-ratio-min-node-us", type=float, default=10.0,
                    help="the best observed ratio counts kinds with at least this native time per node (µs)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "op_gap.md"))
    ap.add_argument("--raw", default=None, help="also keep the raw measurements in this file (pickle)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from --raw, measuring nothing")
    a = ap.parse_args()
    artifacts = Path(a.artifacts)
    if not artifacts.is_absolute() and not artifacts.exists():
        artifacts = ROOT / artifacts
    threads = [int(t) for t in a.threads.split(",")]
    recipes = a.recipes.split(",")
    when, load = None, None

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    if a.report_only:
        saved = pickle.loads(Path(a.raw).read_bytes())
        results, started = saved["results"], time.time() - saved["seconds"]
        when, load = saved.get("when"), saved.get("load")
        results = [(b, r) for b, r in results if b["recipe"] in recipes and r["threads"] in threads]
    else:
        from playwright.sync_api import sync_playwright

        try:
            builds = [find_build(artifacts, r, a.variant, a.version) for r in recipes]
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        results = []
        pw = sync_playwright().start()
        try:
            with tempfile.TemporaryDirectory(prefix="op_gap_") as tmp:
                for t in threads:
                    for build in builds:
                        log(f"{build['recipe']} {build['version']} {a.variant}, {t} thread(s)")
                        d = Path(tmp) / f"{build['recipe']}_{t}"
                        d.mkdir()
                        res = measure_model(pw, build, t, a.rounds, a.seconds_per_chunk, a.warmup_seconds, d, log)
                        log(f"  calibration: {res['calibration']}")
                        results.append(({k: v for k, v in build.items() if k != "sample"}, res))
        finally:
            pw.stop()
        if a.raw:
            Path(a.raw).write_bytes(pickle.dumps({"results": results, "seconds": time.time() - started,
                                                  "when": datetime.now(timezone.utc), "load": os.getloadavg()}))
    results.sort(key=lambda br: (recipes.index(br[0]["recipe"]), br[1]["threads"]))
    chromium = (subprocess.run(["chromium", "--version"], capture_output=True, text=True, check=False).stdout.strip()
                or f"Chromium {results[0][1]['browser_version']}")
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                    if k not in ("out", "raw", "report_only") and v is not None and v != ap.get_default(k))
    cal_lines = []
    for build, res in results:
        c = res["calibration"]
        cal_lines.append(
            f"| {build['recipe']} | {res['threads']} | {fmt(c['floor_us']['browser']['conv'])} /"
            f" {fmt(c['floor_us']['browser']['other'])} | {fmt(c['floor_us']['native']['conv'])} /"
            f" {fmt(c['floor_us']['native']['other'])} | {fmt(c['node_us']['browser'])} | {fmt(c['node_us']['native'])} |")
    lines = [
        "# Which op holds each model back in the browser: per-op time, native vs ORT Web wasm",
        "",
        f"Measured {when or datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {time.time() - started:.0f} s. "
        f"Regenerate (from the repository root, with a build's artifacts folder): "
        f"`{('.venv/bin/python benchmarks/op_gap.py ' + args).strip()}`.",
        "",
        *machine_lines(chromium, results[0][1]["browser_env"], load),
        "",
        "## How",
        "The build's variant file, profiled per node on both sides at the same thread count: natively with "
        "onnxruntime's `SessionOptions.enable_profiling`, in headless Chromium with onnxruntime-web's wasm backend "
        "and the session option `enableProfiling: true` (its wasm build writes the profile to stdout, which "
        "Emscripten hands to `console.log`, one event per line, at `session.endProfiling()`; the page keeps "
        "those lines; it is served with COOP/COEP by the project's static server). Profiles are cut into runs at their `model_run` events, warm-up runs "
        "dropped; nodes are grouped by op kind (Conv by its weight: depthwise, pointwise 1x1, regular kxk; "
        "Gemm/MatMul; elementwise per op; pooling/reduce; NCHWc reorders; shape ops); per run a kind's node times "
        "are summed, and the median (IQR) over runs is shown. Unprofiled sessions run beside them, in the same "
        "alternating rounds (every session once per round, the order flipped every round): their medians give "
        "the whole-model time; ratios are paired round by round (browser / native within "
        "a round, then the median and IQR over rounds), so load from other jobs on the machine cancels out as "
        "far as it can.",
        "",
        "Native is shown twice. At `all` it is what the pipeline pairs with: on this x86 CPU onnxruntime's NCHWc "
        "transformer swaps Conv for blocked-layout AVX-512 kernels (op `Conv` in domain com.microsoft.nchwc, "
        "plus `ReorderInput`/`ReorderOutput`). The wasm build has no NCHWc kernels, so its graph at `all` is "
        "native's at `extended` (FusedConv with the activation folded in, run by MLAS's generic convolution "
        "path; the wasm profile shows no NCHWc node), except that it also folds a residual Add into the preceding Conv (a FusedConv with a sum "
        "input): in the browser those Adds count under the Conv's kind, natively (both levels) under "
        "elementwise Add; the node counts per kind show where.",
        "",
        "The profiler's own cost: each node's `kernel_time` also covers building the event's arguments (op name, "
        "shapes as strings, sizes): several µs per node, more in wasm than natively, while a small node costs "
        "well under 1 µs unprofiled. Left in, it would inflate kinds made of many small nodes (elementwise) on "
        f"both sides. So each page and native process also runs a calibration chain, {CALIB_PAIRS} x (Conv 1x1 → "
        "Sub) on [1,1,1,1] tensors, profiled and plain, in the same rounds: its nodes' mean kernel_time is the "
        "profiler's cost per Conv and per other node, taken off every node of the model (not below 0). What "
        "remains of a plain run after the kinds is the 'rest of the run' (executor, allocation, the JS↔wasm "
        "call, and whatever the correction misses); it should be near nodes × a plain chain node's cost.",
        "",
        "| model | threads | profiler cost per node, browser µs (Conv / other) | native µs (Conv / other) |"
        " plain chain node, browser µs | native µs |",
        "|---|---|---|---|---|---|",
        *cal_lines,
        "",
        "Native timestamps are whole µs (truncated); the page's `performance.now()` is 5 µs-coarse (with "
        "jitter), which averages out over the runs in the medians of per-run sums but not in single nodes.",
        "",
        "## Summary",
        "",
        "| model | threads | whole model browser / native ms | ratio (IQR over rounds) (vs native without NCHWc) |"
        " node time ratio | held back by | its ratio (vs without NCHWc) | its share of the browser's node time |"
        " node time ratio if it ran at the best observed kind's ratio | … at ×2 | the top two kinds at ×2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    sections = []
    for build, res in results:
        sec, sm = model_section(build, res, best_observed(results, res["threads"], a.best_ratio_min_node_us),
                                a.best_ratio_min_node_us)
        sections += sec
        lines.append(
            f"| {build['recipe']} | {res['threads']} | {fmt(sm['browser_ms'])} / {fmt(sm['native_ms'])}"
            f" | ×{fmt_ratio(sm['whole'])} (×{fmt(sm['whole_same']['median'])}) | ×{fmt(sm['node_ratio'])} | {sm['worst']}"
            f" | ×{fmt(sm['ratio'])} (×{fmt(sm['ratio_same'])}) | {fmt(100 * sm['share'], 3)} %"
            f" | {'×' + fmt(sm['gap_after']) + ' (' + sm['best'] + ' ×' + fmt(sm['best_ratio']) + ')' if sm['gap_after'] else '–'}"
            f" | ×{fmt(sm['gap_2x'])} | ×{fmt(sm['gap_2x_top2'])} ({' + '.join(sm['top2'])}) |")
    if max(threads) >= (os.cpu_count() or 1):
        lines += ["", f"{max(threads)} threads on this {os.cpu_count()}-core machine leave no core for anything else "
                  "(the browser, the driver, other jobs): read those rows by their IQR."]
    lines += ["", "## Per model", ""] + sections
    text = "\n".join(lines) + "\n"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
