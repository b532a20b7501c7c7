"""Luigi tasks: parameters, requires, output and a `work` that is one call into the plain functions that do the
work (pipeline.sources, pipeline.families, pipeline.evaluate, pipeline.release), which tests call without Luigi.

Every task writes one folder, atomically, named by its content key (pipeline.keys). Failures are results too
(pipeline.outcome): one broken variant or recipe never stops the others, and failures that may be environmental
are retried by the next build instead of being cached for ever.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from pathlib import Path

import luigi

from pipeline import keys
from pipeline.fsutil import atomic_dir, write_json_atomic
from pipeline.outcome import failure_record, upstream_failure
from pipeline.recipe import Recipe, RecipeError, load_recipe, load_recipes

log = logging.getLogger("luigi-interface")

# Results this process wrote are complete for the rest of the run even when they are retryable failures:
# a dependant scheduled in the same run must see its input as done (and record the failure as its own).
_WRITTEN_HERE: set[str] = set()


@functools.lru_cache(maxsize=None)
def _recipe(path: str, mtime_ns: int) -> Recipe:
    return load_recipe(path)


class RecipeTask(luigi.Task):
    recipe_path = luigi.Parameter()
    artifacts_dir = luigi.Parameter(default="artifacts")
    stage = "task"

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
        return luigi.LocalTarget(str(self.out_dir / "result.json"))

    def complete(self) -> bool:
        path = Path(self.output().path)
        if not path.exists():
            return False
        return str(path) in _WRITTEN_HERE or not json.loads(path.read_text()).get("retry", False)

    def result(self) -> dict:
        return json.loads(Path(self.output().path).read_text())

    def work(self, out: Path) -> dict:
        raise NotImplementedError

    def run(self):
        started = time.time()
        self.set_status_message(f"{self.recipe.name}: {self.folder_name()} running")
        with atomic_dir(self.out_dir) as tmp:
            try:
                for dep in luigi.task.flatten(self.requires()):
                    if dep.result()["status"] != "ok":
                        raise upstream_failure(dep.result())
                res = {"status": "ok", **self.work(tmp)}
            except Exception as e:  # noqa: BLE001 - every failure is a recorded result (pipeline.outcome)
                res = failure_record(e, self.stage)
                log.warning("%s %s: %s at stage %s: %s", self.recipe.name, self.folder_name(), res["status"],
                            res["stage"], res["error"])
            res.update(recipe=str(self.recipe_path), task=self.folder_name(), key=self.key,
                       seconds=round(time.time() - started, 3))
            write_json_atomic(tmp / "result.json", res)
        _WRITTEN_HERE.add(self.output().path)


# ---------------------------------------------------------------- source, data, canonical model, reference


class SourceModel(RecipeTask):
    """Locate (or train) the source weights / ONNX / Keras file and record its content hash."""

    stage = "source"

    def fingerprint(self):
        from pipeline.sources import file_ref

        fp = {"source": self.recipe.source.model_dump(mode="json")}
        ref = file_ref(self.recipe)
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


class EvalData(RecipeTask):
    """Evaluation (or calibration) samples as an .npz, checked against the recipe's inputs."""

    purpose = luigi.ChoiceParameter(choices=["eval", "calibration"], default="eval")
    stage = "data"

    def loader(self):
        d = self.recipe.data
        return d.calibration if self.purpose == "calibration" and d.calibration is not None else d.eval

    def fingerprint(self):
        return {"loader": self.loader().model_dump(mode="json"),
                "inputs": [i.model_dump(mode="json") for i in self.recipe.inputs]}

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
                "outputs": [o.model_dump(mode="json") for o in r.outputs],
                "opset": getattr(r.source, "opset", None), "toolchain": keys.python_toolchain()}

    def work(self, out: Path) -> dict:
        from pipeline.sources import canonical_onnx

        inputs, _ = self.requires()["data"].load()
        return canonical_onnx(self.recipe, self.requires()["source"].file(), inputs, out / "model.onnx")

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
        return write_reference(self.recipe, self.requires()["source"].file(), inputs, labels, out)

    def load(self):
        from pipeline.evaluate.reference import load_reference

        return load_reference(self.out_dir)


# ---------------------------------------------------------------- variants


