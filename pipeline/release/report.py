"""Build report: every candidate with its numbers and failure reasons, per model and target; a console summary."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

from pipeline.families import kept_float
from pipeline.fsutil import write_bytes_atomic


def candidate_rows(candidates) -> list[dict]:
    rows = []
    for c in candidates:
        rec = c.record
        lat = rec.get("latency") or {}
        nat = (rec.get("native") or {}).get("latency_ms") or {}
        acc = rec.get("accuracy") or {}
        rows.append({
            "variant": c.variant, "runtime": c.runtime, "target": c.target, "threads": c.threads, "status": c.status,
            "device_class": c.device_class, "software_gpu": (rec.get("device") or {}).get("software_gpu"),
            "cpu_fallback": rec.get("cpu_fallback"),  # what ran on the CPU and why (nodes and ops, where known)
            "eligible": c.eligible, "reasons": c.reasons,
            "median_ms": lat.get("median"), "p90_ms": lat.get("p90"), "iqr_ms": lat.get("iqr"),
            "timing_noisy": lat.get("noisy"),
            "native_median_ms": nat.get("median"), "native_iqr_ms": nat.get("iqr"),
            "slowdown_vs_native": (lat["median"] / nat["median"]) if lat.get("median") and nat.get("median") else None,
            "cold_start_ms": rec.get("cold_start_ms"), "cold_start": rec.get("cold_start"),
            "session_ms": rec.get("session_ms"),
            "first_inference_ms": rec.get("first_inference_ms"), "download_bytes": rec.get("download_bytes"),
            "peak_memory_bytes": rec.get("peak_memory_bytes"),
            **_model_memory(rec),
            "top1_agreement": acc.get("top1_agreement"), "label_accuracy": acc.get("label_accuracy"),
            "accuracy_drop": acc.get("accuracy_drop"), "max_abs_error": acc.get("max_abs_error"),
            **{k: acc.get(k) for k in ("min_cosine", "retrieval_agreement", "sequence_match", "char_error_rate",
                                        "missed_detection_rate", "extra_detection_rate", "min_box_iou")},
            "console_errors": rec.get("console_errors", [])[:5], "env": rec.get("env"),
            "ship_in": (rec.get("ship_mode") or {}).get("mode"),
            "kept_float": kept_float(rec.get("quantization")),
            **{f"{mode}_{k}": _qoe(rec, mode, k) for mode in ("main", "worker")
               for k in ("fps", "dropped_frames", "input_delay_p95_ms")},
        })
    return rows


def _model_memory(rec: dict) -> dict:
    """Memory to have the model ready (download, session, first inference), in bytes and as a multiple of the
    model's download: the figure an app's budget cares about, apart from the measuring run's own data."""
    grown = (rec.get("memory_phases") or {}).get("model_load_bytes")
    size = rec.get("download_bytes")
    return {"model_memory_bytes": grown,
            "model_memory_x_download": grown / size if grown is not None and size else None}


def _qoe(rec: dict, mode: str, key: str):
    q = (rec.get("qoe") or {}).get(mode) or {}
    if key == "input_delay_p95_ms":
        return (q.get("input_delay_ms") or {}).get("p95")
    return q.get(key)


def _fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def console_table(results: list[dict]) -> str:
    lines = [f"{'model':<22} {'target':<7} {'status':<7} {'winner':<26} {'median ms':>10} {'native ms':>10} reason"]
    for res in results:
        rep = res.get("report", {})
        rows = {(r["variant"], r["target"], r.get("threads", 1)): r for r in rep.get("candidates", [])}
        for t, d in res.get("targets", {}).items():
            r = rows.get((d["variant"], t, d.get("threads", 1)), {})
            winner = (f"{d['runtime']}/{d['variant']}" + (f" ×{d['threads']}t" if d.get("threads", 1) > 1 else "")
                      if d["variant"] else "-")
            lines.append(f"{rep.get('model', '?'):<22} {t:<7} {d['status']:<7} {winner:<26} "
                         f"{_fmt(r.get('median_ms')):>10} {_fmt(r.get('native_median_ms')):>10} "
                         f"{d['reason'][:90]}")
    return "\n".join(lines)


