"""From measurements to a release decision: every (variant, target) measurement becomes a Candidate, the best per
target is selected, and the decision is written to the registry (the chosen files, their numbers, the runner-up)
and to the build report (every candidate with its numbers and why it lost)."""
from __future__ import annotations

from pathlib import Path

from pipeline.evaluate.metrics import budget_violations
from pipeline.objectives import objective_values
from pipeline.release.registry import publish
from pipeline.release.report import candidate_rows
from pipeline.release.select import Candidate, Decision, select

NATIVE_FIELDS = ("status", "latency_ms", "accuracy", "error", "measured", "threads")
LATENCY_FIELDS = ("median", "p90", "iqr")


def candidate(recipe, variant: str, runtime: str, target: str, measured: dict, files: list[Path],
              native: dict, device_class: str | None = None, threads: int = 1,
              quantization: dict | None = None) -> Candidate:
    """A browser measurement (a BrowserMeasure result) as a Candidate, judged against the recipe's budget;
    `native` is the native side at the same thread count; `threads` the count asked for (the page's own count when
    it reports one); `quantization` what the variant's build recorded of its quantization (layers kept float)."""
    c = Candidate(variant=variant, runtime=runtime, target=target, status=measured["status"], record=measured,
                  device_class=device_class or (measured.get("device") or {}).get("class"),
                  threads=int((measured.get("env") or {}).get("threads") or threads))
    c.record["native"] = {k: native.get(k) for k in NATIVE_FIELDS}
    if quantization is not None:
        c.record["quantization"] = quantization
    # What gets published: the measured files, each with the content the browser measured (checked on publish).
    hashes = measured.get("measured_files", {})
    c.record["files"] = [{"src": str(f), "sha256": hashes.get(Path(f).name)} for f in files] \
        if measured["status"] == "ok" else []
    if measured["status"] == "ok":
        c.values = objective_values(measured, native)
        c.reasons = budget_violations(measured["accuracy"], recipe.budget)
    else:
        c.reasons = [f"{measured.get('stage')}: {measured.get('error')}"]
    return c


def required_features(c: Candidate) -> list[str]:
    """The browser features this candidate needs: its runtime's for the target, the variant's own (e.g. shader-f16
    for fp16 on WebGPU), and wasm threads when measured with more than one thread."""
    from browser_validate.runtimes import RUNTIMES
    from pipeline.families import variant

    feats = list(RUNTIMES[c.runtime].features.get(c.target, ()))
    feats += variant(c.variant).required_features.get(c.target, ())
    if c.threads > 1:
        feats.append("wasm-threads")
    return list(dict.fromkeys(feats))


def candidate_entry(c: Candidate) -> dict:
    """One candidate as the index lists it: what to load (model files, runtime files), how (options, features),
    and what it measured (native figures at its own thread count)."""
    from browser_validate.runtimes import RUNTIMES

    rec, nat = c.record, c.record["native"]
    return {
        "runtime": c.runtime, "runtime_version": rec.get("env", {}).get("version"),
        "backend": c.target, "variant": c.variant,
        "runtime_options": {"threads": c.threads, "cross_origin_isolated": c.threads > 1},
        "required_features": required_features(c),
        "files": rec["files"],
        "runtime_entry": f"runtimes/{RUNTIMES[c.runtime].js}",
        "runtime_files": rec.get("runtime_files", []),
        "metrics": {
            "latency_ms": {k: rec["latency"][k] for k in LATENCY_FIELDS},
            "native_latency_ms": ({k: nat["latency_ms"][k] for k in LATENCY_FIELDS} | {"measured": nat.get("measured")})
            if nat["status"] == "ok" else {"median": None, "error": nat.get("error")},
            "cold_start_ms": rec["cold_start_ms"],
            "session_ms": rec["session_ms"], "first_inference_ms": rec["first_inference_ms"],
            "download_bytes": rec["download_bytes"],
            "accuracy": rec["accuracy"],
            "peak_memory_bytes": rec.get("peak_memory_bytes"),
            "memory_phases": rec.get("memory_phases"),
            "gpu_process_peak_bytes": rec.get("gpu_process_peak_bytes"),
            "page_memory_bytes": rec.get("page_memory_bytes"),
            "cold_start": rec.get("cold_start"),
            "qoe": rec.get("qoe"),
        },
        "ship_in": rec["ship_mode"],
    }


