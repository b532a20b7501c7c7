"""Selection objectives: what a candidate can be ranked by (``selection.objectives``) and bounded by
(``selection.goals``). One row per objective; adding one is adding a row. Lower is better for every objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.evaluate.metrics import responsiveness


def _slowdown(m: dict, native: dict | None) -> float | None:
    nat = ((native or {}).get("latency_ms") or {}).get("median")
    return m["latency"]["median"] / nat if nat else None


@dataclass(frozen=True)
class Objective:
    name: str                                         # as written in recipes
    label: str                                        # as printed in reasons and reports
    unit: str
    read: Callable[[dict, dict | None], float | None]  # (browser measurement, native run) -> value; None: unknown
    goal: str                                         # the selection.goals field that bounds it

    def format(self, v: float) -> str:
        return f"{v:.0f} {self.unit}" if self.unit == "bytes" else f"{v:.4g} {self.unit}"


OBJECTIVES: dict[str, Objective] = {o.name: o for o in [
    Objective("latency", "median latency", "ms", lambda m, n: m["latency"]["median"], goal="latency_ms"),
    Objective("cold_start", "cold start", "ms", lambda m, n: m["cold_start_ms"], goal="cold_start_ms"),
    Objective("size", "download", "bytes", lambda m, n: m["download_bytes"], goal="size_bytes"),
    Objective("memory", "peak memory", "bytes", lambda m, n: m.get("peak_memory_bytes"), goal="memory_bytes"),
    Objective("responsiveness", "input delay p95", "ms",
              lambda m, n: responsiveness(m.get("qoe"), (m.get("ship_mode") or {}).get("mode")),
              goal="input_delay_ms"),
    Objective("slowdown", "slowdown vs native", "x", _slowdown, goal="max_slowdown_vs_native"),
]}


def objective_values(measurement: dict, native: dict | None) -> dict[str, float | None]:
    return {name: o.read(measurement, native) for name, o in OBJECTIVES.items()}
