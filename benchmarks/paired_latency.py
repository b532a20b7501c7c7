"""Paired native vs browser latency for the demo models.

Runs BuildAll on the demo recipes (a no-op when the build is cached), then tabulates, for every variant, target
and thread count (measure.<target>.threads), the native latency at the same thread count (onnxruntime, or the
LiteRT interpreter for LiteRT variants; Python, CPU) and the in-browser latency measured in the same build, with
their spread (IQR), the browser/native ratio, session creation, cold start, download size and the memory it
takes to have the model ready (bytes and multiple of the download).
Also: cold start (local, and with the download under the recipe's emulated 4G profile), peak renderer memory,
and the user-experience probe (frames per second and p95 input delay with inference on the main thread vs in a
Web Worker). Writes benchmarks/results/paired_latency.md (committed) and prints it.

    .venv/bin/python benchmarks/paired_latency.py [--artifacts artifacts] [--recipes recipes]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fmt(v, nd=3):
    return "–" if v is None else f"{v:.{nd}g}"


def cold_start_4g(row: dict) -> float | None:
    """Cold start with the download timed under the recipe's emulated network profile."""
    cold = row.get("cold_start") or {}
    dl = next((v for k, v in cold.items() if k.startswith("download_ms_")), None)
    if dl is None:
        return None
    return dl + cold["session_ms"] + cold["first_inference_ms"]



def fit_line(x: list[float], y: list[float]) -> tuple[float, float] | None:
    """(intercept, slope) of y over x by least squares; None with fewer than 3 points or no spread in x."""
    n = len(x)
    if n < 3:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((v - mx) ** 2 for v in x)
    if not sxx:
        return None
    slope = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sxx
    return my - slope * mx, slope


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    ap.add_argument("--recipes", default=str(ROOT / "recipes"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "paired_latency.md"))
    ap.add_argument("--no-build", action="store_true", help="tabulate the existing registry only")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run([sys.executable, "-m", "luigi", "--module", "pipeline", "BuildAll", "--local-scheduler",
                        "--recipes-dir", a.recipes, "--artifacts-dir", a.artifacts], cwd=ROOT, check=True)
    index = json.loads((Path(a.artifacts) / "registry" / "index.json").read_text())
    chromium = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Paired native vs browser latency (demo models)",
        "",
        f"Made by `.venv/bin/python benchmarks/paired_latency.py {' '.join(sys.argv[1:])}` from the build in "
        f"`{a.artifacts}` (recipes: {', '.join(sorted(index['models']))}).",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()}, {platform.python_version()}, "
        f"{chromium}; `nproc`={os.cpu_count()}, no GPU (WebGPU is SwiftShader, a software adapter: a correctness "
        "check, not speed). Native = CPU at the same thread count as the browser row (the variant itself in "
        "onnxruntime for ONNX variants, in the ai-edge-litert interpreter for LiteRT ones; the canonical fp32 "
        "model in onnxruntime for TF.js and TVM, which have no native runner); browser = the variant's own "
        "runtime in headless Chromium (wasm threads need the page's cross-origin isolation, which it has). Both "
        "measured in the same build. Median (IQR) in ms; batch 1. Model load memory: renderer RSS growth over "
        "download + session + first inference (the runtime's own fixed cost included).",
        "",
        "| model | variant | target | threads | native median (IQR) | browser median (IQR) | browser/native |"
        " session ms | cold start ms | cold start 4G ms | download KB | model load mem MB (× download) |"
        " peak mem MB | fps main / worker | input delay p95 ms main / worker | ship in | top-1 agree | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    loads: dict[str, list[tuple[int, int]]] = {}  # runtime -> (download bytes, model load memory) on wasm, 1 thread
    for model, m in sorted(index["models"].items()):
        for version, entry in m["versions"].items():
            report = json.loads((Path(a.artifacts) / "registry" / entry["report"]["path"]).read_text())
            for r in report["candidates"]:
                if (r["target"], r.get("threads", 1), r["status"]) == ("wasm", 1, "ok") and r.get("model_memory_bytes"):
                    loads.setdefault(r["runtime"], []).append((r["download_bytes"], r["model_memory_bytes"]))
            chosen = {(t["variant"], t["backend"], t["runtime_options"]["threads"]) for t in entry["targets"].values()
                      if t["status"] == "chosen"}
            for r in sorted(report["candidates"], key=lambda r: (r["target"], r["variant"], r.get("threads", 1))):
                threads = r.get("threads", 1)
                nat = {"median": r["native_median_ms"], "iqr": r.get("native_iqr_ms")}  # native at the same count
                status = ("**chosen**" if (r["variant"], r["target"], threads) in chosen else
                          ("ok" if r["eligible"] else "; ".join(r["reasons"])[:80]))
                mem = r.get("model_memory_bytes")
                lines.append(
                    f"| {model} | {r['variant']} | {r['target']} | {threads}"
                    f" | {fmt(nat.get('median'))} ({fmt(nat.get('iqr'), 2)})"
                    f" | {fmt(r['median_ms'])} ({fmt(r['iqr_ms'], 2)}) | {fmt(r['slowdown_vs_native'])}"
                    f" | {fmt(r.get('session_ms'), 4)} | {fmt(r['cold_start_ms'], 4)} | {fmt(cold_start_4g(r), 4)}"
                    f" | {fmt(r['download_bytes'] / 1024 if r['download_bytes'] else None)}"
                    f" | {fmt(mem / 2**20 if mem else None)} ({fmt(r.get('model_memory_x_download'), 2)})"
                    f" | {fmt(r['peak_memory_bytes'] / 2**20 if r['peak_memory_bytes'] else None)}"
                    f" | {fmt(r.get('main_fps'), 2)} / {fmt(r.get('worker_fps'), 2)}"
                    f" | {fmt(r.get('main_input_delay_p95_ms'))} / {fmt(r.get('worker_input_delay_p95_ms'))}"
                    f" | {r.get('ship_in') or '–'} | {fmt(r['top1_agreement'])} | {status} |")
    lines += ["", "## Memory to have the model ready, per runtime (wasm, 1 thread)", "",
              "A least-squares line through every candidate's model load memory against its download: the intercept "
              "is the runtime's own fixed cost (wasm module, heap, threads), the slope what each downloaded byte costs "
              "once loaded (the fetched buffer, the runtime's copy, dequantized weights).", "",
              "| runtime | candidates | download KB (min–max) | fixed cost MB | × download | largest multiple of its download |",
              "|---|---|---|---|---|---|"]
    for runtime, pts in sorted(loads.items()):
        x, y = [p[0] for p in pts], [p[1] for p in pts]
        fit = fit_line(x, y)
        lines.append(f"| {runtime} | {len(pts)} | {fmt(min(x) / 1024)}–{fmt(max(x) / 1024)}"
                     f" | {fmt(fit[0] / 2**20) if fit else '–'} | {fmt(fit[1], 2) if fit else '–'}"
                     f" | {fmt(max(b / d for d, b in pts if d), 3)} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
