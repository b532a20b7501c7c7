"""Per target: the best candidate inside the accuracy budget and the recipe's goals.

Candidates are ranked by the recipe's objectives in priority order (default: latency only). A later objective
decides only between candidates that are within a relative tie tolerance of the best on every earlier one;
the smaller download breaks what remains. No candidate inside the budget and goals means the target is unmet,
with every reason kept: never a silent fallback."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

OBJECTIVE_LABELS = {"latency": ("median latency", "ms"), "cold_start": ("cold start", "ms"),
                    "size": ("download", "bytes"), "memory": ("peak memory", "bytes"),
                    "responsiveness": ("input delay p95", "ms")}


@dataclass
class Candidate:
    variant: str
    runtime: str
    backend: str
    status: str                       # "ok" | "failed" | "unsupported"
    reasons: list[str] = field(default_factory=list)  # failure or budget violations
    median_ms: float | None = None
    download_bytes: int | None = None
    values: dict[str, float | None] = field(default_factory=dict)  # objective -> value (lower is better)
    record: dict = field(default_factory=dict)  # the full measurement, carried to the report

    @property
    def eligible(self) -> bool:
        return self.status == "ok" and not self.reasons and self.median_ms is not None

    def value(self, objective: str) -> float:
        if objective == "latency":
            v = self.median_ms
        elif objective == "size":
            v = self.download_bytes
        else:
            v = self.values.get(objective)
        return math.inf if v is None else float(v)


@dataclass
class Decision:
    target: str
    status: str                       # "chosen" | "unmet"
    chosen: Candidate | None
    reason: str
    ranking: list[Candidate]          # eligible candidates, best first
    rejected: list[Candidate]


def goal_violations(c: Candidate, goals) -> list[str]:
    """Hard limits from the recipe's selection.goals (None: no goals)."""
    if goals is None:
        return []
    out = []
    checks = [("latency_ms", c.value("latency"), "median latency {v:.3g} ms > goal {g:g} ms"),
              ("cold_start_ms", c.value("cold_start"), "cold start {v:.4g} ms > goal {g:g} ms"),
              ("size_bytes", c.value("size"), "download {v:.0f} bytes > goal {g:g}"),
              ("memory_bytes", c.value("memory"), "peak memory {v:.0f} bytes > goal {g:g}"),
              ("input_delay_ms", c.value("responsiveness"), "input delay p95 {v:.3g} ms > goal {g:g} ms"),
              ("max_slowdown_vs_native", c.values.get("slowdown", math.inf) or math.inf,
               "{v:.3g}x slower than native > goal {g:g}x")]
    for name, v, msg in checks:
        g = getattr(goals, name)
        if g is not None and not v <= g:
            out.append(msg.format(v=v, g=g))
    return out


def select(target: str, candidates: list[Candidate], tie_tolerance: float = 0.02,
           objectives: tuple[str, ...] | list[str] = ("latency",), goals=None) -> Decision:
    mine = [c for c in candidates if c.backend == target]
    for c in mine:
        if c.eligible:
            c.reasons.extend(goal_violations(c, goals))
    eligible = [c for c in mine if c.eligible]
    rejected = [c for c in mine if not c.eligible]
    if not eligible:
        if not mine:
            why = "no candidate was built for this target"
        else:
            why = "; ".join(f"{c.runtime}/{c.variant}: {', '.join(c.reasons) or c.status}" for c in rejected)
            why = f"no candidate inside the accuracy budget and goals ({why})"
        return Decision(target, "unmet", None, why, [], rejected)

    pool, steps = list(eligible), []
    for obj in objectives:
        best = min(c.value(obj) for c in pool)
        kept = [c for c in pool if c.value(obj) <= best * (1 + tie_tolerance)] if math.isfinite(best) else pool
        label, unit = OBJECTIVE_LABELS[obj]
        steps.append(f"{label} {best:.4g} {unit}" + (f" ({len(kept)} within {tie_tolerance:.0%})" if len(kept) > 1 else ""))
        pool = kept
        if len(pool) == 1:
            break
    best = min(pool, key=lambda c: (c.value("size"), c.value(objectives[0])))
    order = sorted(eligible, key=lambda c: tuple(c.value(o) for o in objectives) + (c.value("size"),))
    ranking = [best] + [c for c in order if c is not best]

    if list(objectives) == ["latency"] and len(pool) == 1:
        reason = f"fastest median latency inside the budget ({best.median_ms:.3g} ms)"
    elif len(pool) > 1:
        reason = (f"by {' > '.join(objectives)}: {'; '.join(steps)}; smaller download among the tied "
                  f"({best.download_bytes} bytes)")
    else:
        reason = f"by {' > '.join(objectives)}: {'; '.join(steps)}"
    if len(ranking) > 1:
        runner = ranking[1]
        reason += f"; runner-up {runner.runtime}/{runner.variant} {runner.median_ms:.3g} ms"
    noisy = (best.record.get("latency") or {}).get("noisy")
    if noisy:
        reason += f" [timing noisy: {noisy}]"
    return Decision(target, "chosen", best, reason, ranking, rejected)