COLUMNS = [("variant", "variant"), ("runtime", "runtime"), ("threads", "threads"), ("status", "status"),
           ("median_ms", "median ms"),
           ("p90_ms", "p90 ms"), ("timing_noisy", "noisy?"), ("native_median_ms", "native ms"), ("slowdown_vs_native", "× native"),
           ("cold_start_ms", "cold start ms"), ("download_bytes", "bytes"), ("peak_memory_bytes", "peak mem B"),
           ("model_memory_bytes", "model load mem B"), ("model_memory_x_download", "× download"),
           ("top1_agreement", "top-1 agree"), ("label_accuracy", "label acc"), ("max_abs_error", "max |err|"),
           ("min_cosine", "min cosine"), ("retrieval_agreement", "retrieval agree"),
           ("sequence_match", "text match"), ("char_error_rate", "CER"),
           ("missed_detection_rate", "missed det."), ("extra_detection_rate", "extra det."),
           ("min_box_iou", "min box IoU"),
           ("main_fps", "fps (main)"), ("main_input_delay_p95_ms", "input delay p95 ms (main)"),
           ("worker_fps", "fps (worker)"), ("worker_input_delay_p95_ms", "input delay p95 ms (worker)"),
           ("cpu_fallback", "CPU fallback (what, why)"), ("ship_in", "ship in"),
           ("kept_float", "layers kept float (why)"), ("reasons", "why not")]


ALWAYS = {"variant", "runtime", "status", "median_ms", "reasons"}

PALETTE = {"ort": "#1f77b4", "tfjs": "#ff7f0e", "tvm": "#2ca02c", "litert": "#d62728"}


def _scatter_svg(rows: list[dict], x_key: str, y_key: str, x_label: str, y_label: str, chosen: Callable[[dict], bool],
                 log_x: bool = True, w: int = 460, h: int = 300) -> str:
    """A small dependency-free scatter plot: one dot per candidate, the winner ringed, failures left out."""
    import math

    pts = [(r, r[x_key], r[y_key]) for r in rows if r.get(x_key) and r.get(y_key) is not None]
    if not pts:
        return "<p><i>nothing measured to plot</i></p>"
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    xs, ys = [fx(p[1]) for p in pts], [p[2] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x1 - x0 < 1e-9 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 0.05, y1 + 0.05) if y1 - y0 < 1e-9 else (y0 - 0.08 * (y1 - y0), y1 + 0.08 * (y1 - y0))
    L, B, R, T = 60, 40, 80, 10  # room on the right for labels of the rightmost dots

    def px(v):
        return L + (fx(v) - x0) / (x1 - x0) * (w - L - R)

    def py(v):
        return h - B - (v - y0) / (y1 - y0) * (h - B - T)

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' class='plot'>",
           f"<rect x='{L}' y='{T}' width='{w - L - R}' height='{h - B - T}' fill='none' stroke='#999'/>",
           f"<text x='{(w + L) / 2}' y='{h - 6}' text-anchor='middle'>{html.escape(x_label)}</text>",
           f"<text x='12' y='{(h - B) / 2}' transform='rotate(-90 12 {(h - B) / 2})' text-anchor='middle'>"
           f"{html.escape(y_label)}</text>"]
    for v in (x0, x1):
        raw = 10 ** v if log_x else v
        out.append(f"<text x='{L + (v - x0) / (x1 - x0) * (w - L - R)}' y='{h - B + 14}' text-anchor='middle' "
                   f"font-size='10'>{_fmt(raw)}</text>")
    for v in (y0, y1):
        out.append(f"<text x='{L - 4}' y='{py(v) + 3}' text-anchor='end' font-size='10'>{_fmt(v)}</text>")
    for r, xv, yv in pts:
        colour = PALETTE.get(r["runtime"], "#7f7f7f")
        hollow = "" if r["eligible"] else " fill-opacity='0.25'"
        out.append(f"<circle cx='{px(xv):.1f}' cy='{py(yv):.1f}' r='5' fill='{colour}'{hollow}>"
                   f"<title>{html.escape(r['runtime'] + '/' + r['variant'])}: {_fmt(xv)} / {_fmt(yv)}</title></circle>")
        if chosen(r):
            out.append(f"<circle cx='{px(xv):.1f}' cy='{py(yv):.1f}' r='9' fill='none' stroke='#000' stroke-width='2'/>")
        name = r["variant"] + (f" ×{r['threads']}t" if r.get("threads", 1) > 1 else "")
        out.append(f"<text x='{px(xv) + 7:.1f}' y='{py(yv) - 6:.1f}' font-size='10'>{html.escape(name)}</text>")
    out.append("</svg>")
    return "".join(out)