def _build_inputs(task: RecipeTask, **extra):
    from pipeline.families import BuildInputs

    deps = task.requires()
    return BuildInputs(canonical_onnx=deps["onnx"].file(), recipe=task.recipe, source_file=deps["source"].file(),
                       calibration_batch=task.recipe.data.eval_batch,
                       cache_dir=Path(task.artifacts_dir).resolve() / "cache", **extra)


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
        return {"info": self.spec().build(_build_inputs(self), out)}


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
        calibration = deps["calibration"].load()[0] if "calibration" in deps else None
        prereqs = {k.split(":", 1)[1]: t.out_dir for k, t in deps.items() if k.startswith("prerequisite:")}
        return build_variant(self.spec(), _build_inputs(self, calibration=calibration, prerequisites=prereqs), out)

    def files(self) -> list[Path]:
        return [self.out_dir / f for f in self.result()["files"]]


# ---------------------------------------------------------------- measurement


class NativeRun(RecipeTask):
    """The native side of the pair. ONNX Runtime variants: the variant itself in onnxruntime (Python, CPU,
    1 thread), with its accuracy against the reference. Variants with no native runner (TF.js, TVM web modules):
    the canonical model they were made from, in the same onnxruntime, so browser/native ratios stay comparable."""

    variant = luigi.Parameter()
    stage = "native"
    resources = {"timing": 1}  # timed tasks never overlap: on 2 cores they would skew each other

    def runs_variant(self) -> bool:
        from pipeline.families import variant

        return variant(self.variant).native == "ort"

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

        return {"runs": NATIVE_RUNS, "threads": 1, "toolchain": keys.python_toolchain(),
                "of_variant": self.runs_variant()}

    def folder_name(self):
        return f"Native-{self.variant}"

    def work(self, out: Path) -> dict:
        from pipeline.evaluate.native import native_run

        deps = self.requires()
        inputs, labels = deps["data"].load()
        if self.runs_variant():
            return native_run(self.recipe, deps["variant"].files()[0], inputs, labels, deps["reference"].load(),
                              measured=f"{self.variant} in onnxruntime")
        return native_run(self.recipe, deps["onnx"].file(), inputs, labels, None,
                          measured="canonical fp32 ONNX in onnxruntime (this variant has no native runner)")


class BrowserMeasure(RecipeTask):
    """The variant in headless Chromium on one target: outputs for every sample, timings, memory, bytes."""

    variant = luigi.Parameter()
    target = luigi.Parameter()
    stage = "browser"
    resources = {"timing": 1}

    def requires(self):
        return {"variant": BuildVariant(self.recipe_path, self.artifacts_dir, variant=self.variant),
                "data": EvalData(self.recipe_path, self.artifacts_dir),
                "reference": ReferenceOutputs(self.recipe_path, self.artifacts_dir)}

    def fingerprint(self):
        from pipeline.families import variant

        m = self.recipe.measure[self.target]
        return {"target": self.target, "method": keys.BROWSER_METHOD,
                "code": keys.measuring_code_hash(variant(self.variant).runtime),
                "measure": m.model_dump(mode="json"), "eval_batch": self.recipe.data.eval_batch,
                "browser": keys.browser_toolchain(), **({"subset": "even"} if m.max_eval_samples else {})}

    def folder_name(self):
        return f"Browser-{self.variant}-{self.target}"

    def work(self, out: Path) -> dict:
        from pipeline.evaluate.browser import measure_in_browser
        from pipeline.families import variant

        deps = self.requires()
        inputs, labels = deps["data"].load()

        def progress(stage: str, percent: int | None) -> None:  # shown by luigid's UI and `luigi` status
            self.set_status_message(f"{self.variant} on {self.target}: {stage}")
            if percent is not None:
                self.set_progress_percentage(percent)

        return measure_in_browser(self.recipe, variant(self.variant), self.target, deps["variant"].files(), inputs,
                                  labels, deps["reference"].load(), out, progress)


# ---------------------------------------------------------------- selection and release


def recipe_variants(recipe: Recipe) -> list[str]:
    """The recipe's variants (default: every registered one) that run on at least one of its targets."""
    from pipeline.families import all_variants

    specs = all_variants()
    return [n for n in (recipe.variants or list(specs)) if set(specs[n].targets) & set(recipe.targets)]


