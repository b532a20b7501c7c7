"""Accuracy against the reference outputs and the labels, latency statistics, the accuracy budget check, and the
ship-in mode (main thread or Web Worker) from the user-experience probe."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: the recipe schema imports this package
    from pipeline.recipe import Budget, DetectionSpec, OutputSpec

ARGMAX_KINDS = ("logits", "probabilities", "ctc")


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


def decisions(x: np.ndarray, kind: str) -> np.ndarray:
    """Class decisions per sample and position along the last axis: argmax over several classes; for a single
    logit (or probability) its sign (or 0.5) — an argmax over one value would always agree."""
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[-1] == 1:
        return (x[..., 0] > (0.0 if kind == "logits" else 0.5)).astype(np.int64)
    return x.argmax(-1)


def ctc_decode(x: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [N, T, C] scores: the best class per step, repeats merged, blanks dropped."""
    out = []
    for row in np.asarray(x).argmax(-1).reshape(len(x), -1):
        new = np.ones(row.shape, dtype=bool)
        new[1:] = row[1:] != row[:-1]
        out.append(tuple(int(k) for k in row[new & (row != blank)]))
    return out


def edit_distance(a: tuple, b: tuple) -> int:
    """Levenshtein distance (insertions, deletions, substitutions) between two sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def output_accuracy(got: np.ndarray, ref: np.ndarray, kind: str, labels: np.ndarray | None,
                    blank: int = 0, valid: np.ndarray | None = None, got_steps: np.ndarray | None = None) -> dict:
    """How one output agrees with the reference, by what the output is (OutputSpec.kind). `valid` (samples of
    different sizes, padded): which elements are real; padding is never judged. `got_steps`: a ctc output's own
    length per sample where it is longer than native's (a static-shape model fed a padded input), decoded whole
    as the app decodes it."""
    o: dict = {"kind": kind}
    mask = np.ones(got.shape, dtype=bool) if valid is None else valid
    if not np.all(np.isfinite(got[mask])):
        o.update(non_finite=True, max_abs_error=float("inf"), mean_abs_error=float("inf"), max_rel_error=float("inf"))
    else:
        d = np.abs(got - ref)[mask]
        o["max_abs_error"] = float(d.max()) if d.size else 0.0
        o["mean_abs_error"] = float(d.mean()) if d.size else 0.0
        # Relative to the output's own scale: box pixels and probabilities can share one budget.
        o["max_rel_error"] = o["max_abs_error"] / max(float(np.abs(ref[mask]).max()) if d.size else 0.0, 1e-12)
    if kind in ARGMAX_KINDS:
        pred, ref_pred = decisions(got, kind), decisions(ref, kind)
        # A position is real when its scores are (the class axis is never padded alone).
        at = mask.reshape(got.shape if got.ndim > 1 else (*got.shape, 1))[..., 0]
        o["decision"] = "threshold" if got.ndim == 1 or got.shape[-1] == 1 else "argmax"
        o["top1_agreement"] = float((pred == ref_pred)[at].mean())
        if pred.ndim > 1:  # a sequence: one decision per position, and whole sequences
            o["positions"] = int(at.reshape(len(at), -1).sum(1).max())
            o["sequence_agreement"] = float(((pred == ref_pred) | ~at).reshape(len(pred), -1).all(1).mean())
        elif labels is not None and labels.shape == pred.shape:
            o["label_accuracy"] = float((pred == labels).mean())
            o["native_label_accuracy"] = float((ref_pred == labels).mean())
            o["accuracy_drop"] = o["native_label_accuracy"] - o["label_accuracy"]
    if kind == "ctc" and got.ndim == 3:
        # What a user reads: the decoded text (per step, a changed blank/repeat may not change it, and vice versa).
        steps = mask[:, :, 0].sum(1)  # each sample's real length
        own = steps if got_steps is None else got_steps
        g = [ctc_decode(got[i:i + 1, :t], blank)[0] for i, t in enumerate(own)]
        r = [ctc_decode(ref[i:i + 1, :t], blank)[0] for i, t in enumerate(steps)]
        o["sequence_match"] = float(np.mean([a == b for a, b in zip(g, r)]))
        o["char_error_rate"] = sum(edit_distance(a, b) for a, b in zip(g, r)) / max(sum(len(b) for b in r), 1)
        o["reference_chars"] = sum(len(b) for b in r)
    if kind == "embedding":
        g, r = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
        cos = (g * r).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1) + 1e-12)
        o["min_cosine"], o["mean_cosine"] = float(cos.min()), float(cos.mean())
        if len(g) >= 3:
            o["retrieval_agreement"] = retrieval_agreement(g, r)
    return o


def nearest_neighbours(x: np.ndarray) -> np.ndarray:
    """For each row, the index of the most cosine-similar other row."""
    u = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def retrieval_agreement(got: np.ndarray, ref: np.ndarray) -> float:
    """Retrieval as an app does it, with every sample as a query over the others: the fraction of samples whose
    nearest neighbour is the same with these embeddings as with the reference's. Close calls among the samples
    make it stricter than cosine alone: a small error that reorders neighbours shows here."""
    return float((nearest_neighbours(got) == nearest_neighbours(ref)).mean())


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` [N, 4] with every box in `b` [M, 4] (x1, y1, x2, y2) -> [N, M]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _detections(decoded, n: int, who: str) -> list[dict]:
    """A decoder's result checked: one {boxes [K, 4], scores [K], classes [K]} per sample."""
    if not isinstance(decoded, (list, tuple)) or len(decoded) != n:
        raise ValueError(f"{who}: expected a list of {n} per-sample detections, got "
                         f"{type(decoded).__name__}{f' of {len(decoded)}' if isinstance(decoded, (list, tuple)) else ''}")
    out = []
    for i, d in enumerate(decoded):
        try:
            boxes = np.asarray(d["boxes"], np.float64).reshape(-1, 4)
            scores = np.asarray(d["scores"], np.float64).reshape(-1)
            classes = np.asarray(d.get("classes", np.zeros(len(scores))), np.int64).reshape(-1)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{who}: sample {i}: expected {{'boxes': [K, 4], 'scores': [K], 'classes'?: [K]}} "
                             f"({type(e).__name__}: {e})") from None
        if not len(boxes) == len(scores) == len(classes):
            raise ValueError(f"{who}: sample {i}: {len(boxes)} boxes, {len(scores)} scores, {len(classes)} classes")
        out.append({"boxes": boxes, "scores": scores, "classes": classes})
    return out


