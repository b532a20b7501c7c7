"""Luigi tasks: parameters, requires, output and a `work` that is one call into the plain functions that do the
work (pipeline.sources, pipeline.families, pipeline.evaluate, pipeline.release), which tests call without Luigi.

Every task writes one folder, atomically, named by its content key (pipeline.keys). Failures are results too
(pipeline.outcome): one broken variant or recipe never stops the others.

A task is complete only while its result still describes reality:
* its result exists and is not a retryable failure (those are tried again by the next builds, up to
  outcome.MAX_ATTEMPTS attempts in all; a task counts as complete for the rest of the run that wrote it);
* every file it wrote still has the content recorded in its result (`outputs`);
* every input it consumed is still the one it recorded (`inputs`: the digest of each input task's result) and is
  itself intact and not waiting for a retry.
So a rerun, a repair or a retry upstream reaches everything downstream of it, and a lost or altered file is
rebuilt, not trusted. Files that cross a task boundary are checked by hash where they are used.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

import luigi

from pipeline import build_store, keys
from pipeline.fsutil import atomic_dir, machine_lock, remove_stale_temps, sha256_file, write_json_atomic
from pipeline.outcome import (MAX_ATTEMPTS, PipelineError, RegistryError, failure_record, is_environment_failure,
                              short, upstream_failure)
from pipeline.recipe import Recipe, RecipeError, load_recipe, load_recipes
from pipeline.hosts import DEFAULT_HOSTS, LOCAL as LOCAL_HOST, HostsError, hosts_for

log = logging.getLogger("luigi-interface")

RESULT_FILE = "result.json"
# Results this process wrote are complete for the rest of the run even when they are retryable failures:
# a dependant scheduled in the same run must see its input as done (and record the failure as its own).
_WRITTEN_HERE: set[str] = set()
_EXPLAINED: set[str] = set()


@functools.lru_cache(maxsize=None)
def _recipe(path: str, mtime_ns: int) -> Recipe:
    return load_recipe(path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # missing or torn: not a result


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != RESULT_FILE}


class RecipeTask(luigi.Task):
    recipe_path = luigi.Parameter()
    artifacts_dir = luigi.Parameter(default="artifacts")
    stage = "task"
    # Selection reads its inputs' failures as data; every other task fails with its first failed input.
    carries_upstream_failures = True
    # Inputs whose failure is no failure of this task (it reads them if they are there).
    optional_inputs: tuple[str, ...] = ()
    # A model's failure is a result; the machine's (disk full, I/O error) and publishing's fail the build instead.
    records_failures = True

    @property
    def recipe(self) -> Recipe:
        p = Path(self.recipe_path)
        return _recipe(str(p), p.stat().st_mtime_ns)

    def fingerprint(self) -> object:
        """What this task's own result depends on, besides its inputs' keys."""
        return None

    @property
    def key(self) -> str:
        # Luigi reuses task instances with equal parameters, so the key is memoised per recipe version only.
        stamp = Path(self.recipe_path).stat().st_mtime_ns
        if getattr(self, "_key", (None, None))[0] != stamp:
            deps = [t.key for t in luigi.task.flatten(self.requires())]
            self._key = (stamp, keys.task_key(type(self).__name__, self.fingerprint(), deps))
        return self._key[1]

    def folder_name(self) -> str:
        return type(self).__name__

    @property
    def out_dir(self) -> Path:
        r = self.recipe
        return Path(self.artifacts_dir).resolve() / "build" / r.name / r.version / f"{self.folder_name()}-{self.key}"

    def output(self):
        return luigi.LocalTarget(str(self.out_dir / RESULT_FILE))

    def inputs(self) -> dict[str, "RecipeTask"]:
        req = self.requires()
        return req if isinstance(req, dict) else {str(i): t for i, t in enumerate(luigi.task.flatten(req))}

    # Work that uses no cores of this machine (a measurement in a browser elsewhere) does not wait for its timings.
    uses_build_cores = True

    def machine_lock(self):
        """Timed work (resource `timing`) holds this machine's timing lock exclusively, every other task shares it:
        a timing never overlaps a conversion of another worker here (on 2 cores that skewed timings), while
        conversions still run side by side. The resource alone is not enough: luigid grants it across all machines
        and never weighs untimed tasks (fsutil.machine_lock)."""
        if "timing" in (self.resources or {}):
            return machine_lock("timing")
        return machine_lock("timing", shared=True) if self.uses_build_cores else contextlib.nullcontext()

    def stored_result(self) -> dict | None:
        """This task's result in the local artifacts folder, fetched from the shared build store (pipeline.build_store)
        first when the folder lacks it and a store is configured."""
        res = _read_json(Path(self.output().path))
        if res is None and build_store.store_url() and build_store.pull(self.out_dir, Path(self.artifacts_dir)):
            res = _read_json(Path(self.output().path))
        return res

    def result(self) -> dict:
        res = self.stored_result()
        if res is None:
            raise PipelineError(f"{self.output().path}: result missing or unreadable", stage=self.stage,
                                retryable=True)
        return res

    def retry_pending(self, res: dict) -> bool:
        return bool(res.get("retry")) and self.output().path not in _WRITTEN_HERE

    def outputs_intact(self, res: dict) -> bool:
        for rel, sha in (res.get("outputs") or {}).items():
            p = self.out_dir / rel
            if not p.is_file() or keys.content_hash(p) != sha:
                return False
        return True

    def stale_reason(self) -> str | None:
        """Why this task's stored result cannot be trusted (None: it can)."""
        res = self.stored_result()
        if res is None:
            return "no result yet"
        if self.retry_pending(res):
            return f"retrying ({res.get('stage')}: {res.get('error')})"
        if not self.outputs_intact(res):
            return "a file it wrote is missing or changed"
        for name, dep in self.inputs().items():
            dres = dep.stored_result()
            if dres is None or dep.retry_pending(dres) or not dep.outputs_intact(dres):
                return f"its input {dep.folder_name()} is being rebuilt"
            if (res.get("inputs") or {}).get(name) != keys.result_digest(dres):
                return f"its input {dep.folder_name()} changed"
        return None

    def complete(self) -> bool:
        why = self.stale_reason()
        if why and why != "no result yet" and self.output().path not in _EXPLAINED:
            _EXPLAINED.add(self.output().path)
            log.info("%s %s: rerun: %s", self.recipe.name, self.folder_name(), why)
        return why is None

    def file_sha256(self, path: Path) -> str:
        """The content this task recorded for a file it produced or located."""
        res, path = self.result(), Path(path)
        try:
            return res["outputs"][path.relative_to(self.out_dir).as_posix()]
        except (KeyError, ValueError):
            return res["sha256"]

    def verified(self, dep: str, path: Path) -> Path:
        """`path`, produced by input `dep`, checked by a fresh read against what `dep` recorded for it."""
        keys.verify_file(path, self.inputs()[dep].file_sha256(path), f"{self.folder_name()} input {dep}")
        return path

    def work(self, out: Path) -> dict:
        raise NotImplementedError

    def on_failure(self, exception):
        # What luigid and the summary show: the cause, not a traceback (the log has that).
        return short(exception) if isinstance(exception, (PipelineError, OSError)) else super().on_failure(exception)

    def run(self):
        started = time.time()
        self.set_status_message(f"{self.recipe.name}: {self.folder_name()} running")
        prev = self.stored_result()
        attempt = prev.get("attempt", 1) + 1 if prev and prev.get("retry") else 1
        with atomic_dir(self.out_dir) as tmp:
            consumed = {name: dep.result() for name, dep in self.inputs().items()}
            waited = 0.0
            try:
                failed = [r for k, r in consumed.items() if r["status"] != "ok" and k not in self.optional_inputs]
                if failed and self.carries_upstream_failures:
                    raise upstream_failure(failed[0])
                asked = time.time()
                with self.machine_lock():
                    waited = time.time() - asked  # for the machine's timing lock: not this task's work
                    res = {"status": "ok", **self.work(tmp)}
            except Exception as e:  # noqa: BLE001 - every failure is a recorded result (pipeline.outcome)
                if not self.records_failures or is_environment_failure(e):
                    log.error("%s %s: the build failed: %s", self.recipe.name, self.folder_name(), short(e))
                    raise
                res = failure_record(e, self.stage)
                if res["retry"] and attempt >= MAX_ATTEMPTS:
                    res["retry"] = False
                    res["error"] += (f" [gave up after {attempt} attempts; change an input or delete "
                                     f"{self.out_dir} to try again]")
                log.warning("%s %s: %s at stage %s: %s", self.recipe.name, self.folder_name(), res["status"],
                            res["stage"], res["error"])
            res.update(recipe=str(self.recipe_path), task=self.folder_name(), key=self.key, attempt=attempt,
                       seconds=round(time.time() - started, 3), lock_wait_s=round(waited, 3),
                       worker=f"{socket.gethostname()}:{os.getpid()}",
                       inputs={name: keys.result_digest(r) for name, r in consumed.items()},
                       outputs=_file_hashes(tmp))
            write_json_atomic(tmp / RESULT_FILE, res)
        _WRITTEN_HERE.add(self.output().path)
        if build_store.store_url() and not res.get("retry"):  # shared with the other build machines
            try:
                build_store.push(self.out_dir, Path(self.artifacts_dir), res)
            except Exception as e:  # noqa: BLE001 - the local build stands; others will build it themselves
                log.warning("%s %s: not stored in the build store: %s", self.recipe.name, self.folder_name(), short(e))