class SelectAndPublish(RecipeTask):
    """Per target, the best candidate inside the budget → registry; every candidate → the build report."""

    stage = "select"

    def requires(self):
        from pipeline.families import variant

        r, a = self.recipe_path, self.artifacts_dir
        deps = {"onnx": CanonicalOnnx(r, a)}
        for v in recipe_variants(self.recipe):
            deps[f"native:{v}"] = NativeRun(r, a, variant=v)
            for t in variant(v).targets:
                if t in self.recipe.targets:
                    deps[f"browser:{v}:{t}"] = BrowserMeasure(r, a, variant=v, target=t)
        return deps

    def fingerprint(self):
        r = self.recipe
        return {"targets": r.targets, "budget": r.budget.model_dump(), "selection": r.selection.model_dump(mode="json"),
                "manifest": [r.description, [i.model_dump(mode="json") for i in r.inputs],
                             [o.model_dump(mode="json") for o in r.outputs]]}

    def registry(self) -> Path:
        return Path(self.artifacts_dir) / "registry"

    def complete(self) -> bool:
        # The registry may have been wiped or overwritten by another build: republish then.
        if not super().complete():
            return False
        from pipeline.release.registry import read_index

        entry = read_index(self.registry()).get("models", {}).get(self.recipe.name, {}).get(self.recipe.version)
        return bool(entry) and entry.get("build_key") == self.key

    def run(self):
        # Selection sees upstream failures as data, so it does not use RecipeTask's upstream short-circuit.
        from pipeline.families import variant
        from pipeline.release.candidates import candidate, select_and_publish

        deps = self.requires()
        native = {k.split(":", 1)[1]: t.result() for k, t in deps.items() if k.startswith("native:")}
        candidates = []
        for k, task in deps.items():
            if k.startswith("browser:"):
                _, v, t = k.split(":")
                res = task.result()
                files = task.requires()["variant"].files() if res["status"] == "ok" else []
                candidates.append(candidate(self.recipe, v, variant(v).runtime, t, res, files, native[v]))
        with atomic_dir(self.out_dir) as tmp:
            res = select_and_publish(self.recipe, self.key, candidates, native, deps["onnx"].result(), self.registry())
            write_json_atomic(tmp / "result.json", {"status": "ok", **res, "key": self.key})
        _WRITTEN_HERE.add(self.output().path)


class BuildAll(luigi.Task):
    """Every recipe in `recipes_dir`: convert, measure, select, publish; then the build report and a summary."""

    recipes_dir = luigi.Parameter(default="recipes")
    artifacts_dir = luigi.Parameter(default="artifacts")

    @property
    def recipe_files(self) -> list[str]:
        try:
            recipes = load_recipes(self.recipes_dir)
        except RecipeError as e:
            # A bad recipe stops the build before any work, with the file and field named (no traceback).
            raise SystemExit(f"error: invalid recipe(s):\n{e}") from None
        return [str(r.path) for r in recipes]

    def requires(self):
        return [SelectAndPublish(p, self.artifacts_dir) for p in self.recipe_files]

    def output(self):
        key = hashlib.sha256(" ".join(t.key for t in self.requires()).encode()).hexdigest()[:16]
        return luigi.LocalTarget(str(Path(self.artifacts_dir) / "build" / f"BuildAll-{key}.json"))

    def complete(self):
        done = super().complete()
        if done and not getattr(self, "_printed", False):  # a no-op rebuild still shows where things stand
            self._printed = True
            print(self.summary(), flush=True)
        return done

    def summary(self) -> str:
        from pipeline.release.report import console_table

        reg, html = Path(self.artifacts_dir) / "registry" / "index.json", Path(self.artifacts_dir) / "report" / "index.html"
        return f"{console_table([t.result() for t in self.requires()])}\nregistry: {reg}\nreport:   {html}"

    def run(self):
        from pipeline.release.report import write_html_report

        write_html_report(Path(self.artifacts_dir) / "report", [t.result() for t in self.requires()])
        write_json_atomic(Path(self.output().path), {"recipes": self.recipe_files,
                                                     "keys": [t.key for t in self.requires()]})
        self._printed = True
        print(self.summary(), flush=True)