def _bars_svg(rows: list[dict], key: str, label: str, w: int = 460) -> str:
    """Horizontal bars per candidate (e.g. input delay on the main thread vs in a worker)."""
    items = [(f"{r['variant']} ({r['target']})", r.get(key)) for r in rows if r.get(key) is not None]
    if not items:
        return ""
    vmax = max(v for _, v in items) or 1.0
    h = 22 * len(items) + 30
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' class='plot'>",
           f"<text x='4' y='14' font-size='12'>{html.escape(label)}</text>"]
    for i, (name, v) in enumerate(items):
        y = 24 + 22 * i
        bw = max(1.0, (w - 200) * v / vmax)
        out.append(f"<text x='4' y='{y + 12}' font-size='10'>{html.escape(name)}</text>"
                   f"<rect x='150' y='{y}' width='{bw:.1f}' height='15' fill='#8c564b'/>"
                   f"<text x='{150 + bw + 4:.1f}' y='{y + 12}' font-size='10'>{_fmt(v)}</text>")
    out.append("</svg>")
    return "".join(out)


def write_html_report(folder: Path, results: list[dict]) -> Path:
    parts = ["<!doctype html><meta charset=utf-8><link rel='icon' href='data:,'>",
             "<title>Browser model build report</title>",
             "<style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse;margin:.5em 0 2em}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}"
             ".win{background:#e6ffe6}.bad{color:#a00}.plots{display:flex;flex-wrap:wrap;gap:1em}"
             ".plot{background:#fafafa}</style><h1>Browser model build report</h1>",
             "<p>Every candidate was measured in headless Chromium against the native model on the same inputs. "
             "Green: chosen. Red: rejected (reason in the last column). Plots: faded dots are outside the budget; "
             "the ringed dot is the winner.</p>"]
    for res in results:
        rep = res.get("report", {})
        parts.append(f"<h2 id='{html.escape(rep.get('model', '?'))}'>{html.escape(rep.get('model', '?'))} "
                     f"{html.escape(rep.get('version', ''))}</h2>")
        for dec in rep.get("decisions", []):
            t = dec["target"]
            rows = [r for r in rep.get("candidates", []) if r["target"] == t
                    and dec.get("device_class") in (None, r.get("device_class"))]
            # The accuracy axis: the model's own measure (text for OCR, cosine for embeddings, top-1, else error).
            acc_key = next((k for k in ("sequence_match", "min_cosine", "top1_agreement")
                            if any(r.get(k) is not None for r in rows)), "max_abs_error")
            # Columns no candidate has a value for (cosine for a classifier) are left out.
            columns = [(k, h) for k, h in COLUMNS if k in ALWAYS or any(r.get(k) not in (None, []) for r in rows)]
            on = f" on {dec['device_class']}" if dec.get("device_class") else ""
            parts.append(f"<h3>target {html.escape(t)}{html.escape(on)}: {html.escape(dec['status'])}"
                         f"{' (provisional: software GPU)' if dec.get('provisional') else ''}"
                         f"{' — ' + html.escape(dec['chosen']) if dec['chosen'] else ''}</h3>"
                         f"<p>{html.escape(dec['reason'])}</p>")
            def won(r, dec=dec):  # the chosen variant at the chosen thread count
                return r["variant"] == dec["chosen"] and r.get("threads", 1) == (dec.get("chosen_threads") or 1)

            parts.append("<div class='plots'>"
                         + _scatter_svg(rows, "median_ms", acc_key, "median latency ms (log)", acc_key, won)
                         + _scatter_svg(rows, "download_bytes", "median_ms", "download bytes (log)", "median ms",
                                        won, log_x=True)
                         + _bars_svg(rows, "main_input_delay_p95_ms", "input delay p95 ms, inference on main thread")
                         + _bars_svg(rows, "worker_input_delay_p95_ms", "input delay p95 ms, inference in a worker")
                         + "</div>")
            parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for _, h in columns) + "</tr>")
            for row in rows:
                cls = "win" if won(row) else ("bad" if not row["eligible"] else "")
                cells = []
                for k, _ in columns:
                    v = row.get(k)
                    v = "; ".join(v) if isinstance(v, list) else _fmt(v, 4)
                    cells.append(f"<td>{html.escape(v)}</td>")
                parts.append(f"<tr class='{cls}'>" + "".join(cells) + "</tr>")
            parts.append("</table>")
    out = folder / "index.html"
    write_bytes_atomic(out, "\n".join(parts).encode())
    return out