# ---------------------------------------------------------------- source, data, canonical model, reference


class SourceModel(RecipeTask):
    """Locate (or train) the source weights / ONNX / Keras file and record its content hash."""

    stage = "source"

    def fingerprint(self):
        from pipeline.sources import file_ref

        fp = {"source": self.recipe.source.model_dump(mode="json")}
        ref = file_ref(self.recipe)
        module = getattr(self.recipe.source, "module", None)
        fp["code"] = {k: c.code_hash() for k, c in (("module", module), ("trainer", getattr(ref, "trainer", None)))
                      if c is not None}
        if getattr(ref, "trainer", None) is not None:
            return fp  # trained weights depend on the trainer spec only
        try:
            fp["content"] = keys.content_hash(self.recipe.resolve_file(ref))
        except Exception as e:  # noqa: BLE001 - the key stays computable; run() reports the problem
            fp["missing"] = str(e)
        return fp

    def work(self, out: Path) -> dict:
        from pipeline.sources import locate_or_train

        return locate_or_train(self.recipe, out)

    def file(self) -> Path:
        r = self.result()
        return self.out_dir / r["file"] if "file" in r else Path(r["path"])


def asset_hashes(recipe) -> dict[str, str]:
    """The content hash of each of the recipe's assets (a missing one: why, so the key stays computable and the
    task that needs it reports the problem)."""
    out = {}
    for name, ref in recipe.assets.items():
        try:
            out[name] = keys.content_hash(recipe.resolve_file(ref))
        except Exception as e:  # noqa: BLE001
            out[name] = f"missing: {e}"
    return out


