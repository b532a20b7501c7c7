"""Where a build's minutes go: wall time of a cold BuildAll of the demo recipes, of a no-op rebuild, and the time
each task recorded (its result.json `seconds`), summed per stage and per recipe.

    .venv/bin/python benchmarks/build_time.py                      # cold build into a fresh folder, then a no-op
    .venv/bin/python benchmarks/build_time.py --artifacts artifacts --no-build   # summarise a build already made

Task seconds are the worker's wall time inside each task (conversions, the browser, native timing), less the time
it waited for the machine's timing lock (`lock_wait_s`: with several workers a task waits for another's timing);
with one worker they add up to about the build's wall time, the rest being scheduling and completion checks. Writes
benchmarks/results/build_time.md (committed) and prints it.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Task folders by stage (their names: pipeline.tasks folder_name()).
STAGES = [("SourceModel", "source (locate / train)"), ("EvalData", "evaluation / calibration data"),
          ("CanonicalOnnx", "canonical ONNX"), ("ReferenceOutputs", "reference outputs"),
          ("Prerequisite", "shared intermediates (SavedModel, TVM runtime)"), ("Variant", "conversions"),
          ("Native", "native runs (onnxruntime, LiteRT interpreter)"),
          ("Browser-wasm-screen", "browser: wasm, screening"), ("Browser-wasm", "browser: wasm, in full"),
          ("Browser-webgpu-screen", "browser: webgpu, screening (a correctness check on a software adapter)"),
          ("Browser-webgpu", "browser: webgpu, in full"),
          ("Browser-webgl-screen", "browser: webgl, screening"), ("Browser-webgl", "browser: webgl, in full"),
          ("Shortlist", "screening verdicts"), ("SelectAndPublish", "selection + publish")]


def stage_of(folder: str) -> str:
    name = folder.rsplit("-", 1)[0]
    if name.startswith("Browser-"):
        for target in ("wasm", "webgpu", "webgl"):
            if f"-{target}" in name:
                return f"Browser-{target}" + ("-screen" if name.endswith("-screen") else "")
    return name.split("-", 1)[0]


def build(recipes: Path, artifacts: Path) -> float:
    t = time.monotonic()
    subprocess.run([str(ROOT / ".venv/bin/luigi"), "--module", "pipeline", "BuildAll", "--recipes-dir", str(recipes),
                    "--artifacts-dir", str(artifacts)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - t


def summarise(artifacts: Path) -> tuple[dict, dict, dict, dict]:
    by_stage: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    by_recipe: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    page: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # target -> page stage -> seconds
    for res in (artifacts / "build").glob("*/*/*/result.json"):
        r = json.loads(res.read_text())
        stage = stage_of(res.parent.name)
        recipe = res.parent.parent.parent.name
        work = r.get("seconds", 0.0) - r.get("lock_wait_s", 0.0)
        by_stage[stage] += work
        count[stage] += 1
        by_recipe[recipe][stage] += work
        for name, sec in (r.get("stage_seconds") or {}).items():  # inside a browser measurement
            page[stage][name] += sec
    return by_stage, count, by_recipe, page


# The measuring page's stages, grouped as the minutes are spent (browser_validate/page/bench.js, harness.py).
PAGE_GROUPS = [("launch + page load", ("launch", "page", "import", "probe")), ("evaluation data", ("inputs",)),
               ("download + session", ("download", "session")), ("first inference", ("first",)),
               ("accuracy (evaluation samples)", ("eval",)), ("warm-up + timed runs", ("warmup", "timing")),
               ("memory view", ("memory",)), ("user-experience probe", ("qoe-main", "qoe-worker", "qoe-done")),
               ("download under the network profile", ("network",))]


def table(by_stage, count, by_recipe, page, cold_s, noop_s) -> str:
    total = sum(by_stage.values())
    lines = [f"# Build time: where the minutes go\n",
             f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
             f"({platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores); "
             f"command: `.venv/bin/python benchmarks/build_time.py`.\n"]
    if cold_s is not None:
        lines.append(f"- cold BuildAll of the demo recipes: **{cold_s / 60:.1f} min** wall")
    if noop_s is not None:
        lines.append(f"- no-op rebuild (nothing changed): **{noop_s:.1f} s** wall")
    lines.append(f"- task time recorded: {total / 60:.1f} min\n")
    lines.append("| stage | tasks | minutes | share |\n|---|---:|---:|---:|")
    for key, label in STAGES:
        if count.get(key):
            lines.append(f"| {label} | {count[key]} | {by_stage[key] / 60:.1f} | {100 * by_stage[key] / total:.0f} % |")
    lines.append("\n| recipe | minutes | largest stage |\n|---|---:|---|")
    for recipe, stages in sorted(by_recipe.items(), key=lambda kv: -sum(kv[1].values())):
        top = max(stages.items(), key=lambda kv: kv[1])
        label = dict(STAGES).get(top[0], top[0])
        lines.append(f"| {recipe} | {sum(stages.values()) / 60:.1f} | {label} ({top[1] / 60:.1f} min) |")
    if page:
        targets = [k for k, _ in STAGES if k in page]
        lines.append("\nInside the browser measurements (each record's `stage_seconds`), minutes:\n")
        lines.append("| page stage | " + " | ".join(dict(STAGES)[t] for t in targets) + " |")
        lines.append("|---|" + "---:|" * len(targets))
        for label, names in PAGE_GROUPS:
            lines.append(f"| {label} | " + " | ".join(f"{sum(page[t].get(n, 0) for n in names) / 60:.1f}"
                                                       for t in targets) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", type=Path, default=ROOT / "recipes")
    ap.add_argument("--artifacts", type=Path, default=None, help="default: a fresh temporary folder (cold build)")
    ap.add_argument("--no-build", action="store_true", help="only summarise --artifacts")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "build_time.md")
    a = ap.parse_args()
    artifacts = a.artifacts or Path(tempfile.mkdtemp(prefix="build-time-"))
    cold = noop = None
    if not a.no_build:
        cold = build(a.recipes, artifacts)
        noop = build(a.recipes, artifacts)
    text = table(*summarise(artifacts), cold, noop)
    a.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
