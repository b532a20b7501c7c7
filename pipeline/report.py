"""Build report: every candidate with its numbers and failure reasons, per model and target; a console summary."""
from __future__ import annotations

import html
from pathlib import Path

from pipeline.fsutil import write_bytes_atomic


def candidate_rows(candidates) -> list[dict]:
    rows = []
    for c in candidates:
        rec = c.record
        lat = rec.get("latency") or {}
        nat = (rec.get("native") or {}).get("latency_ms") or {}
        acc = rec.get("accuracy") or {}
        rows.append({
            "variant": c.variant, "runtime": c.runtime, "backend": c.backend, "status": c.status,
            "eligible": c.eligible, "reasons": c.reasons,
            "median_ms": lat.get("median"), "p90_ms": lat.get("p90"), "iqr_ms": lat.get("iqr"),
            "native_median_ms": nat.get("median"),
            "slowdown_vs_native": (lat["median"] / nat["median"]) if lat.get("median") and nat.get("median") else None,
            "cold_start_ms": rec.get("cold_start_ms"), "session_ms": rec.get("session_ms"),
            "first_inference_ms": rec.get("first_inference_ms"), "download_bytes": rec.get("download_bytes"),
            "peak_memory_bytes": rec.get("peak_memory_bytes"),
            "top1_agreement": acc.get("top1_agreement"), "label_accuracy": acc.get("label_accuracy"),
            "accuracy_drop": acc.get("accuracy_drop"), "max_abs_error": acc.get("max_abs_error"),
            "console_errors": rec.get("console_errors", [])[:5], "env": rec.get("env"),
            "ship_in": (rec.get("ship_mode") or {}).get("mode"),
            **{f"{mode}_{k}": _qoe(rec, mode, k) for mode in ("main", "worker")
               for k in ("fps", "dropped_frames", "input_delay_p95_ms")},
        })
    return rows


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
        rows = {(r["variant"], r["backend"]): r for r in rep.get("candidates", [])}
        for t, d in res.get("targets", {}).items():
            r = rows.get((d["variant"], t), {})
            winner = f"{d['runtime']}/{d['variant']}" if d["variant"] else "-"
            lines.append(f"{rep.get('model', '?'):<22} {t:<7} {d['status']:<7} {winner:<26} "
                         f"{_fmt(r.get('median_ms')):>10} {_fmt(r.get('native_median_ms')):>10} "
                         f"{d['reason'][:90]}")
    return "\n".join(lines)


COLUMNS = [("variant", "variant"), ("runtime", "runtime"), ("status", "status"), ("median_ms", "median ms"),
           ("p90_ms", "p90 ms"), ("native_median_ms", "native ms"), ("slowdown_vs_native", "× native"),
           ("cold_start_ms", "cold start ms"), ("download_bytes", "bytes"), ("peak_memory_bytes", "peak mem B"),
           ("top1_agreement", "top-1 agree"), ("label_accuracy", "label acc"), ("max_abs_error", "max |err|"),
           ("main_fps", "fps (main)"), ("main_input_delay_p95_ms", "input delay p95 ms (main)"),
           ("worker_fps", "fps (worker)"), ("worker_input_delay_p95_ms", "input delay p95 ms (worker)"),
           ("ship_in", "ship in"),
           ("reasons", "why not")]


def write_html_report(folder: Path, results: list[dict]) -> Path:
    parts = ["<!doctype html><meta charset=utf-8><title>Browser model build report</title>",
             "<style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse;margin:.5em 0 2em}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}"
             ".win{background:#e6ffe6}.bad{color:#a00}</style><h1>Browser model build report</h1>"]
    for res in results:
        rep = res.get("report", {})
        parts.append(f"<h2>{html.escape(rep.get('model', '?'))} {html.escape(rep.get('version', ''))}</h2>")
        for dec in rep.get("decisions", []):
            t = dec["target"]
            parts.append(f"<h3>target {html.escape(t)}: {html.escape(dec['status'])}"
                         f"{' — ' + html.escape(dec['chosen']) if dec['chosen'] else ''}</h3>"
                         f"<p>{html.escape(dec['reason'])}</p><table><tr>"
                         + "".join(f"<th>{h}</th>" for _, h in COLUMNS) + "</tr>")
            for row in rep.get("candidates", []):
                if row["backend"] != t:
                    continue
                cls = "win" if row["variant"] == dec["chosen"] else ("bad" if not row["eligible"] else "")
                cells = []
                for k, _ in COLUMNS:
                    v = row.get(k)
                    v = "; ".join(v) if isinstance(v, list) else _fmt(v, 4)
                    cells.append(f"<td>{html.escape(v)}</td>")
                parts.append(f"<tr class='{cls}'>" + "".join(cells) + "</tr>")
            parts.append("</table>")
    out = folder / "index.html"
    write_bytes_atomic(out, "\n".join(parts).encode())
    return out
