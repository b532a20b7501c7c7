"""Comparing two versions of a model: the per-target diff people read, and the release gate a version must pass
against the alias's current holder before `promote` moves the alias (thresholds from the recipe's `release:`
section, recorded with each version in the index)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.evaluate.metrics import budget_violations
from pipeline.recipe import Budget

DEFAULT_RELEASE = {"max_latency_increase": 0.10, "max_cold_start_increase": 0.10, "max_size_increase": 0.10,
                   "max_accuracy_loss": None}


@dataclass(frozen=True)
class Figure:
    """One number a diff shows and the gate may bound."""

    name: str
    label: str
    unit: str
    path: tuple[str, ...]      # where it is in a candidate's metrics
    better: str                # "lower" | "higher"


FIGURES = [
    Figure("top1_agreement", "top-1 agreement", "", ("accuracy", "top1_agreement"), "higher"),
    Figure("label_accuracy", "labelled accuracy", "", ("accuracy", "label_accuracy"), "higher"),
    Figure("max_abs_error", "max abs error", "", ("accuracy", "max_abs_error"), "lower"),
    Figure("min_cosine", "min cosine", "", ("accuracy", "min_cosine"), "higher"),
    Figure("retrieval_agreement", "retrieval agreement", "", ("accuracy", "retrieval_agreement"), "higher"),
    Figure("sequence_match", "decoded text match", "", ("accuracy", "sequence_match"), "higher"),
    Figure("char_error_rate", "character error rate", "", ("accuracy", "char_error_rate"), "lower"),
    Figure("missed_detections", "missed detections", "", ("accuracy", "missed_detection_rate"), "lower"),
    Figure("extra_detections", "extra detections", "", ("accuracy", "extra_detection_rate"), "lower"),
    Figure("min_box_iou", "worst box IoU", "", ("accuracy", "min_box_iou"), "higher"),
    Figure("latency", "median latency", "ms", ("latency_ms", "median"), "lower"),
    Figure("cold_start", "cold start", "ms", ("cold_start_ms",), "lower"),
    Figure("size", "download", "bytes", ("download_bytes",), "lower"),
    Figure("memory", "peak memory", "bytes", ("peak_memory_bytes",), "lower"),
]
# Gate thresholds: relative growth allowed per figure (release section field), against the holder.
GATED = {"latency": "max_latency_increase", "cold_start": "max_cold_start_increase", "size": "max_size_increase"}


def figure(target: dict | None, f: Figure) -> float | None:
    v = (target or {}).get("metrics")
    for k in f.path:
        v = v.get(k) if isinstance(v, dict) else None
    return float(v) if isinstance(v, (int, float)) else None


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "–"
    if unit == "bytes":
        return f"{v:,.0f} B"
    return f"{v:.4g}{' ' + unit if unit else ''}"


def winner(target: dict | None) -> str:
    if not target:
        return "–"
    if target.get("status") != "chosen":
        return "unmet"
    return f"{target['runtime']}/{target['variant']}"


def diff(a: dict, b: dict) -> list[dict]:
    """Per target and figure: {target, figure, a, b, change} (change: relative, or a status change)."""
    rows = []
    for t in sorted(set(a.get("targets", {})) | set(b.get("targets", {}))):
        ta, tb = a.get("targets", {}).get(t), b.get("targets", {}).get(t)
        status = (ta or {}).get("status", "absent"), (tb or {}).get("status", "absent")
        rows.append({"target": t, "figure": "winner", "a": winner(ta), "b": winner(tb),
                     "change": f"{status[0]} → {status[1]}" if status[0] != status[1] else
                     ("same" if winner(ta) == winner(tb) else "changed")})
        for f in FIGURES:
            va, vb = figure(ta, f), figure(tb, f)
            change = None if va is None or vb is None or va == 0 else (vb - va) / abs(va)
            rows.append({"target": t, "figure": f.name, "label": f.label, "unit": f.unit, "a": va, "b": vb,
                         "change": change, "better": f.better})
    return rows


def gate(new: dict, holder: dict | None, new_version: str, holder_version: str | None) -> tuple[list[str], list[str]]:
    """(passed, failed) checks of `new` against the alias's current `holder` (None: the alias is new, and only the
    budget applies). Every check names the target and both numbers."""
    rel = {**DEFAULT_RELEASE, **(new.get("release") or {})}
    budget = new.get("budget") or {}
    loss = rel["max_accuracy_loss"] if rel["max_accuracy_loss"] is not None else \
        (budget.get("max_accuracy_drop") if budget.get("max_accuracy_drop") is not None else 0.01)
    passed, failed = [], []
    hv = holder_version or "the holder"
    for t in sorted(set(new.get("targets", {})) | set((holder or {}).get("targets", {}))):
        tn = new.get("targets", {}).get(t)
        th = (holder or {}).get("targets", {}).get(t)
        if th and th.get("status") == "chosen" and (not tn or tn.get("status") != "chosen"):
            why = tn.get("reason", "") if tn else "not a target of this version"
            failed.append(f"{t}: target lost ({hv} runs {winner(th)}; {new_version}: unmet: {why[:160]})")
            continue
        if not tn or tn.get("status") != "chosen":
            continue
        violations = budget_violations((tn.get("metrics") or {}).get("accuracy") or {}, Budget(**budget)) \
            if budget else []
        for v in violations:
            failed.append(f"{t}: outside the accuracy budget: {v}")
        if th is None or th.get("status") != "chosen":
            passed.append(f"{t}: {winner(tn)} inside the budget (no holder to compare with)")
            continue
        an, ah = figure(tn, FIGURES[1]), figure(th, FIGURES[1])
        if an is not None and ah is not None:
            (passed if an >= ah - loss - 1e-12 else failed).append(
                f"{t}: labelled accuracy {an:.4f} vs {ah:.4f} ({hv}); allowed loss {loss:.4f}")
        for name, field in GATED.items():
            f = next(x for x in FIGURES if x.name == name)
            vn, vh = figure(tn, f), figure(th, f)
            if vn is None or vh is None:
                failed.append(f"{t}: {f.label} not measured ({new_version}: {fmt(vn, f.unit)}, {hv}: "
                              f"{fmt(vh, f.unit)})")
                continue
            limit = vh * (1 + rel[field])
            (passed if vn <= limit else failed).append(
                f"{t}: {f.label} {fmt(vn, f.unit)} vs {fmt(vh, f.unit)} ({hv}); allowed up to "
                f"+{rel[field]:.0%} = {fmt(limit, f.unit)}")
    return passed, failed