class EvalData(RecipeTask):
    """Evaluation (or calibration) samples as an .npz, checked against the recipe's inputs."""

    purpose = luigi.ChoiceParameter(choices=["eval", "calibration"], default="eval")
    stage = "data"

    def loader(self):
        d = self.recipe.data
        return d.calibration if self.purpose == "calibration" and d.calibration is not None else d.eval

    def fingerprint(self):
        from pipeline.recipe import takes_assets

        fp = {"loader": self.loader().model_dump(mode="json"), "code": self.loader().code_hash(),
              "inputs": [i.model_dump(mode="json") for i in self.recipe.inputs]}
        if takes_assets(self.loader()):  # the data depends on the assets' content (a tokenizer)
            fp["assets"] = asset_hashes(self.recipe)
        d = self.recipe.data
        if d.sequence_length or d.feedback:  # how samples are fed (every result downstream depends on it)
            fp["sequences"] = {"length": d.sequence_length, "feedback": d.feedback}
        return fp

    def folder_name(self):
        return f"EvalData-{self.purpose}"

    def work(self, out: Path) -> dict:
        from pipeline.evaluate.samples import materialise

        return materialise(self.recipe, self.loader(), out)

    def load(self):
        from pipeline.evaluate.samples import load

        return load(self.out_dir)


class CanonicalOnnx(RecipeTask):
    """The model as checked ONNX with shapes inferred: the root every variant is built from."""

    stage = "export"

    def requires(self):
        return {"source": SourceModel(self.recipe_path, self.artifacts_dir),
                "data": EvalData(self.recipe_path, self.artifacts_dir)}

    def fingerprint(self):
        r = self.recipe
        return {"inputs": [i.model_dump(mode="json") for i in r.inputs],
                "outputs": [o.model_dump(mode="json", exclude={"labels"}) for o in r.outputs],
                "opset": getattr(r.source, "opset", None), "toolchain": keys.python_toolchain()}

    def work(self, out: Path) -> dict:
        from pipeline.sources import canonical_onnx

        inputs, _ = self.requires()["data"].load()
        source = self.verified("source", self.requires()["source"].file())
        return canonical_onnx(self.recipe, source, inputs, out / "model.onnx")

    def file(self) -> Path:
        return self.out_dir / self.result()["file"]


class ReferenceOutputs(RecipeTask):
    """The source framework's outputs on every sample: what every variant is compared with."""

    stage = "reference"

    def requires(self):
        return {"source": SourceModel(self.recipe_path, self.artifacts_dir),
                "data": EvalData(self.recipe_path, self.artifacts_dir)}

    def work(self, out: Path) -> dict:
        from pipeline.evaluate.reference import write_reference

        inputs, labels = self.requires()["data"].load()
        source = self.verified("source", self.requires()["source"].file())
        return write_reference(self.recipe, source, inputs, labels, out)

    def load(self):
        from pipeline.evaluate.reference import load_reference

        return load_reference(self.out_dir)


# ---------------------------------------------------------------- variants


def _build(task: RecipeTask, build, **extra):
    """Run a family's build with its inputs checked: the canonical model and the source file as recorded before the
    build, and still so after it (a converter that rewrites its input would spoil every other variant)."""
    from pipeline.families import BuildInputs

    deps = task.requires()
    onnx, source = task.verified("onnx", deps["onnx"].file()), task.verified("source", deps["source"].file())
    res = build(BuildInputs(canonical_onnx=onnx, recipe=task.recipe, source_file=source,
                            calibration_batch=task.recipe.data.eval_batch,
                            cache_dir=Path(task.artifacts_dir).resolve() / "cache", **extra))
    task.verified("onnx", onnx)
    task.verified("source", source)
    return res


class BuildPrerequisite(RecipeTask):
    """A per-recipe intermediate shared by several variants of a family (e.g. a TF SavedModel)."""

    name = luigi.Parameter()

    @property
    def stage(self):
        return f"prerequisite {self.name}"

    def spec(self):
        from pipeline.families import all_prerequisites

        return all_prerequisites()[self.name]

    def requires(self):
        return {"onnx": CanonicalOnnx(self.recipe_path, self.artifacts_dir),
                "source": SourceModel(self.recipe_path, self.artifacts_dir)}

    def fingerprint(self):
        from pipeline.families import code_hash

        return {"name": self.name, "extra": self.spec().fingerprint(), "toolchain": keys.python_toolchain(),
                "code": code_hash(self.name)}

    def folder_name(self):
        return f"Prerequisite-{self.name}"

    def work(self, out: Path) -> dict:
        return {"info": _build(self, lambda inputs: self.spec().build(inputs, out))}


