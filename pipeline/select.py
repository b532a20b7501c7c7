"""Per target: the fastest candidate inside the accuracy budget; ties (medians within a tolerance) go to the
smaller download. No candidate inside the budget means the target is unmet, with every reason kept."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Candidate:
    variant: str
    runtime: str
    backend: str
    status: str                       # "ok" | "failed" | "unsupported"
    reasons: list[str] = field(default_factory=list)  # failure or budget violations
    median_ms: float | None = None
    download_bytes: int | None = None
    record: dict = field(default_factory=dict)  # the full measurement, carried to the report

    @property
    def eligible(self) -> bool:
        return self.status == "ok" and not self.reasons and self.median_ms is not None


@dataclass
class Decision:
    target: str
    status: str                       # "chosen" | "unmet"
    chosen: Candidate | None
    reason: str
    ranking: list[Candidate]          # eligible candidates, best first
    rejected: list[Candidate]


def select(target: str, candidates: list[Candidate], tie_tolerance: float = 0.02) -> Decision:
    mine = [c for c in candidates if c.backend == target]
    eligible = [c for c in mine if c.eligible]
    rejected = [c for c in mine if not c.eligible]
    if not eligible:
        if not mine:
            why = "no candidate was built for this target"
        else:
            why = "; ".join(f"{c.runtime}/{c.variant}: {', '.join(c.reasons) or c.status}" for c in rejected)
            why = f"no candidate inside the accuracy budget ({why})"
        return Decision(target, "unmet", None, why, [], rejected)
    eligible.sort(key=lambda c: (c.median_ms, c.download_bytes or 0))
    fastest = eligible[0].median_ms
    tied = [c for c in eligible if c.median_ms <= fastest * (1 + tie_tolerance)]
    best = min(tied, key=lambda c: (c.download_bytes if c.download_bytes is not None else float("inf"), c.median_ms))
    ranking = [best] + [c for c in eligible if c is not best]
    if best is eligible[0]:
        reason = f"fastest median latency inside the budget ({best.median_ms:.3g} ms)"
    else:
        reason = (f"median {best.median_ms:.3g} ms within {tie_tolerance:.0%} of the fastest ({fastest:.3g} ms, "
                  f"{eligible[0].runtime}/{eligible[0].variant}); smaller download ({best.download_bytes} bytes)")
    if len(ranking) > 1:
        runner = ranking[1]
        reason += f"; runner-up {runner.runtime}/{runner.variant} {runner.median_ms:.3g} ms"
    return Decision(target, "chosen", best, reason, ranking, rejected)
