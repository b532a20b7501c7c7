"""Per target: the best candidate inside the accuracy budget and the recipe's goals.

Candidates are ranked by the recipe's objectives in priority order (default: latency only). A later objective
decides only between candidates that are within a relative tie tolerance of the best on every earlier one;
the smaller download breaks what remains. No candidate inside the budget and goals means the target is unmet,
with every reason kept: never a silent fallback."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.objectives import OBJECTIVES


@dataclass
class Candidate:
    """One variant measured on one target."""

    variant: str
    runtime: str
    target: str
    status: str                       # "ok" | "failed" | "unsupported"
    reasons: list[str] = field(default_factory=list)  # failure or budget violations
    values: dict[str, float | None] = field(default_factory=dict)  # objective -> value (lower is better)
    record: dict = field(default_factory=dict)  # the full measurement, carried to the report
    device_class: str | None = None   # the class of the browser host it was measured on (pipeline.hosts)
    threads: int = 1                  # wasm threads it ran with (more than one needs a cross-origin isolated page)

    @property
    def label(self) -> str:
        """runtime/variant, with its thread count when more than one: how reasons and reports name it."""
        return f"{self.runtime}/{self.variant}" + (f" ({self.threads} threads)" if self.threads > 1 else "")

    @property
    def median_ms(self) -> float | None:
        return self.values.get("latency")

    @property
    def download_bytes(self) -> float | None:
        return self.values.get("size")

    @property
    def eligible(self) -> bool:
        return self.status == "ok" and not self.reasons and self.median_ms is not None

    def value(self, objective: str) -> float:
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
    device_class: str | None = None
    # Why the decision cannot be trusted as a speed ranking (it rests on a software GPU only); None: it can.
    provisional: str | None = None


def goal_violations(c: Candidate, goals) -> list[str]:
    """Hard limits from the recipe's selection.goals (None: no goals)."""
    if goals is None:
        return []
    out = []
    for o in OBJECTIVES.values():
        g, v = getattr(goals, o.goal), c.value(o.name)
        if g is not None and not v <= g:
            out.append(f"{o.label} {o.format(v) if math.isfinite(v) else 'unknown'} > goal {g:g} {o.unit}")
    return out


def software_gpu_only(c: Candidate) -> str | None:
    """Why `c`'s timings say nothing of a GPU: it ran on a GPU target whose adapter was software (SwiftShader)."""
    from pipeline.targets import TARGETS

    dev = c.record.get("device") or {}
    if not TARGETS[c.target].gpu or not dev.get("software_gpu"):
        return None
    a = dev.get("gpu_adapter") or {}
    name = " ".join(str(a[k]) for k in ("vendor", "architecture", "renderer") if a.get(k)) or "a software adapter"
    acc = c.record.get("accuracy") or {}
    checked = (f"; outputs checked on {acc['samples']} of {acc['of_samples']} samples"
               if acc.get("of_samples") and (c.record.get("env") or {}).get("correctness_only") else "")
    return (f"measured only on a software {c.target} adapter ({name}"
            f"{', isFallbackAdapter' if a.get('isFallbackAdapter') else ''}) on device class {c.device_class}"
            f"{checked}: its latency says nothing of a real GPU, configure a GPU browser host (pipeline.hosts) "
            f"to decide")


def select(target: str, candidates: list[Candidate], tie_tolerance: float = 0.02,
           objectives: tuple[str, ...] | list[str] = ("latency",), goals=None,
           device_class: str | None = None) -> Decision:
    """The best eligible candidate on `target` (measured on `device_class`'s hosts, when given)."""
    mine = [c for c in candidates if c.target == target and (device_class is None or c.device_class == device_class)]
    for c in mine:
        if c.eligible:
            c.reasons.extend(goal_violations(c, goals))
    eligible = [c for c in mine if c.eligible]
    rejected = [c for c in mine if not c.eligible]
    if not eligible:
        if not mine:
            why = "no candidate was built for this target"
        else:
            why = "; ".join(f"{c.label}: {', '.join(c.reasons) or c.status}" for c in rejected)
            why = f"no candidate inside the accuracy budget and goals ({why})"
        return Decision(target, "unmet", None, why, [], rejected, device_class)

    pool, steps = list(eligible), []
    for obj in objectives:
        best = min(c.value(obj) for c in pool)
        kept = [c for c in pool if c.value(obj) <= best * (1 + tie_tolerance)] if math.isfinite(best) else pool
        o = OBJECTIVES[obj]
        steps.append(f"{o.label} {o.format(best) if math.isfinite(best) else 'unknown'}"
                     + (f" ({len(kept)} within {tie_tolerance:.0%})" if len(kept) > 1 else ""))
        pool = kept
        if len(pool) == 1:
            break
    best = min(pool, key=lambda c: (c.value("size"), c.value(objectives[0])))
    order = sorted(eligible, key=lambda c: tuple(c.value(o) for o in objectives) + (c.value("size"),))
    ranking = [best] + [c for c in order if c is not best]

    provisional = software_gpu_only(best)
    if provisional:  # a ranking on emulated GPU speed: say what it is, never "fastest"
        reason = (f"provisional, {provisional}; ranked there by {' > '.join(objectives)}: {'; '.join(steps)}")
    elif list(objectives) == ["latency"] and len(pool) == 1:
        reason = f"fastest median latency inside the budget ({best.median_ms:.3g} ms)"
    elif len(pool) > 1:
        reason = (f"by {' > '.join(objectives)}: {'; '.join(steps)}; smaller download among the tied "
                  f"({best.download_bytes:.0f} bytes)")
    else:
        reason = f"by {' > '.join(objectives)}: {'; '.join(steps)}"
    if len(ranking) > 1:
        runner = ranking[1]
        reason += f"; runner-up {runner.label} {runner.median_ms:.3g} ms"
    noisy = (best.record.get("latency") or {}).get("noisy")
    if noisy:
        reason += f" [timing noisy: {noisy}]"
    acc = best.record.get("accuracy") or {}
    if acc.get("of_samples"):
        reason += f" [accuracy on {acc['samples']} of {acc['of_samples']} samples]"
    return Decision(target, "chosen", best, reason, ranking, rejected, device_class, provisional)