class BuildVariant(RecipeTask):
    variant = luigi.Parameter()
    stage = "convert"

    def spec(self):
        from pipeline.families import variant

        return variant(self.variant)

    def requires(self):
        spec = self.spec()
        deps = {"onnx": CanonicalOnnx(self.recipe_path, self.artifacts_dir),
                "source": SourceModel(self.recipe_path, self.artifacts_dir)}
        if spec.needs_calibration:
            deps["calibration"] = EvalData(self.recipe_path, self.artifacts_dir, purpose="calibration")
        for name in spec.prerequisites:
            deps[f"prerequisite:{name}"] = BuildPrerequisite(self.recipe_path, self.artifacts_dir, name=name)
        return deps

    def fingerprint(self):
        from pipeline.families import code_hash

        spec = self.spec()
        return {"variant": self.variant, "family": spec.family, "calibration_batch": self.recipe.data.eval_batch,
                "toolchain": keys.python_toolchain(), "code": code_hash(self.variant)}

    def folder_name(self):
        return f"Variant-{self.variant}"

    def work(self, out: Path) -> dict:
        from pipeline.families import build_variant

        deps = self.requires()
        from pipeline.evaluate.batching import model_inputs

        # Calibration sees samples as stored (padded where their sizes differ): ranges, not outputs, matter.
        calibration = model_inputs(deps["calibration"].load()[0]) if "calibration" in deps else None
        prereqs = {}
        for k, t in deps.items():
            if k.startswith("prerequisite:"):
                for name in t.result().get("outputs") or {}:  # files crossing from another task: checked first
                    self.verified(k, t.out_dir / name)
                prereqs[k.split(":", 1)[1]] = t.out_dir
        return _build(self, lambda inputs: build_variant(self.spec(), inputs, out), calibration=calibration,
                      prerequisites=prereqs)

    def files(self) -> list[Path]:
        return [self.out_dir / f for f in self.result()["files"]]


# ---------------------------------------------------------------- measurement


class NativeRun(RecipeTask):
    """The native side of the pair. Variants with a native runner (pipeline.evaluate.native.NATIVE_RUNNERS: ONNX
    Runtime variants in onnxruntime, LiteRT variants in the ai-edge-litert interpreter; Python, CPU, 1 thread): the
    variant itself, with its accuracy against the reference. Variants with none (TF.js, TVM web modules): the
    canonical model they were made from, in onnxruntime, so browser/native ratios stay comparable."""

    variant = luigi.Parameter()
    threads = luigi.Parameter(default="1", description="thread count (a measure.<target>.threads entry; cores: "
                                                       "this machine's); other than 1: latency only")
    stage = "native"
    resources = {"timing": 1}  # timed tasks never overlap: on 2 cores they would skew each other

    def thread_count(self) -> int:
        return (os.cpu_count() or 1) if self.threads == "cores" else int(self.threads)

    def runner(self):
        from pipeline.evaluate.native import native_runner
        from pipeline.families import variant

        return native_runner(variant(self.variant).native)

    def runs_variant(self) -> bool:
        return self.runner() is not None

    def requires(self):
        deps = {"data": EvalData(self.recipe_path, self.artifacts_dir),
                "reference": ReferenceOutputs(self.recipe_path, self.artifacts_dir)}
        if self.runs_variant():
            deps["variant"] = BuildVariant(self.recipe_path, self.artifacts_dir, variant=self.variant)
        else:
            deps["onnx"] = CanonicalOnnx(self.recipe_path, self.artifacts_dir)
        return deps

    def fingerprint(self):
        from pipeline.evaluate.native import NATIVE_RUNS

        runner = self.runner()
        return {"runs": NATIVE_RUNS, "threads": 1 if self.threads == "1" else self.thread_count(),
                "toolchain": keys.python_toolchain(),
                "of_variant": self.runs_variant(),
                # a runner besides onnxruntime (whose versions the toolchain holds): its name and versions
                **({"runner": runner.name, "runner_versions": runner.versions()}
                   if runner is not None and runner.name != "ort" else {}),
                **({"judging": keys.judging(self.recipe)} if self.recipe.detections else {})}

    def folder_name(self):
        return f"Native-{self.variant}" + ("" if self.threads == "1" else f"-t{self.threads}")

    def work(self, out: Path) -> dict:
        from pipeline.evaluate.native import native_run

        deps = self.requires()
        inputs, labels = deps["data"].load()
        runner = self.runner()
        n = self.thread_count()
        at = "" if n == 1 else f" at {n} threads"
        if runner is not None:
            files = [self.verified("variant", f) for f in deps["variant"].files()]
            # Accuracy does not depend on the thread count: judged once, at 1 thread.
            return native_run(self.recipe, files[0], inputs, labels,
                              deps["reference"].load() if self.threads == "1" else None,
                              measured=f"{self.variant} in {runner.label}{at}", runner=runner.name, threads=n)
        return native_run(self.recipe, self.verified("onnx", deps["onnx"].file()), inputs, labels, None,
                          measured=f"canonical fp32 ONNX in onnxruntime{at} (this variant has no native runner)",
                          threads=n)