def match_detections(got: dict, ref: dict, iou: float) -> tuple[list[tuple[int, int, float]], int, int]:
    """Greedy matching of one sample's detections, the reference's most confident first: each takes the
    unmatched candidate detection of its class that overlaps it most, if by at least `iou`.
    Returns (matched pairs (ref index, got index, IoU), missed reference detections, extra candidate ones)."""
    overlap = box_iou(ref["boxes"], got["boxes"])
    overlap[ref["classes"][:, None] != got["classes"][None, :]] = -1.0
    taken, pairs = np.zeros(len(got["boxes"]), dtype=bool), []
    for r in np.argsort(-ref["scores"], kind="stable"):
        cand = np.where(taken, -1.0, overlap[r]) if len(taken) else np.empty(0)
        if cand.size and cand.max() >= iou:
            g = int(cand.argmax())
            taken[g] = True
            pairs.append((int(r), g, float(overlap[r, g])))
    return pairs, len(ref["boxes"]) - len(pairs), int((~taken).sum())


def detection_accuracy(got: list[dict], ref: list[dict], iou: float) -> dict:
    """Decoded detections against the reference's, over all samples: missed and extra detections (fractions of
    the reference's), the matched pairs' IoU and score differences."""
    n_ref = sum(len(r["boxes"]) for r in ref)
    n_got = sum(len(g["boxes"]) for g in got)
    ious, score_err, missed, extra, changed = [], [], 0, 0, 0
    for g, r in zip(got, ref):
        pairs, m, e = match_detections(g, r, iou)
        missed, extra, changed = missed + m, extra + e, changed + bool(m or e)
        ious += [p[2] for p in pairs]
        score_err += [abs(g["scores"][j] - r["scores"][i]) for i, j, _ in pairs]
    return {"kind": "detection", "iou_threshold": iou, "reference_detections": n_ref, "detections": n_got,
            "matched": len(ious), "missed": missed, "extra": extra,
            "missed_detection_rate": missed / max(n_ref, 1), "extra_detection_rate": extra / max(n_ref, 1),
            "samples_changed": changed,
            "min_box_iou": float(min(ious)) if ious else (1.0 if not n_ref else 0.0),
            "mean_box_iou": float(np.mean(ious)) if ious else None,
            "max_score_error": float(max(score_err)) if score_err else 0.0}


