"""Accuracy against the reference outputs and the labels, latency statistics, the accuracy budget check, and the
ship-in mode (main thread or Web Worker) from the user-experience probe."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: the recipe schema imports this package
    from pipeline.recipe import Budget, OutputSpec

ARGMAX_KINDS = ("logits", "probabilities")


# A timing is flagged, not trusted, when its spread is large against its median or it has too few runs.
NOISY_IQR_RATIO = 0.25
MIN_TRUSTED_RUNS = 5


def latency_stats(times_ms: list[float]) -> dict:
    a = np.asarray(times_ms, dtype=np.float64)
    if a.size == 0:
        return {}
    q1, med, q3, p90 = np.percentile(a, [25, 50, 75, 90])
    out = {"median": float(med), "p90": float(p90), "iqr": float(q3 - q1), "min": float(a.min()),
           "mean": float(a.mean()), "n": int(a.size)}
    why = []
    if a.size < MIN_TRUSTED_RUNS:
        why.append(f"only {a.size} runs")
    if med > 0 and (q3 - q1) / med > NOISY_IQR_RATIO:
        why.append(f"IQR {100 * (q3 - q1) / med:.0f}% of the median")
    out["noisy"] = "; ".join(why) or None
    return out


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], specs: list[OutputSpec],
            labels: np.ndarray | None) -> dict:
    """Agreement of `outputs` with the native `reference` (same samples, same order)."""
    m: dict = {"samples": int(len(next(iter(reference.values()))))}
    max_abs, mean_abs = 0.0, []
    for spec in specs:
        if spec.name not in outputs:
            raise ValueError(f"output {spec.name!r} missing (got {sorted(outputs)})")
        got = np.asarray(outputs[spec.name], dtype=np.float64)
        ref = np.asarray(reference[spec.name], dtype=np.float64)
        if got.shape != ref.shape:
            raise ValueError(f"output {spec.name!r} has shape {got.shape}, native has {ref.shape}")
        if not np.all(np.isfinite(got)):
            m["non_finite"] = True
            max_abs = float("inf")
        else:
            d = np.abs(got - ref)
            max_abs = max(max_abs, float(d.max()))
            mean_abs.append(float(d.mean()))
        if spec.kind in ARGMAX_KINDS:
            pred, ref_pred = got.reshape(len(got), -1).argmax(1), ref.reshape(len(ref), -1).argmax(1)
            m["top1_agreement"] = float((pred == ref_pred).mean())
            if labels is not None:
                m["label_accuracy"] = float((pred == labels).mean())
                m["native_label_accuracy"] = float((ref_pred == labels).mean())
                m["accuracy_drop"] = m["native_label_accuracy"] - m["label_accuracy"]
        if spec.kind == "embedding":
            g, r = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
            cos = (g * r).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1) + 1e-12)
            m["min_cosine"] = float(cos.min())
    m["max_abs_error"] = max_abs
    m["mean_abs_error"] = float(np.mean(mean_abs)) if mean_abs else float("inf")
    return m


def budget_violations(acc: dict, budget: Budget) -> list[str]:
    """Why `acc` is outside the budget; empty when inside. A bound that cannot be checked is a violation."""
    out = []
    if acc.get("non_finite"):
        out.append("outputs contain NaN/Inf")
    if budget.min_top1_agreement is not None:
        v = acc.get("top1_agreement")
        if v is None:
            out.append("top-1 agreement not measurable (no logits output)")
        elif v < budget.min_top1_agreement:
            out.append(f"top-1 agreement {v:.4f} < {budget.min_top1_agreement}")
    if budget.max_accuracy_drop is not None:
        v = acc.get("accuracy_drop")
        if v is None:
            out.append("labelled accuracy not measurable (no labels or no logits output)")
        elif v > budget.max_accuracy_drop:
            out.append(f"labelled accuracy drop {v * 100:.2f} points > {budget.max_accuracy_drop * 100:.2f}")
    if budget.max_abs_error is not None:
        v = acc.get("max_abs_error", float("inf"))
        if not v <= budget.max_abs_error:
            out.append(f"max abs error {v:.3g} > {budget.max_abs_error:.3g}")
    return out


# Thresholds from the RAIL model: input handled within 100 ms feels instant; 50+ fps looks smooth.
INPUT_DELAY_OK_MS = 100.0
SMOOTH_FPS = 50.0


def ship_mode(qoe: dict | None) -> dict:
    """Which mode this artifact should ship in (inference on the main thread or in a Web Worker), from the
    user-experience probe, with the numbers behind the choice."""
    if not qoe:
        return {"mode": None, "reason": "no user-experience measurement"}

    def ok(q):
        return bool(q) and "error" not in q

    def feels_fine(q):
        if not ok(q):
            return False
        p95 = (q.get("input_delay_ms") or {}).get("p95")
        return (p95 is None or p95 <= INPUT_DELAY_OK_MS) and q.get("fps", 0) >= SMOOTH_FPS

    def describe(name, q):
        if not ok(q):
            return f"{name}: {q.get('error', 'not measured') if q else 'not measured'}"
        p95 = (q.get("input_delay_ms") or {}).get("p95")
        return (f"{name}: {q['fps']:.0f} fps, {q['dropped_frames']} dropped frames, input delay p95 "
                f"{'n/a' if p95 is None else f'{p95:.0f} ms'}")

    main, worker = qoe.get("main"), qoe.get("worker")
    summary = "; ".join(describe(n, q) for n, q in (("main thread", main), ("worker", worker)) if q is not None)
    if feels_fine(main):
        return {"mode": "main", "reason": f"main thread stays responsive ({summary})"}
    if ok(worker):
        return {"mode": "worker", "reason": f"run it in a Web Worker ({summary})"}
    return {"mode": "main" if ok(main) else None, "reason": f"no responsive mode measured ({summary})"}


def responsiveness(qoe: dict | None, mode: str | None) -> float | None:
    """p95 input delay in the mode the artifact ships in (the 'responsiveness' objective)."""
    q = (qoe or {}).get(mode) if mode else None
    return ((q or {}).get("input_delay_ms") or {}).get("p95")