class BrowserMeasure(RecipeTask):
    """The variant in headless Chromium on one target: outputs for every sample, timings, memory, bytes."""

    variant = luigi.Parameter()
    target = luigi.Parameter()
    host = luigi.Parameter(default=LOCAL_HOST, description="browser host (pipeline.hosts) the measurement runs on")
    threads = luigi.Parameter(default="", description="thread count (measure.<target>.threads: 1, 2, cores); "
                                                      "empty: the target's first")
    screen = luigi.BoolParameter(default=False, description="screening: outputs and timings only "
                                                            "(pipeline.release.screen)")
    stage = "browser"
    optional_inputs = ("native",)

    def thread_count(self) -> str:
        return self.threads or str(self.recipe.measure[self.target].threads[0])

    @property
    def resources(self):
        # One measurement at a time per browser host; a local one (or a server on the build machine) also shares
        # this machine's cores with the native timings ("timing").
        h = self._host()
        return {h.resource: 1, **({"timing": 1} if h.shares_build_cores else {})}

    @property
    def uses_build_cores(self) -> bool:
        return self._host().shares_build_cores

    def requires(self):
        from pipeline.families import variant

        deps = {"variant": BuildVariant(self.recipe_path, self.artifacts_dir, variant=self.variant),
                "data": EvalData(self.recipe_path, self.artifacts_dir),
                "reference": ReferenceOutputs(self.recipe_path, self.artifacts_dir)}
        if self.recipe.measure[self.target].skip_outside_budget and variant(self.variant).native is not None:
            deps["native"] = NativeRun(self.recipe_path, self.artifacts_dir, variant=self.variant)
        return deps

    def stale_reason(self) -> str | None:
        why = super().stale_reason()
        res = None if why else self.stored_result()
        if res and res.get("status") == "skipped" and res.get("budget") != self.recipe.budget.model_dump(mode="json"):
            return "the budget it was skipped by changed"
        return why

    def fingerprint(self):
        from pipeline.families import variant

        m = self.recipe.measure[self.target]
        # This count only: adding a count to measure.<target>.threads measures that one, not the others again.
        return {"target": self.target, "method": keys.BROWSER_METHOD,
                "code": keys.measuring_code_hash(variant(self.variant).runtime), "threads": self.thread_count(),
                "measure": m.model_dump(mode="json", exclude={"threads", "screen_margin"}),
                "eval_batch": self.recipe.data.eval_batch,
                "browser": keys.browser_toolchain(), **({"subset": "even"} if m.max_eval_samples else {}),
                **({"judging": keys.judging(self.recipe)} if self.recipe.detections else {}),
                **({"host": self._host().model_dump(mode="json", exclude={"launch"})}
                   if self._host() != DEFAULT_HOSTS[0] else {}), **({"screen": True} if self.screen else {})}

    def _host(self):
        from pipeline.hosts import host

        return host(self.host)

    def folder_name(self):
        count = self.thread_count()
        return (f"Browser-{self.variant}-{self.target}" + ("" if count == "1" else f"-t{count}")
                + ("" if self.host == LOCAL_HOST else f"-{self.host}") + ("-screen" if self.screen else ""))

    def work(self, out: Path) -> dict:
        from pipeline.evaluate.browser import measure_in_browser
        from pipeline.families import variant

        from pipeline.evaluate.metrics import budget_violations
        from pipeline.outcome import OutsideBudget

        deps = self.requires()
        native = deps["native"].result() if "native" in deps else {}
        if native.get("status") == "ok" and native.get("accuracy"):
            why = budget_violations(native["accuracy"], self.recipe.budget)
            if why:
                raise OutsideBudget(f"not measured in the browser: this file natively ({native.get('measured')}) is "
                                    f"outside the budget: {'; '.join(why)}",
                                    details={"budget": self.recipe.budget.model_dump(mode="json"),
                                             "native_accuracy": native["accuracy"]})
        inputs, labels = deps["data"].load()

        def progress(stage: str, percent: int | None) -> None:  # shown by luigid's UI and `luigi` status
            self.set_status_message(f"{self.variant} on {self.target}: {stage}")
            if percent is not None:
                self.set_progress_percentage(percent)

        files = [self.verified("variant", f) for f in deps["variant"].files()]
        res = measure_in_browser(self.recipe, variant(self.variant), self.target, files, inputs, labels,
                                 deps["reference"].load(), out, progress, host=self._host(),
                                 threads=self.thread_count(), screen=self.screen)
        # What was measured, by content: selection publishes exactly these bytes or nothing.
        return {**res, "measured_files": {f.name: deps["variant"].file_sha256(f) for f in files}}


# ---------------------------------------------------------------- selection and release


def recipe_variants(recipe: Recipe) -> list[str]:
    """The recipe's variants (default: every registered one) that run on at least one of its targets."""
    from pipeline.families import all_variants

    specs = all_variants()
    return [n for n in (recipe.variants or list(specs)) if set(specs[n].targets) & set(recipe.targets)]


