"""Candidates measured on a browser host with a real GPU, by the pipeline's own measuring code.

WebGPU figures from this build machine come from SwiftShader (software): correctness only. This benchmark takes
candidates a build already made and measures them where a GPU is, the way BuildAll measures on a remote browser
host (README: "Where measurements run"): a Playwright browser server on the GPU machine, the measuring page,
runtime and model routed to it through Playwright's connection, `measure_in_browser` (what BrowserMeasure calls)
producing the same record (accuracy against the reference outputs, latency, cold start, device and adapter).

    # here: bundle candidates of a finished build (model files, evaluation inputs, reference outputs, recipe) and
    # the runtime files they load
    .venv/bin/python benchmarks/gpu_host.py pack --build artifacts/build --recipes recipes --out .gpu/jobs \\
        mobilenet_v2:fp32:webgpu mobilenet_v2:litert_fp32:webgpu text_direction:fp32:wasm:cores ...
    # on the GPU machine (Chromium and the NVIDIA Vulkan driver set up as in shared/GPU.md): start
    # `playwright run-server` there, connect as host class --device-class, measure, write results
    python benchmarks/gpu_host.py run --jobs .gpu/jobs --chromium /path/chromium --device-class nvidia-h100 --out DIR

`run` writes results.json (every record) and results.md (a table); benchmarks/results/gpu_host.md keeps one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import platform
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The flags shown to give Chromium a hardware WebGPU adapter on a headless NVIDIA Linux machine (shared/GPU.md):
# --disable-gpu-compositing is the one without which requestAdapter() returns null there.
GPU_ARGS = ["--disable-dev-shm-usage", "--use-angle=vulkan", "--enable-features=Vulkan", "--disable-vulkan-surface",
            "--disable-gpu-compositing",
            "--ignore-gpu-blocklist"]


def _newest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"pack: nothing matches {folder / pattern}")
    return found[-1]


def pack(args) -> None:
    from browser_validate.runtimes import RUNTIMES
    from pipeline.evaluate.reference import load_reference
    from pipeline.evaluate.samples import load
    from pipeline.families import variant
    from pipeline.recipe import load_recipe

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "node_modules").mkdir(parents=True)
    runtime_urls: set[str] = set()
    jobs = []
    for i, cand in enumerate(args.candidates):
        name, var, target, *threads = cand.split(":")
        recipe = load_recipe(Path(args.recipes) / f"{name}.yaml")
        spec = variant(var)
        base = _newest(Path(args.build) / name, "*/ReferenceOutputs-*").parent
        vdir = _newest(base, f"Variant-{var}-*")
        files = [vdir / f for f in json.loads((vdir / "result.json").read_text())["files"]]
        inputs, labels = load(_newest(base, "EvalData-eval-*"))
        job = out / (f"{i:02d}-{name}-{var}-{target}" + (f"-t{threads[0]}" if threads else ""))
        job.mkdir(parents=True)
        model = out / "models" / f"{name}-{var}"  # one copy per variant, whatever targets measure it
        if not model.exists():
            model.mkdir(parents=True)
            for f in files:
                shutil.copy2(f, model / f.name)
        data = out / "data" / name  # one copy per recipe
        if not data.exists():
            data.mkdir(parents=True)
            np.savez_compressed(data / "inputs.npz", **inputs)
            np.savez_compressed(data / "reference.npz", **load_reference(_newest(base, "ReferenceOutputs-*")))
            if labels is not None:
                np.save(data / "labels.npy", labels)
        (job / "job.pkl").write_bytes(pickle.dumps({
            "recipe": recipe, "target": target, "threads": threads[0] if threads else None,
            "spec": {"name": spec.name, "runtime": spec.runtime, "required_features": dict(spec.required_features)},
            "model": model.name, "files": [f.name for f in files]}))
        # The runtime files a measurement of this candidate loaded in the build (what the page will ask for).
        for rec in sorted(base.glob(f"Browser-{var}-{target}*/result.json")):
            runtime_urls.update(f["url"] for f in json.loads(rec.read_text()).get("runtime_files") or [])
        jobs.append(job.name)
    mounts = {r.static_mount[0]: r.static_mount[1] for r in RUNTIMES.values() if r.static_mount}
    for url in sorted(runtime_urls):
        prefix = next((p for p in mounts if url.startswith(p)), None)
        if prefix is None:  # the adapters in browser_validate/runtimes travel with the repository
            continue
        src = mounts[prefix] / url[len(prefix):]
        dst = out / "node_modules" / src.relative_to(ROOT / "browser_validate" / "node_modules")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    (out / "jobs.json").write_text(json.dumps(jobs, indent=1))
    print(f"packed {len(jobs)} candidates, {len(runtime_urls)} runtime files into {out}")


def run(args) -> None:
    from browser_validate.harness import CHROMIUM_ARGS
    from pipeline.evaluate.browser import measure_in_browser
    from pipeline.evaluate.metrics import latency_stats
    from pipeline.hosts import BrowserHost, browser_server

    jobs_dir, out = Path(args.jobs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nm = ROOT / "browser_validate" / "node_modules"
    if (jobs_dir / "node_modules").is_dir() and not nm.exists():
        shutil.copytree(jobs_dir / "node_modules", nm)
    # The browser's own libraries for the server and Chromium alone (not this Python): Chromium inherits the server's
    # environment (a client's launch `env` does not reach the browser through the server).
    env = {**os.environ, **({"LD_LIBRARY_PATH": args.browser_lib_path} if args.browser_lib_path else {})}
    server = contextlib.ExitStack()
    endpoint = server.enter_context(browser_server(out / "browser-server.log", env=env, timeout_s=90))
    args_ = [a for a in CHROMIUM_ARGS if a != "--enable-unsafe-swiftshader"] + GPU_ARGS
    host = BrowserHost(name="gpu", endpoint=endpoint, device_class=args.device_class, cpu=args.cpu or _cpu(),
                       launch={"executablePath": args.chromium, "args": args_, "headless": True})
    records = []
    try:
        for name in json.loads((jobs_dir / "jobs.json").read_text()):
            if args.only and not any(o in name for o in args.only):
                continue
            job = jobs_dir / name
            j = pickle.loads((job / "job.pkl").read_bytes())
            recipe, target = j["recipe"], j["target"]
            spec = SimpleNamespace(**j["spec"])
            data = jobs_dir / "data" / recipe.name
            inputs, reference = dict(np.load(data / "inputs.npz")), dict(np.load(data / "reference.npz"))
            labels = np.load(data / "labels.npy") if (data / "labels.npy").exists() else None
            rec_out = out / name
            rec_out.mkdir(exist_ok=True)
            t = time.monotonic()
            try:
                rec = measure_in_browser(recipe, spec, target, [jobs_dir / "models" / j["model"] / f for f in j["files"]], inputs,
                                         labels, reference, rec_out, host=host, threads=j["threads"])
                rec["status"] = "ok"
            except Exception as e:  # noqa: BLE001 - Unsupported / MeasurementError: recorded, the next one runs
                rec = {"status": type(e).__name__, "error": str(e)[:500], **getattr(e, "details", {})}
            rec.update(candidate=name, recipe=recipe.name, variant=spec.name, target=target,
                       threads=j["threads"] or "1", wall_s=round(time.monotonic() - t, 1))
            if spec.runtime == "ort" and target == "wasm" and rec["status"] == "ok":
                # The native pair on the same machine at the same thread count (onnxruntime, the variant's file).
                from pipeline.evaluate.native import ort_latency

                n = (rec.get("env") or {}).get("threads") or 1
                m = recipe.measure[target]
                nat = ort_latency(jobs_dir / "models" / j["model"] / j["files"][0],
                                  {k: v[:1] for k, v in inputs.items()}, m.warmup, m.runs, n)
                rec["native_latency"] = {**latency_stats(nat["latency_ms"]), "threads": n}
            records.append(rec)
            print(_row(rec), flush=True)
            (out / "results.json").write_text(json.dumps(records, indent=1, default=str))
    finally:
        server.close()
    (out / "results.md").write_text(_table(records, host))
    print(_table(records, host))


def _cpu() -> str | None:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or None


def _row(r: dict) -> str:
    lat = r.get("latency") or {}
    nat = r.get("native_latency") or {}
    acc = r.get("accuracy") or {}
    gpu = ((r.get("device") or {}).get("gpu_adapter") or {})
    adapter = f"{gpu.get('vendor', '')}/{gpu.get('architecture', '')}" + (
        " fallback" if gpu.get("isFallbackAdapter") else "") if gpu else "–"
    agree = acc.get("top1_agreement", acc.get("mean_cosine", "–"))
    env = r.get("env") or {}
    return (f"| {r['recipe']} | {r['variant']} | {r['target']} | {env.get('threads', r['threads'])} | "
            f"{_f(lat.get('median'))} | {_f(lat.get('p90'))} | {_f(lat.get('iqr'))} | {_f(nat.get('median'))} | "
            f"{_f(lat['median'] / nat['median']) if lat.get('median') and nat.get('median') else '–'} | "
            f"{_f((r.get('cold_start') or {}).get('session_ms'))} | {_f((r.get('cold_start') or {}).get('first_inference_ms'))} | "
            f"{_f(agree)} | {acc.get('samples', '–')} | {adapter} | {r.get('cpu_fallback') and 'yes' or 'no'} | "
            f"{r['status'] if r['status'] != 'ok' else 'ok'}{': ' + r['error'][:120] if r.get('error') else ''} |")


def _f(x) -> str:
    return "–" if x is None or x == "–" else f"{x:.3g}" if isinstance(x, float) else str(x)


def _table(records: list[dict], host) -> str:
    dev = next(((r.get("device") or {}) for r in records if r.get("device")), {})
    head = (f"Host: device class `{host.device_class}`, CPU {host.cpu}, {dev.get('cores')} logical cores, "
            f"{dev.get('user_agent')}; measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} through a "
            f"Playwright browser server on that machine (remote-host path, files routed through Playwright).\n\n"
            "| model | variant | target | threads | median ms | p90 ms | IQR ms | native ms (same threads) | "
            "browser/native | session ms | first run ms | top-1 agree / cosine | samples | adapter | CPU fallback | "
            "status |\n" + "|---" * 16 + "|\n")
    return head + "\n".join(_row(r) for r in records) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="bundle candidates of a finished build")
    p.add_argument("--build", required=True, help="a build's artifacts/build folder")
    p.add_argument("--recipes", required=True, help="the recipes folder the build used")
    p.add_argument("--out", required=True)
    p.add_argument("candidates", nargs="+", help="recipe:variant:target[:threads]")
    r = sub.add_parser("run", help="measure bundled candidates through a Playwright server on this machine")
    r.add_argument("--jobs", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--chromium", required=True)
    r.add_argument("--device-class", required=True)
    r.add_argument("--cpu", default=None)
    r.add_argument("--browser-lib-path", default=None, help="LD_LIBRARY_PATH for Chromium alone")
    r.add_argument("--only", nargs="*", help="measure only the bundled candidates whose names contain one of these")
    a = ap.parse_args(argv)
    pack(a) if a.cmd == "pack" else run(a)


if __name__ == "__main__":
    main()
