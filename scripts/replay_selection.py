"""Replay today's selection code on a build's recorded measurements and compare with the registry that build
published: a check that a change to selection (or a refactoring around it) decides the same, without the noise of
measuring again.

    .venv/bin/python scripts/replay_selection.py --artifacts /path/to/artifacts [--recipes recipes]

Exit status 1 when any decision differs. Works on schema-1 and schema-2 registries.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.families import variant  # noqa: E402
from pipeline.recipe import load_recipes  # noqa: E402
from pipeline.release.candidates import candidate  # noqa: E402
from pipeline.release.registry import migrate  # noqa: E402
from pipeline.release.select import select  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--recipes", default=str(ROOT / "recipes"))
    a = ap.parse_args()
    art = Path(a.artifacts)
    index = migrate(json.loads((art / "registry" / "index.json").read_text()))
    differ = 0
    for r in load_recipes(a.recipes):
        published = index["models"].get(r.name, {}).get("versions", {}).get(r.version)
        folder = art / "build" / r.name / r.version
        if published is None or not folder.is_dir():
            continue
        native = {}
        for p in folder.glob("Native-*/result.json"):
            res = json.loads(p.read_text())
            native[res["task"].split("-", 1)[1]] = res  # fp32, fp32-t2 (at 2 threads)
        candidates = []
        for p in folder.glob("Browser-*/result.json"):
            res = json.loads(p.read_text())
            m = re.fullmatch(r"Browser-(.+)-(wasm|webgpu|webgl)(?:-t(\w+))?", res["task"])
            if not m:  # another browser host's measurement
                continue
            v, t, n = m.groups()
            nat = native[v] if not n else {**native[f"{v}-t{n}"], "accuracy": native[v].get("accuracy")}
            candidates.append(candidate(r, v, variant(v).runtime, t, res, [], nat))
        for t in r.targets:
            d = select(t, candidates, r.selection.tie_tolerance, r.selection.objectives, r.selection.goals)
            old = published["targets"][t]
            was = (old["status"], old.get("variant"))
            now = (d.status, d.chosen.variant if d.chosen else None)
            differ += was != now
            print(f"{r.name:16} {t:7} published {was[0]}:{was[1]}  replayed {now[0]}:{now[1]}  "
                  f"{'same' if was == now else 'DIFFERENT'}")
    print("all decisions the same" if not differ else f"{differ} decision(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