def _candidate(task: "BrowserMeasure", native: dict[str, dict]):
    """A measurement task's result as a selection Candidate, paired with the native run at its thread count (its
    accuracy natively is the 1-thread run's)."""
    from pipeline.families import variant
    from pipeline.release.candidates import candidate

    res, v, n = task.result(), task.variant, task.thread_count()
    files = task.requires()["variant"].files() if res["status"] == "ok" else []
    nat = native[v] if n == "1" else {**native[f"{v}@{n}"], "accuracy": native[v].get("accuracy")}
    count = NativeRun(task.recipe_path, task.artifacts_dir, variant=v, threads=n).thread_count()
    return candidate(task.recipe, v, variant(v).runtime, task.target, res, files, nat,
                     device_class=task._host().device_class, threads=count,
                     quantization=task.requires()["variant"].result().get("quantization"))


class Shortlist(RecipeTask):
    """Screening on one target and browser host: every variant measured quickly at the target's first thread count;
    the result names the contenders to measure in full and why the others were left out (pipeline.release.screen)."""

    target = luigi.Parameter()
    host = luigi.Parameter(default=LOCAL_HOST)
    stage = "screen"
    carries_upstream_failures = False  # failed screenings are data: those variants are not contenders

    def partial(self) -> bool:
        """Whether a screening leaves something out (the probe, the emulated network); if not, it is the full
        measurement at the first count, and screening only decides which variants go on to the other counts."""
        m = self.recipe.measure[self.target]
        return m.screen_margin is not None and bool(m.qoe_modes or m.network_profile)

    def screenings(self) -> dict[str, BrowserMeasure]:
        from pipeline.families import variant

        r, a, m = self.recipe_path, self.artifacts_dir, self.recipe.measure[self.target]
        return {v: BrowserMeasure(r, a, variant=v, target=self.target, host=self.host, threads=str(m.threads[0]),
                                  screen=self.partial())
                for v in recipe_variants(self.recipe) if self.target in variant(v).targets}

    def requires(self):
        r, a, screenings = self.recipe_path, self.artifacts_dir, self.screenings()
        return {**{f"native:{v}": NativeRun(r, a, variant=v) for v in screenings},
                **{f"browser:{v}": t for v, t in screenings.items()}}

    def fingerprint(self):
        s = self.recipe.selection
        return {"margin": self.recipe.measure[self.target].screen_margin, "objectives": list(s.objectives),
                "budget": self.recipe.budget.model_dump(mode="json")}

    def folder_name(self):
        return f"Shortlist-{self.target}" + ("" if self.host == LOCAL_HOST else f"-{self.host}")

    def stale_reason(self) -> str | None:
        # One level deeper than other tasks: selection also requires these screenings directly, so one that will
        # rerun this build would leave this verdict outdated at selection (Luigi does not look below a complete task).
        why = super().stale_reason()
        for dep in () if why else self.inputs().values():
            deeper = dep.stale_reason()
            if deeper:
                return f"its input {dep.folder_name()} reruns: {deeper}"
        return why

    def work(self, out: Path) -> dict:
        from pipeline.release.screen import shortlist

        deps = self.requires()
        native = {k.split(":", 1)[1]: t.result() for k, t in deps.items() if k.startswith("native:")}
        cands = [_candidate(t, native) for k, t in deps.items() if k.startswith("browser:")]
        verdict = shortlist(cands, self.recipe.selection.objectives, self.recipe.measure[self.target].screen_margin)
        # On a software GPU the page only checks correctness: a full measurement would be the same check again.
        final = [c.variant for c in cands if (c.record.get("env") or {}).get("correctness_only")]
        return {"contenders": [v for v in verdict["contenders"] if v not in final], "checked_only": final,
                **{k: {v: why for v, why in verdict[k].items() if v not in final} for k in ("why", "screened_out")}}

    def measure_in_full(self) -> dict[str, list[str]]:
        """variant -> the thread counts it is measured at in full (empty when this shortlist has no result yet)."""
        from pipeline.evaluate.browser import thread_counts
        from pipeline.families import variant

        res = self.stored_result()
        if not res or res.get("status") != "ok":
            return {}
        counts = {v: thread_counts(self.recipe, self.target, variant(v).runtime) for v in res["contenders"]}
        if not self.partial():  # the first count was measured in full already
            counts = {v: c[1:] for v, c in counts.items()}
        return {v: c for v, c in counts.items() if c}


