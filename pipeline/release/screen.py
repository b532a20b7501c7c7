"""Screening: which variants are worth measuring in full on a target.

Every variant is first measured quickly on the target at its first thread count: outputs on the evaluation samples
and the timed runs, without the user-experience probe or the download under an emulated network, the two slowest
stages of a measurement. Only the contenders are then measured in full, at every thread count
(`measure.<target>.threads`), and paired with native runs at those counts:
* each runtime's best inside the accuracy budget (thread scaling and what the probe finds differ by runtime, so a
  runtime is never judged by another's figures), and
* every candidate inside the budget within `measure.<target>.screen_margin` of the best on each of the recipe's
  objectives that screening measures (latency, cold start, download, slowdown vs native, memory).
The others keep their screening record as their candidate, with why they were left out: a variant twice as slow
as the best at one thread does not win at two. Where the target measures no probe and no emulated network, the
screening is the full measurement at the first count, and the verdict only decides who goes on to the other counts
(pipeline.tasks.Shortlist.partial). `screen_margin: null` measures every variant in full at every count.
"""
from __future__ import annotations

import math

from pipeline.objectives import OBJECTIVES
from pipeline.release.select import Candidate

# Objectives a screening measurement gives a value for (the probe's responsiveness needs the full measurement).
SCREENED_OBJECTIVES = ("latency", "cold_start", "size", "slowdown", "memory")


def shortlist(candidates: list[Candidate], objectives, margin: float | None) -> dict:
    """The screening verdict on one target's candidates (one per variant, at the first thread count):
    `contenders` (to measure in full) with `why` each goes on, and `screened_out` (variant -> why not: its
    screening record stands as its candidate)."""
    ok = [c for c in candidates if c.eligible]
    judged = [o for o in objectives if o in SCREENED_OBJECTIVES]
    if margin is None or not judged:
        because = "screening off" if margin is None else "the recipe's objectives need the full measurement"
        return {"contenders": [c.variant for c in ok], "why": dict.fromkeys((c.variant for c in ok), because),
                "screened_out": {}}
    why: dict[str, list[str]] = {}
    for obj in judged:
        o, best = OBJECTIVES[obj], min((c.value(obj) for c in ok), default=math.inf)
        for c in ok:
            if math.isfinite(best) and c.value(obj) <= best * (1 + margin):
                why.setdefault(c.variant, []).append(
                    f"{o.label} {o.format(c.value(obj))} within {margin:.0%} of the best {o.format(best)}")
    first = OBJECTIVES[judged[0]]
    for runtime in dict.fromkeys(c.runtime for c in ok):
        best = min((c for c in ok if c.runtime == runtime), key=lambda c: c.value(first.name))
        why.setdefault(best.variant, []).append(f"{runtime}'s best")
    out = {}
    if ok:
        leader = min(ok, key=lambda c: c.value(first.name))
        top = leader.value(first.name)
        for c in ok:
            if c.variant not in why:
                mine = c.value(first.name)
                out[c.variant] = (f"screened out: {first.label} {first.format(mine)}, {mine / max(top, 1e-9):.2f}x "
                                  f"the best ({leader.label} {first.format(top)}) and not {c.runtime}'s best: not "
                                  "measured further")
    return {"contenders": [c.variant for c in ok if c.variant in why],
            "why": {v: "; ".join(w) for v, w in why.items()}, "screened_out": out}