# Per-output figures summarised for the whole model (the report's columns, the release gate): the worst output.
WORST = {"max_abs_error": max, "max_rel_error": max, "top1_agreement": min, "sequence_agreement": min,
         "min_cosine": min, "retrieval_agreement": min, "sequence_match": min, "char_error_rate": max,
         "accuracy_drop": max, "missed_detection_rate": max, "extra_detection_rate": max, "min_box_iou": min,
         "max_score_error": max}


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], specs: list[OutputSpec],
            labels: np.ndarray | None, steps: int | None = None, detections: list[DetectionSpec] = ()) -> dict:
    """Agreement of `outputs` with the `reference` (same samples, same order), per output (`outputs`) and for
    the model as a whole (the worst output on each figure). With `steps` (samples are sequences of that many
    steps, a stateful model's), each output's max abs error is also given per step: drift shows as growth.
    Each of `detections` is decoded from both by the recipe's decoder and judged beside the outputs."""
    from pipeline.evaluate.batching import split_extents

    outputs, got_ext = split_extents(outputs)
    reference, ref_ext = split_extents(reference)
    per = {}
    for spec in specs:
        if spec.name not in outputs:
            raise ValueError(f"output {spec.name!r} missing (got {sorted(outputs)})")
        got = np.asarray(outputs[spec.name], dtype=np.float64)
        ref = np.asarray(reference[spec.name], dtype=np.float64)
        valid = got_steps = None
        # A ctc output may be longer than native's: a static-shape model fed a line padded up to its compiled width
        # reads on over the padding (adapter.js runStatic); what a reader sees is its whole decoded text.
        longer = (0,) if spec.kind == "ctc" and got.ndim == 3 else ()
        if spec.name in got_ext or spec.name in ref_ext or (longer and got.shape[1] != ref.shape[1]):
            got, ref, valid, got_steps = aligned(spec.name, got, ref, got_ext.get(spec.name), ref_ext.get(spec.name),
                                                 longer)
        if got.shape != ref.shape:
            raise ValueError(f"output {spec.name!r} has shape {got.shape}, native has {ref.shape}")
        per[spec.name] = output_accuracy(got, ref, spec.kind, labels, spec.blank, valid,
                                         got_steps if longer else None)
        if steps and len(got) % steps == 0 and np.all(np.isfinite(got)):
            err = np.abs(got - ref).reshape(len(got) // steps, steps, -1)
            per[spec.name]["max_abs_error_by_step"] = [float(e) for e in err.max(axis=(0, 2))]
    n = len(next(iter(reference.values())))
    for i, det in enumerate(detections):
        who = f"detections[{i}] {det.name!r}: {det.decode.function}"
        decoded = []
        for src in (outputs, reference):
            try:
                raw = det.decode.call(outputs={k: np.asarray(v) for k, v in src.items()})
            except Exception as e:  # the recipe's code: say whose and where
                raise ValueError(f"{who} failed: {type(e).__name__}: {e}") from None
            decoded.append(_detections(raw, n, who))
        per[det.name] = detection_accuracy(decoded[0], decoded[1], det.iou)
    m: dict = {"samples": int(len(next(iter(reference.values())))), "outputs": per}
    for key, worst in WORST.items():
        vals = [o[key] for o in per.values() if key in o]
        if vals:
            m[key] = worst(vals)
    m["mean_abs_error"] = float(np.mean([o["mean_abs_error"] for o in per.values() if "mean_abs_error" in o]))
    labelled = [o for o in per.values() if "label_accuracy" in o]
    if labelled:  # the most degraded labelled output
        o = max(labelled, key=lambda o: o["accuracy_drop"])
        m.update(label_accuracy=o["label_accuracy"], native_label_accuracy=o["native_label_accuracy"])
    if any(o.get("non_finite") for o in per.values()):
        m["non_finite"] = True
    return m


def aligned(name: str, got: np.ndarray, ref: np.ndarray, got_ext, ref_ext, longer: tuple[int, ...] = ()):
    """Padded outputs of samples of different sizes, checked sample by sample for the same real shape (or, on the
    per-sample axes `longer`, at least native's) and padded alike: (got, ref, valid mask, got's own length on the
    first per-sample axis)."""
    def extents(a, e):
        return np.asarray(e) if e is not None else np.tile(np.asarray(a.shape[1:]), (len(a), 1))

    ge, re_ = extents(got, got_ext), extents(ref, ref_ext)
    if len(got) != len(ref) or ge.shape != re_.shape:
        raise ValueError(f"output {name!r} has shape {got.shape}, native has {ref.shape}")
    differs = ge != re_
    for axis in longer:
        differs[:, axis] = ge[:, axis] < re_[:, axis]
    bad = np.where(differs.any(1))[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"output {name!r}: sample {i} has shape {ge[i].tolist()}, native has {re_[i].tolist()}")
    big = tuple(np.maximum(got.shape[1:], ref.shape[1:]))
    out = []
    for a in (got, ref):
        p = np.zeros((len(a), *big), dtype=a.dtype)
        p[(slice(None), *(slice(0, d) for d in a.shape[1:]))] = a
        out.append(p)
    valid = np.zeros((len(got), *big), dtype=bool)
    for i, e in enumerate(re_):
        valid[(i, *(slice(0, int(d)) for d in e))] = True
    return out[0], out[1], valid, (ge[:, 0] if ge.shape[1] else None)


def budget_violations(acc: dict, budget: Budget) -> list[str]:
    """Why `acc` is outside the budget; empty when inside. Each bound applies to every output it means something
    for (top-1 to logits/probabilities, cosine to embeddings, errors to all), with the budget's per-output bounds
    taking precedence; a bound no output can be judged by is a violation (it cannot be checked)."""
    per = acc.get("outputs") or {"": acc}  # records without per-output figures: the model as a whole
    named = len(per) > 1
    out = []
    if acc.get("non_finite"):
        out.append("outputs contain NaN/Inf")
    checked: set[str] = set()
    for name, o in per.items():
        b = budget.for_output(name)
        who = f"{name}: " if named else ""
        if b.get("min_top1_agreement") is not None and "top1_agreement" in o:
            checked.add("min_top1_agreement")
            if o["top1_agreement"] < b["min_top1_agreement"]:
                out.append(f"{who}top-1 agreement {o['top1_agreement']:.4f} < {b['min_top1_agreement']}")
        if b.get("max_accuracy_drop") is not None and "accuracy_drop" in o:
            checked.add("max_accuracy_drop")
            if o["accuracy_drop"] > b["max_accuracy_drop"]:
                out.append(f"{who}labelled accuracy drop {o['accuracy_drop'] * 100:.2f} points > "
                           f"{b['max_accuracy_drop'] * 100:.2f}")
        for key, label in (("max_abs_error", "max abs error"), ("max_rel_error", "max relative error")):
            if b.get(key) is not None:
                if o.get("kind") == "detection":  # judged by matching, not elementwise
                    continue
                checked.add(key)
                v = o.get(key, float("inf"))
                if not v <= b[key]:
                    out.append(f"{who}{label} {v:.3g} > {b[key]:.3g}")
        if b.get("min_cosine") is not None and "min_cosine" in o:
            checked.add("min_cosine")
            if o["min_cosine"] < b["min_cosine"]:
                out.append(f"{who}cosine similarity {o['min_cosine']:.5f} < {b['min_cosine']}")
        if b.get("min_sequence_match") is not None and "sequence_match" in o:
            checked.add("min_sequence_match")
            if o["sequence_match"] < b["min_sequence_match"]:
                out.append(f"{who}decoded sequences match {o['sequence_match']:.4f} < {b['min_sequence_match']}")
        if b.get("max_char_error_rate") is not None and "char_error_rate" in o:
            checked.add("max_char_error_rate")
            if o["char_error_rate"] > b["max_char_error_rate"]:
                out.append(f"{who}character error rate {o['char_error_rate']:.4f} > {b['max_char_error_rate']}")
        if b.get("min_retrieval_agreement") is not None and "retrieval_agreement" in o:
            checked.add("min_retrieval_agreement")
            if o["retrieval_agreement"] < b["min_retrieval_agreement"]:
                out.append(f"{who}retrieval agreement {o['retrieval_agreement']:.4f} < "
                           f"{b['min_retrieval_agreement']} (nearest neighbour changed)")
        if o.get("kind") == "detection":
            for key, label, worse in (("max_missed_detections", "missed detections", "missed_detection_rate"),
                                      ("max_extra_detections", "extra detections", "extra_detection_rate")):
                if b.get(key) is not None:
                    checked.add(key)
                    if o[worse] > b[key]:
                        count = o["missed" if "missed" in key else "extra"]
                        out.append(f"{who}{label} {o[worse]:.4f} ({count} of {o['reference_detections']} reference "
                                   f"detections) > {b[key]}")
            if b.get("min_box_iou") is not None:
                checked.add("min_box_iou")
                if o["min_box_iou"] < b["min_box_iou"]:
                    out.append(f"{who}box IoU {o['min_box_iou']:.4f} < {b['min_box_iou']} (worst matched box)")
            if b.get("max_score_error") is not None:
                checked.add("max_score_error")
                if o["max_score_error"] > b["max_score_error"]:
                    out.append(f"{who}detection score error {o['max_score_error']:.4g} > {b['max_score_error']}")
    why = {"min_top1_agreement": "top-1 agreement not measurable (no logits output)",
           "max_accuracy_drop": "labelled accuracy not measurable (no labels or no logits output)",
           "min_cosine": "cosine similarity not measurable (no embedding output)",
           "min_retrieval_agreement": "retrieval agreement not measurable (no embedding output, or under 3 samples)",
           "min_sequence_match": "decoded sequences not measurable (no ctc output [N, T, classes])",
           "max_char_error_rate": "character error rate not measurable (no ctc output [N, T, classes])",
           **{k: f"{k} not measurable (no `detections` entry in the recipe)" for k in
              ("max_missed_detections", "max_extra_detections", "min_box_iou", "max_score_error")},
           "max_abs_error": "max abs error not measurable", "max_rel_error": "max relative error not measurable"}
    for key in budget.bounds() - checked:
        out.append(why[key])
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

    def feels_fine(q):  # the page's verdict (bench.js isResponsive, the one rule, with the thresholds above)
        return ok(q) and q.get("responsive") is True

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