class SelectAndPublish(RecipeTask):
    """Per target, the best candidate inside the budget → registry; every candidate → the build report.

    Its measurements come in two rounds: the screenings (static inputs, through each target's Shortlist), then the
    full measurements of the contenders each shortlist names (Luigi dynamic dependencies: known only once the
    screening has run), paired with native runs at their thread counts."""

    stage = "select"
    carries_upstream_failures = False  # failed candidates are data: they lose, with their reason in the report
    records_failures = False  # a registry that cannot be written, or a file that is not what was measured, fails

    def shortlists(self) -> dict[str, Shortlist]:
        from pipeline.families import variant

        wanted = {t for v in recipe_variants(self.recipe) for t in variant(v).targets} & set(self.recipe.targets)
        return {f"shortlist:{t}:{h.name}": Shortlist(self.recipe_path, self.artifacts_dir, target=t, host=h.name)
                for t in self.recipe.targets if t in wanted for h in hosts_for(t)}

    def requires(self):
        from pipeline.evaluate.browser import thread_counts

        r, a = self.recipe_path, self.artifacts_dir
        deps = {"onnx": CanonicalOnnx(r, a)}
        for v in recipe_variants(self.recipe):
            deps[f"native:{v}"] = NativeRun(r, a, variant=v)
        if "native:fp32" in deps:
            # The baseline every browser figure is read against (native onnxruntime, the model as exported) at
            # every thread count, contender or not.
            for n in dict.fromkeys(n for t in self.recipe.targets for n in thread_counts(self.recipe, t, "ort")
                                   if n != "1"):
                deps[f"native:fp32@{n}"] = NativeRun(r, a, variant="fp32", threads=n)
        for k, s in self.shortlists().items():
            deps[k] = s
            for v, t in s.screenings().items():
                deps[f"screen:{v}:{s.target}:{s.host}"] = t
        return deps

    def full_measurements(self) -> dict[str, RecipeTask]:
        """The contenders' full measurements and their native pairs, as far as the shortlists are known."""
        r, a, deps = self.recipe_path, self.artifacts_dir, {}
        for s in self.shortlists().values():
            for v, counts in s.measure_in_full().items():
                for n in counts:
                    if n != "1":
                        deps[f"native:{v}@{n}"] = NativeRun(r, a, variant=v, threads=n)
                    deps[f"browser:{v}:{s.target}:{s.host}:{n}"] = BrowserMeasure(r, a, variant=v, target=s.target,
                                                                                 host=s.host, threads=n)
        return deps

    def inputs(self) -> dict[str, RecipeTask]:
        return {**self.requires(), **self.full_measurements()}

    def run(self):
        yield list(self.full_measurements().values())  # dynamic dependencies: Luigi runs them, then this again
        super().run()

    def fingerprint(self):
        r = self.recipe
        return {"targets": r.targets, "budget": r.budget.model_dump(), "selection": r.selection.model_dump(mode="json"),
                "release": r.release.model_dump(mode="json"),
                "manifest": [r.description, [i.model_dump(mode="json") for i in r.inputs],
                             [o.model_dump(mode="json") for o in r.outputs]],
                "assets": asset_hashes(r),
                "labels_code": [o.labels.code_hash() for o in r.outputs if o.labels is not None]}

    def registry(self) -> Path:
        return Path(self.artifacts_dir) / "registry"

    def build_inputs(self) -> dict[str, str]:
        """What the build key is made of, coarsely, so that a refused rebuild of a frozen version can say what
        changed: each recipe field, the source file, the toolchain, our code."""
        from pipeline.families import families, module_code_hash
        from browser_validate.runtimes import RUNTIMES

        def h(obj) -> str:
            return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]

        dump = self.recipe.model_dump(mode="json")
        out = {f"recipe.{k}": h(v) for k, v in dump.items() if k not in ("name", "version")}
        out["source file"] = h(SourceModel(self.recipe_path, self.artifacts_dir).fingerprint())
        out["toolchain"] = h([keys.python_toolchain(), keys.browser_toolchain()])
        out["code"] = h([keys.CACHE_EPOCH, keys.BROWSER_METHOD, {f.name: module_code_hash(f.module)
                                                                 for f in families().values()},
                         {rt: keys.measuring_code_hash(rt) for rt in RUNTIMES}])
        return out

    def frozen_conflict(self) -> str | None:
        from pipeline.release.registry import frozen_conflict, version_entry

        entry = version_entry(self.registry(), self.recipe.name, self.recipe.version)
        why = frozen_conflict(entry, self.key, self.build_inputs())
        return f"{self.recipe.path}: {self.recipe.name} {self.recipe.version}: {why}" if why else None

    def stale_reason(self) -> str | None:
        # Besides its inputs: the registry must still hold what this result published (it may have been wiped,
        # overwritten by another build, or a published file damaged): republish then.
        from pipeline.release.registry import intact, version_entry

        why = super().stale_reason()
        if why:
            return why
        try:
            entry = version_entry(self.registry(), self.recipe.name, self.recipe.version)
        except RegistryError as e:
            return str(e)
        if entry and entry.get("frozen") and entry.get("build_key") == self.key:
            return None  # released: never rewritten (`pipeline-release verify` checks its files)
        if not entry or entry.get("build_key") != self.key or entry["report"]["path"] != self.result().get("published"):
            return "the registry does not hold this build"
        if not intact(self.registry(), entry):
            return "a published file is missing or changed"
        return None

    def work(self, out: Path) -> dict:
        from pipeline.release.candidates import select_and_publish

        deps = self.inputs()
        native = {k.split(":", 1)[1]: t.result() for k, t in deps.items() if k.startswith("native:")}
        candidates, screening = [], {}
        for s in self.shortlists().values():
            verdict = s.result()
            screening[s.target if s.host == LOCAL_HOST else f"{s.target}@{s.host}"] = {
                k: verdict.get(k) for k in ("contenders", "why", "screened_out", "checked_only", "error")
                if verdict.get(k) is not None}
            out_of_it, full = verdict.get("screened_out", {}), s.measure_in_full()
            for v, first in s.screenings().items():
                if not first.screen or v not in full:  # a full measurement already, or what stands for v
                    c = _candidate(first, native)
                    c.reasons += [out_of_it[v]] if v in out_of_it and first.screen else []
                    candidates.append(c)
                candidates += [_candidate(deps[f"browser:{v}:{s.target}:{s.host}:{n}"], native)
                               for n in full.get(v, [])]
        # Published under the content this build's key was computed from (publish refuses a file changed since).
        assets = {name: {"src": str(path), "sha256": self.fingerprint()["assets"][name]}
                  for name, path in self.recipe.asset_paths().items()}
        return select_and_publish(self.recipe, self.key, candidates, native, deps["onnx"].result(), self.registry(),
                                  self.build_inputs(), assets, screening)