def target_entry(d: Decision) -> dict:
    """The index's record of one target: the winner and every eligible candidate after it (the fallbacks a loader
    walks when the browser cannot run the winner), or why nothing qualified."""
    where = {"device_class": d.device_class} if d.device_class else {}
    if d.chosen is None:
        return {"status": "unmet", "reason": d.reason, "fallbacks": [], **where}
    return {
        "status": "chosen", "reason": d.reason, **where,
        **({"provisional": True, "provisional_reason": d.provisional} if d.provisional else {}),
        "fallbacks": [candidate_entry(c) for c in d.ranking],
        # Which runtime/variant came next and how far behind: "by how much" the winner won.
        "runner_up": ({"runtime": d.ranking[1].runtime, "variant": d.ranking[1].variant,
                       "threads": d.ranking[1].threads,
                       "median_ms": d.ranking[1].median_ms,
                       "slower_by": d.ranking[1].median_ms / d.chosen.median_ms}
                      if len(d.ranking) > 1 else None),
    }


def primary(decisions: list[Decision]) -> Decision:
    """The decision a target's index entry leads with, among its device classes: a chosen one resting on real
    hardware first (on a GPU target a hardware-GPU host's measurements decide), then any chosen one, in the
    hosts' order."""
    return next((d for d in decisions if d.chosen and not d.provisional), None) or \
        next((d for d in decisions if d.chosen), decisions[0])


def output_entry(o) -> dict:
    """An output as the index describes it; its class names (when the recipe names a function) go along as a JSON
    file to store, ``{"labels": {"data": [...]}}`` until publish stores it."""
    out = {"name": o.name, "kind": o.kind}
    if o.labels is not None:
        names = o.labels.call()
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"output {o.name}: labels function {o.labels.function} must return a list of strings")
        out["labels"] = {"data": list(names)}
    return out


def select_and_publish(recipe, build_key: str, candidates: list[Candidate], native: dict[str, dict],
                       canonical: dict, registry: Path, build_inputs: dict | None = None,
                       assets: dict | None = None, screening: dict | None = None) -> dict:
    """Select per target, publish the version to the registry with its report (with `screening`, each target's
    shortlist: pipeline.release.screen); returns the task's record."""
    from browser_validate.runtimes import served_file

    s = recipe.selection
    decisions, targets = [], {}
    # selection.threads "single": only 1-thread candidates compete (the others stay in the report).
    competing = [c for c in candidates if s.threads == "all" or c.threads == 1]
    for t in recipe.targets:
        # Per device class (the class of the hosts that measured it), in the order the hosts are configured.
        classes = list(dict.fromkeys(c.device_class for c in candidates if c.target == t)) or [None]
        mine = [select(t, competing, s.tie_tolerance, s.objectives, s.goals, device_class=k) for k in classes]
        decisions += mine
        lead = primary(mine)
        targets[t] = target_entry(lead)
        if len(mine) > 1:
            targets[t]["device_classes"] = {d.device_class: target_entry(d) for d in mine}
    entry = {"description": recipe.description, "recipe": str(recipe.path), "build_key": build_key,
             "build_inputs": build_inputs or {},
             "budget": recipe.budget.model_dump(mode="json"), "release": recipe.release.model_dump(mode="json"),
             "inputs": [i.model_dump(mode="json") for i in recipe.inputs],
             "outputs": [output_entry(o) for o in recipe.outputs], "targets": targets,
             "assets": assets or {}}
    report = {"model": recipe.name, "version": recipe.version, "build_key": build_key,
              "canonical_onnx": {k: canonical.get(k) for k in ("status", "error", "bytes", "ops", "verified_on", "notes")},
              "decisions": [{"target": d.target, "device_class": d.device_class, "provisional": bool(d.provisional),
                             "status": d.status, "reason": d.reason,
                             "chosen": d.chosen.variant if d.chosen else None,
                             "chosen_threads": d.chosen.threads if d.chosen else None,
                             "ranking": [c.variant + (f"@{c.threads}t" if c.threads > 1 else "")
                                         for c in d.ranking]} for d in decisions],
              "screening": screening or {},
              "candidates": candidate_rows(candidates),
              "native": {v: {k: n.get(k) for k in ("status", "error", "latency_ms", "accuracy", "stage", "measured",
                                                   "threads")}
                         for v, n in native.items()}}
    published = publish(registry, recipe.name, recipe.version, entry, report, locate_runtime_file=served_file)
    return {"targets": {t: {"status": v["status"], "reason": v["reason"],
                            "variant": v["fallbacks"][0]["variant"] if v["fallbacks"] else None,
                            "runtime": v["fallbacks"][0]["runtime"] if v["fallbacks"] else None,
                            "threads": v["fallbacks"][0]["runtime_options"]["threads"] if v["fallbacks"] else None}
                        for t, v in targets.items()},
            "report": report, "published": published["report"]["path"]}