class BuildAll(luigi.Task):
    """Every recipe in `recipes_dir`: convert, measure, select, publish; then the build report and a summary.

    Exit status (luigi.cfg [retcode]): 0 when every task ran, including variants whose failures are recorded in
    the report (that is the normal outcome of trying everything); non-zero when the build itself failed (a task
    raised: disk full, an unreadable registry, a file that is not what was measured), was refused (bad recipe,
    another build with the same command running), or, with --fail-on-unmet, when a recipe's target has no winner.
    """

    recipes_dir = luigi.Parameter(default="recipes")
    artifacts_dir = luigi.Parameter(default="artifacts")
    fail_on_unmet = luigi.BoolParameter(default=False, description="fail the build when a target has no winner")

    @property
    def recipe_files(self) -> list[str]:
        try:
            recipes = load_recipes(self.recipes_dir)
        except RecipeError as e:
            # A bad recipe stops the build before any work, with the file and field named (no traceback).
            raise SystemExit(f"error: invalid recipe(s):\n{e}") from None
        return [str(r.path) for r in recipes]

    def preflight(self) -> None:
        """Once per process, before scheduling: leftovers of killed runs go, and an unreadable registry stops the
        build with the file named (nothing would be published over it)."""
        if getattr(self, "_preflown", False):
            return
        from pipeline.release.registry import read_index

        _WRITTEN_HERE.clear()  # a new build: retryable failures of an earlier one in this process are retried
        _EXPLAINED.clear()
        for p in remove_stale_temps(Path(self.artifacts_dir)):
            log.info("removed the leftover of an interrupted run: %s", p)
        try:
            read_index(Path(self.artifacts_dir) / "registry")
        except RegistryError as e:
            raise SystemExit(f"error: {e}") from None
        from pipeline.hosts import load_hosts

        try:
            load_hosts()
        except HostsError as e:
            raise SystemExit(f"error: {e}") from None
        self._preflown = True
        # Released versions never change: a build that would change one stops here, before anything is written.
        frozen = [c for c in (t.frozen_conflict() for t in self.requires()) if c]
        if frozen:
            raise SystemExit("error: " + "\n".join(frozen))

    def requires(self):
        self.preflight()
        return [SelectAndPublish(p, self.artifacts_dir) for p in self.recipe_files]

    def output(self):
        key = hashlib.sha256(" ".join(t.key for t in self.requires()).encode()).hexdigest()[:16]
        return luigi.LocalTarget(str(Path(self.artifacts_dir) / "build" / f"BuildAll-{key}.json"))

    def report_path(self) -> Path:
        return Path(self.artifacts_dir) / "report" / "index.html"

    def complete(self):
        # Only while every recipe's selection is complete and the report shows exactly their results.
        marker = _read_json(Path(self.output().path))
        deps = self.requires()
        done = (marker is not None and self.report_path().is_file()
                and all(t.complete() for t in deps)
                and marker.get("selections") == [keys.result_digest(t.result()) for t in deps]
                and not (self.fail_on_unmet and self.unmet([t.result() for t in deps])))
        if done and not getattr(self, "_printed", False):  # a no-op rebuild still shows where things stand
            self._printed = True
            print(self.summary(), flush=True)
        return done

    def summary(self) -> str:
        from pipeline.release.report import console_table

        reg = Path(self.artifacts_dir) / "registry" / "index.json"
        return f"{console_table([t.result() for t in self.requires()])}\nregistry: {reg}\nreport:   {self.report_path()}"

    def run(self):
        from pipeline.release.report import write_html_report

        results = [t.result() for t in self.requires()]
        write_html_report(self.report_path().parent, results)
        write_json_atomic(Path(self.output().path), {"recipes": self.recipe_files,
                                                     "keys": [t.key for t in self.requires()],
                                                     "selections": [keys.result_digest(r) for r in results]})
        self._printed = True
        print(self.summary(), flush=True)
        unmet = self.unmet(results)
        if self.fail_on_unmet and unmet:
            raise RuntimeError(f"--fail-on-unmet: no winner for {', '.join(unmet)} (reasons in {self.report_path()})")

    @staticmethod
    def unmet(results: list[dict]) -> list[str]:
        return [f"{r['report']['model']} {t}" for r in results for t, d in r.get("targets", {}).items()
                if d["status"] != "chosen"]
