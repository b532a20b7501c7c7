"""Luigi tasks: wiring only. The work lives in plain functions (pipeline.convert, pipeline.reference,
browser_validate.harness, pipeline.select, pipeline.registry) that tests call without Luigi.

Every task writes one folder, atomically, named by a content key: the hash of its own configuration and of its
inputs' keys. Change a recipe field, a weights file or a loader argument and exactly the affected tasks rerun;
change nothing and nothing reruns. Failures are results too ("status": "failed" with stage and reason), so one
broken variant or recipe never stops the others; failures that may be environmental (a missing package, a browser
crash or timeout) are retried by the next build instead of being cached for ever.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import traceback
from pathlib import Path

import luigi
import numpy as np

from pipeline.fsutil import atomic_dir, digest_files, sha256_file, write_json_atomic
from pipeline.recipe import Recipe, RecipeError, load_recipe, load_recipes

log = logging.getLogger("luigi-interface")

CACHE_EPOCH = "2"  # bump to invalidate every cached result after a change of our own converting/measuring code
_WRITTEN_HERE: set[str] = set()  # results this process wrote: complete even when they are retryable failures
NATIVE_RUNS = 30
BROWSER_METHOD = "2"  # bump when the measuring page/harness changes what a browser measurement means


@functools.lru_cache(maxsize=None)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def content_hash(path: Path) -> str:
    st = path.stat()
    return _content_hash(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def python_toolchain() -> dict[str, str]:
    """Versions that shape conversions and native runs: a changed pin reruns what depends on it."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxsim", "onnxconverter-common", "onnxscript"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


@functools.lru_cache(maxsize=None)
def browser_toolchain() -> dict[str, str]:
    """The browser and the npm lockfile: measurements depend on both."""
    import shutil
    import subprocess

    lock = Path(__file__).resolve().parents[1] / "browser_validate" / "package-lock.json"
    exe = os.environ.get("BROWSER_VALIDATE_CHROMIUM") or shutil.which("chromium") or ""
    try:
        chromium = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        chromium = "unknown"
    return {"chromium": chromium, "npm_lock": content_hash(lock) if lock.exists() else None}


@functools.lru_cache(maxsize=None)
def browser_code_hash(runtime: str) -> str:
    """Our measuring code for one runtime: harness, server, page, the runtime's adapter (+ shared probe)."""
    root = Path(__file__).resolve().parents[1] / "browser_validate"
    files = [root / "harness.py", root / "server.py", *sorted((root / "page").glob("*.js")),
             root / "runtimes" / f"{runtime}.js", root / "runtimes" / "probe.js"]
    return digest_files((f.name, f) for f in files if f.exists())


@functools.lru_cache(maxsize=None)
def _recipe(path: str, mtime_ns: int) -> Recipe:
    return load_recipe(path)


class StageFailed(Exception):
    def __init__(self, stage: str, cause: str, retry: bool = False, status: str = "failed", details=None):
        super().__init__(f"{stage}: {cause}")
        self.stage, self.cause, self.retry, self.status = stage, cause, retry, status
        self.details = details or {}  # e.g. the browser's console and environment, kept in the result


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:500]


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
            blob = json.dumps([CACHE_EPOCH, type(self).__name__, self.fingerprint(), deps], sort_keys=True,
                              default=str)
            self._key = (stamp, hashlib.sha256(blob.encode()).hexdigest()[:16])
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
        if str(path) in _WRITTEN_HERE:
            return True
        return not json.loads(path.read_text()).get("retry", False)

    def result(self) -> dict:
        return json.loads(Path(self.output().path).read_text())

    def work(self, out: Path) -> dict:
        raise NotImplementedError

    def run(self):
        started = time.time()
        self.set_status_message(f"{self.recipe.name}: {self.folder_name()} running")
        with atomic_dir(self.out_dir) as tmp:
            try:
                failed = [d for d in luigi.task.flatten(self.requires()) if d.result()["status"] != "ok"]
                if failed:
                    first = failed[0].result()
                    raise StageFailed(first.get("stage", "upstream"), first.get("error", "failed"),
                                      first.get("retry", False), first["status"])
                res = {"status": "ok", **self.work(tmp)}
            except StageFailed as e:
                res = {**e.details, "status": e.status, "stage": e.stage, "error": e.cause, "retry": e.retry}
            except RecipeError as e:  # environment or file problems: worth retrying once fixed
                res = {"status": "failed", "stage": self.stage, "error": str(e), "retry": True}
            except Exception as e:
                res = {"status": "failed", "stage": self.stage, "error": _short(e), "retry": False,
                       "traceback": traceback.format_exc(limit=8)}
            if res["status"] != "ok":
                log.warning("%s %s: %s at stage %s: %s", self.recipe.name, self.folder_name(), res["status"],
                            res["stage"], res["error"])
            res.update(recipe=str(self.recipe_path), task=self.folder_name(), key=self.key,
                       seconds=round(time.time() - started, 3))
            write_json_atomic(tmp / "result.json", res)
        _WRITTEN_HERE.add(self.output().path)


# ---------------------------------------------------------------- source and data


class SourceModel(RecipeTask):
    """Locate (or train) the source weights / ONNX file and record its content hash."""

    stage = "source"

    def ref(self):
        """The file reference of the source: PyTorch weights, the ONNX file or the Keras model."""
        src = self.recipe.source
        return src.weights if src.kind == "pytorch" else src

    def fingerprint(self):
        fp = {"source": self.recipe.source.model_dump(mode="json")}
        ref = self.ref()
        if getattr(ref, "trainer", None) is not None:
            return fp  # trained weights depend on the trainer spec only
        try:
            fp["content"] = content_hash(self.recipe.resolve_file(ref))
        except RecipeError as e:
            fp["missing"] = str(e)  # key stays computable; run() reports the problem
        return fp

    TRAINED_FILE = {"pytorch": "weights.pt", "keras": "model.keras"}

    def work(self, out: Path) -> dict:
        ref, kind = self.ref(), self.recipe.source.kind
        if getattr(ref, "trainer", None) is not None:
            log.info("%s: training with %s", self.recipe.name, ref.trainer.function)
            name = self.TRAINED_FILE[kind]
            stats = ref.trainer.call(out_path=out / name)
            return {"file": name, "sha256": sha256_file(out / name), "training": stats}
        path = self.recipe.resolve_file(ref)
        return {"path": str(path), "sha256": content_hash(path)}

    def file(self) -> Path:
        r = self.result()
        return self.out_dir / r["file"] if "file" in r else Path(r["path"])


class EvalData(RecipeTask):
    """Materialise evaluation (or calibration) samples as an .npz, checked against the recipe's inputs."""

    purpose = luigi.ChoiceParameter(choices=["eval", "calibration"], default="eval")
    stage = "data"

    def ref(self):
        d = self.recipe.data
        return d.calibration if self.purpose == "calibration" and d.calibration is not None else d.eval

    def fingerprint(self):
        return {"loader": self.ref().model_dump(mode="json"),
                "inputs": [i.model_dump(mode="json") for i in self.recipe.inputs]}

    def folder_name(self):
        return f"EvalData-{self.purpose}"

    def work(self, out: Path) -> dict:
        ds = self.ref().call()
        check_samples(self.recipe, ds.inputs)
        arrays = {f"input:{k}": v for k, v in ds.inputs.items()}
        if ds.labels is not None:
            arrays["labels"] = np.asarray(ds.labels, dtype=np.int64)
        np.savez(out / "data.npz", **arrays)
        n = len(next(iter(ds.inputs.values())))
        return {"samples": n, "labelled": ds.labels is not None, "ids": list(ds.ids)[:n]}

    def load(self) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        with np.load(self.out_dir / "data.npz") as z:
            inputs = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("input:")}
            labels = z["labels"] if "labels" in z.files else None
        return inputs, labels


def check_samples(recipe: Recipe, inputs: dict[str, np.ndarray]) -> None:
    want = {i.name: i for i in recipe.inputs}
    if set(inputs) != set(want):
        raise StageFailed("data", f"loader gave inputs {sorted(inputs)}, recipe declares {sorted(want)}")
    counts = {len(v) for v in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise StageFailed("data", f"inputs must hold the same, non-zero number of samples (got {counts})")
    for name, arr in inputs.items():
        spec = want[name]
        if str(arr.dtype) != spec.dtype:
            raise StageFailed("data", f"input {name!r} has dtype {arr.dtype}, recipe says {spec.dtype}")
        dims = list(arr.shape[1:])
        if len(dims) != len(spec.shape) - 1 or any(
                isinstance(s, int) and s != d for s, d in zip(spec.shape[1:], dims)):
            raise StageFailed("data", f"input {name!r} samples have shape {dims}, recipe says {spec.shape[1:]}")


# ---------------------------------------------------------------- ONNX and reference


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
                "opset": getattr(r.source, "opset", None), "toolchain": python_toolchain()}

    def work(self, out: Path) -> dict:
        from pipeline.convert import onnx as conv
        from pipeline.reference import load_pytorch

        r, dst = self.recipe, out / "model.onnx"
        src_file = self.requires()["source"].file()
        if r.source.kind == "pytorch":
            inputs, _ = self.requires()["data"].load()
            example = {k: v[:1] for k, v in inputs.items()}
            model = load_pytorch(r, src_file)
            dyn = {i.name: i.dynamic_axes for i in r.inputs if i.dynamic_axes}
            for o in r.outputs:  # outputs share the batch axis when the inputs have one
                if any(0 in i.dynamic_axes for i in r.inputs):
                    dyn[o.name] = {0: "batch"}
            conv.export_pytorch(model, example, dst, output_names=[o.name for o in r.outputs],
                                dynamic_axes=dyn or None, opset=r.source.opset)
        elif r.source.kind == "keras":
            from pipeline.convert.tfjs import keras_to_onnx

            keras_to_onnx(src_file, dst, opset=r.source.opset, input_names=[i.name for i in r.inputs],
                          output_names=[o.name for o in r.outputs])
        else:
            conv.check_and_infer(src_file, dst, input_shapes={i.name: i.shape for i in r.inputs})
        import onnx

        m = onnx.load(str(dst), load_external_data=False)
        names_in = [i.name for i in m.graph.input if i.name not in {x.name for x in m.graph.initializer}]
        names_out = [o.name for o in m.graph.output]
        want_in, want_out = [i.name for i in r.inputs], [o.name for o in r.outputs]
        if names_in != want_in or names_out != want_out:
            raise StageFailed("export", f"model has inputs {names_in} / outputs {names_out}, "
                                        f"recipe declares {want_in} / {want_out}")
        return {"file": "model.onnx", "bytes": dst.stat().st_size, "sha256": sha256_file(dst),
                "ops": sorted({n.op_type for n in m.graph.node})}


class NativeReference(RecipeTask):
    """Outputs of the source framework (PyTorch for PyTorch sources, onnxruntime for ONNX files) on every sample."""

    stage = "reference"

    def requires(self):
        return {"source": SourceModel(self.recipe_path, self.artifacts_dir),
                "data": EvalData(self.recipe_path, self.artifacts_dir)}

    def work(self, out: Path) -> dict:
        from pipeline.reference import load_pytorch, ort_outputs, pytorch_outputs

        r = self.recipe
        inputs, labels = self.requires()["data"].load()
        src = self.requires()["source"].file()
        t = time.perf_counter()
        if r.source.kind == "pytorch":
            outs = pytorch_outputs(load_pytorch(r, src), inputs, [o.name for o in r.outputs], r.data.eval_batch)
            framework = "pytorch"
        elif r.source.kind == "keras":
            from pipeline.convert.tfjs import keras_outputs

            outs = keras_outputs(src, inputs, r.data.eval_batch, [o.name for o in r.outputs],
                                 [i.name for i in r.inputs])
            framework = "keras"
        else:
            outs = ort_outputs(src, inputs, r.data.eval_batch)
            framework = "onnxruntime"
        np.savez(out / "reference.npz", **outs)
        res = {"framework": framework, "seconds_eval": time.perf_counter() - t}
        if labels is not None:
            for o in r.outputs:
                if o.kind in ("logits", "probabilities"):
                    pred = outs[o.name].reshape(len(labels), -1).argmax(1)
                    res["label_accuracy"] = float((pred == labels).mean())
        return res

    def load(self) -> dict[str, np.ndarray]:
        with np.load(self.out_dir / "reference.npz") as z:
            return {k: z[k] for k in z.files}


# ---------------------------------------------------------------- variants


def code_hash(name: str) -> str | None:
    """Hash of the code that builds a variant or prerequisite: its family module and what that imports. A variant
    registered outside the family modules (e.g. by a test) is keyed by its build function's module."""
    import importlib

    from pipeline.families import family_code_hash, family_module

    try:
        return family_code_hash(family_module(name))
    except KeyError:
        module = getattr(variant_spec(name).build, "__module__", None)
        return family_code_hash(module) if module and getattr(importlib.import_module(module), "__file__", None) \
            else None


def variant_spec(name: str):
    from pipeline.families import all_variants

    return all_variants()[name]


def recipe_variants(recipe: Recipe) -> list[str]:
    from pipeline.families import all_variants

    specs = all_variants()
    names = recipe.variants or list(specs)
    return [n for n in names if set(specs[n].backends) & set(recipe.targets)]


def build_inputs(task: RecipeTask, **extra) -> "BuildInputs":
    from pipeline.families import BuildInputs

    deps = task.requires()
    return BuildInputs(canonical_onnx=deps["onnx"].out_dir / "model.onnx", recipe=task.recipe,
                       source_file=deps["source"].file(), calibration_batch=task.recipe.data.eval_batch,
                       cache_dir=Path(task.artifacts_dir).resolve() / "cache", **extra)


class Prerequisite(RecipeTask):
    """A per-recipe intermediate shared by several variants of a family (e.g. a TF SavedModel)."""

    name = luigi.Parameter()
    stage = "prerequisite"

    def requires(self):
        return {"onnx": CanonicalOnnx(self.recipe_path, self.artifacts_dir),
                "source": SourceModel(self.recipe_path, self.artifacts_dir)}

    def fingerprint(self):
        from pipeline.families import all_prerequisites

        return {"name": self.name, "extra": all_prerequisites()[self.name].fingerprint(),
                "toolchain": python_toolchain(), "code": code_hash(self.name)}

    def folder_name(self):
        return f"Prerequisite-{self.name}"

    def work(self, out: Path) -> dict:
        from pipeline.families import all_prerequisites

        self.stage = f"prerequisite {self.name}"
        return {"info": all_prerequisites()[self.name].build(build_inputs(self), out)}


class BuildVariant(RecipeTask):
    variant = luigi.Parameter()
    stage = "convert"

    def requires(self):
        spec = variant_spec(self.variant)
        deps = {"onnx": CanonicalOnnx(self.recipe_path, self.artifacts_dir),
                "source": SourceModel(self.recipe_path, self.artifacts_dir)}
        if spec.needs_calibration:
            deps["calibration"] = EvalData(self.recipe_path, self.artifacts_dir, purpose="calibration")
        for name in spec.prerequisites:
            deps[f"prerequisite:{name}"] = Prerequisite(self.recipe_path, self.artifacts_dir, name=name)
        return deps

    def fingerprint(self):
        spec = variant_spec(self.variant)
        return {"variant": self.variant, "family": spec.family, "calibration_batch": self.recipe.data.eval_batch,
                "toolchain": python_toolchain(), "code": code_hash(self.variant)}

    def folder_name(self):
        return f"Variant-{self.variant}"

    def work(self, out: Path) -> dict:
        spec, deps = variant_spec(self.variant), self.requires()
        calib = deps["calibration"].load()[0] if "calibration" in deps else None
        prereq = {k.split(":", 1)[1]: t.out_dir for k, t in deps.items() if k.startswith("prerequisite:")}
        inputs = build_inputs(self, calibration=calib, prerequisites=prereq)
        try:
            files = spec.build(inputs, out)
        except Exception as e:
            if type(e).__name__ == "NotApplicable":  # e.g. 4-bit MatMul on a model without MatMul: not a failure
                raise StageFailed("convert", str(e), status="unsupported") from None
            raise
        return {"variant": self.variant, "family": spec.family, "runtime": spec.runtime,
                "files": [f.name for f in files], "bytes": sum(f.stat().st_size for f in files)}

    def files(self) -> list[Path]:
        return [self.out_dir / f for f in self.result()["files"]]


class NativeRun(RecipeTask):
    """The native side of the pair. ONNX variants: the variant itself in onnxruntime (Python, CPU, 1 thread),
    with its accuracy against the source model. Variants with no native runner (TF.js, TVM web modules): the
    canonical model they were made from, in the same onnxruntime, so browser/native ratios stay comparable."""

    variant = luigi.Parameter()
    stage = "native"
    resources = {"timing": 1}  # timed tasks never overlap: on 2 cores they would skew each other

    def runs_variant(self) -> bool:
        return variant_spec(self.variant).native == "ort"

    def requires(self):
        deps = {"data": EvalData(self.recipe_path, self.artifacts_dir),
                "reference": NativeReference(self.recipe_path, self.artifacts_dir)}
        if self.runs_variant():
            deps["variant"] = BuildVariant(self.recipe_path, self.artifacts_dir, variant=self.variant)
        else:
            deps["onnx"] = CanonicalOnnx(self.recipe_path, self.artifacts_dir)
        return deps

    def fingerprint(self):
        return {"runs": NATIVE_RUNS, "threads": 1, "toolchain": python_toolchain(), "of_variant": self.runs_variant()}

    def folder_name(self):
        return f"Native-{self.variant}"

    def work(self, out: Path) -> dict:
        from pipeline.metrics import compare, latency_stats
        from pipeline.reference import ort_latency, ort_outputs

        r, deps = self.recipe, self.requires()
        inputs, labels = deps["data"].load()
        res = {"threads": 1}
        if self.runs_variant():
            model = deps["variant"].files()[0]
            outs = ort_outputs(model, inputs, r.data.eval_batch)
            res["accuracy"] = compare(outs, deps["reference"].load(), r.outputs, labels)
            res["measured"] = f"{self.variant} in onnxruntime"
        else:
            model = deps["onnx"].out_dir / "model.onnx"
            res["measured"] = "canonical fp32 ONNX in onnxruntime (this variant has no native runner)"
        lat = ort_latency(model, {k: v[:1] for k, v in inputs.items()}, warmup=5, runs=NATIVE_RUNS)
        return {**res, "latency_ms": latency_stats(lat["latency_ms"]), "latency_runs": lat["latency_ms"],
                "session_ms": lat["session_ms"], "first_inference_ms": lat["first_inference_ms"]}


def eval_subset(n: int, cap: int) -> np.ndarray:
    """Evenly spaced sample indices: a capped evaluation still covers the whole set (every photo, every class),
    not just its first entries."""
    if cap >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(int))


class BrowserMeasure(RecipeTask):
    """The variant in headless Chromium on one backend: outputs for every sample, timings, memory, bytes."""

    variant = luigi.Parameter()
    backend = luigi.Parameter()
    stage = "browser"
    resources = {"timing": 1}

    def requires(self):
        return {"variant": BuildVariant(self.recipe_path, self.artifacts_dir, variant=self.variant),
                "data": EvalData(self.recipe_path, self.artifacts_dir),
                "reference": NativeReference(self.recipe_path, self.artifacts_dir)}

    def fingerprint(self):
        return {"backend": self.backend, "method": BROWSER_METHOD, "code": browser_code_hash(variant_spec(self.variant).runtime),
                "measure": self.recipe.measure[self.backend].model_dump(mode="json"),
                "eval_batch": self.recipe.data.eval_batch, "browser": browser_toolchain(),
                **({"subset": "even"} if self.recipe.measure[self.backend].max_eval_samples else {})}

    def folder_name(self):
        return f"Browser-{self.variant}-{self.backend}"

    def work(self, out: Path) -> dict:
        from browser_validate.harness import MeasureRequest, measure
        from pipeline.metrics import compare, latency_stats, ship_mode

        r, spec = self.recipe, variant_spec(self.variant)
        m = r.measure[self.backend]
        inputs, labels = self.requires()["data"].load()
        reference = self.requires()["reference"].load()
        if m.max_eval_samples:
            idx = eval_subset(len(labels) if labels is not None else len(next(iter(inputs.values()))),
                              m.max_eval_samples)
            inputs, reference = {k: v[idx] for k, v in inputs.items()}, {k: v[idx] for k, v in reference.items()}
            labels = labels[idx] if labels is not None else None
        req = MeasureRequest(runtime=spec.runtime, backend=self.backend, model_files=self.requires()["variant"].files(),
                             inputs=inputs, eval_batch=r.data.eval_batch, warmup=m.warmup, runs=m.runs,
                             threads=m.threads, timeout_s=m.timeout_s, qoe_modes=list(m.qoe_modes),
                             qoe_duration_ms=m.qoe_duration_ms,
                             network_profile=m.network_profile.model_dump() if m.network_profile else None,
                             required_features=list(spec.required_features.get(self.backend, ())))
        log.info("%s: measuring %s on %s in Chromium", r.name, self.variant, self.backend)
        stages = ["inputs", "download", "session", "first", "eval", "warmup", "timing", "qoe-main", "qoe-worker"]

        def progress(stage: str) -> None:  # shown by luigid's UI and `luigi` status
            self.set_status_message(f"{self.variant} on {self.backend}: {stage}")
            if stage in stages:
                self.set_progress_percentage(int(100 * stages.index(stage) / len(stages)))

        res = measure(req, on_stage=progress)
        record = res.to_json()
        if res.status == "unsupported":
            raise StageFailed("unsupported", res.error or "unsupported on this browser", status="unsupported",
                              details={"env": record.get("env")})
        if res.status != "ok":
            # A crash may be the machine's fault: retried by the next build. A timeout is kept (the model is too
            # slow for the budgeted time; raise measure.<backend>.timeout_s to retry it).
            retry = "crash" in (res.error or "").lower()
            raise StageFailed("browser", res.error or "failed", retry=retry,
                              details={k: record.get(k) for k in ("env", "console_errors")})
        np.savez(out / "outputs.npz", **res.outputs)
        acc = compare(res.outputs, reference, r.outputs, labels)
        cold = {"download_ms": res.download_ms, "session_ms": res.session_ms,
                "first_inference_ms": res.first_inference_ms}
        if res.network_download and "ms" in res.network_download:
            cold[f"download_ms_{res.network_download['profile']['name']}"] = res.network_download["ms"]
        return {**record, "accuracy": acc, "ship_mode": ship_mode(res.qoe), "latency": latency_stats(res.latency_ms),
                "cold_start_ms": res.download_ms + res.session_ms + res.first_inference_ms, "cold_start": cold}


# ---------------------------------------------------------------- selection and release


class SelectAndPublish(RecipeTask):
    """Per target, the best candidate inside the budget → registry; every candidate → the build report."""

    stage = "select"

    def requires(self):
        r, a = self.recipe_path, self.artifacts_dir
        deps = {}
        for v in recipe_variants(self.recipe):
            deps[f"native:{v}"] = NativeRun(r, a, variant=v)
            for b in variant_spec(v).backends:
                if b in self.recipe.targets:
                    deps[f"browser:{v}:{b}"] = BrowserMeasure(r, a, variant=v, backend=b)
        deps["onnx"] = CanonicalOnnx(r, a)
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
        from pipeline.registry import read_index

        entry = read_index(self.registry()).get("models", {}).get(self.recipe.name, {}).get(self.recipe.version)
        return bool(entry) and entry.get("build_key") == self.key

    def run(self):
        # Selection must see upstream failures as data, so it does not use RecipeTask's upstream short-circuit.
        with atomic_dir(self.out_dir) as tmp:
            res = self.select_and_publish()
            write_json_atomic(tmp / "result.json", {"status": "ok", **res, "key": self.key})
        _WRITTEN_HERE.add(self.output().path)

    def select_and_publish(self) -> dict:
        from pipeline.metrics import budget_violations, responsiveness
        from pipeline.registry import publish
        from pipeline.report import candidate_rows
        from pipeline.select import Candidate, select

        r, deps = self.recipe, self.requires()
        candidates, native = [], {}
        for name, task in deps.items():
            if name.startswith("native:"):
                native[name.split(":", 1)[1]] = task.result()
        for name, task in deps.items():
            if not name.startswith("browser:"):
                continue
            _, v, b = name.split(":")
            res = task.result()
            spec = variant_spec(v)
            c = Candidate(variant=v, runtime=spec.runtime, backend=b, status=res["status"], record=res)
            c.record["native"] = {k: native[v].get(k) for k in ("status", "latency_ms", "accuracy", "error")}
            c.record["files"] = [str(f) for f in task.requires()["variant"].files()] if res["status"] == "ok" else []
            if res["status"] == "ok":
                c.median_ms = res["latency"]["median"]
                c.download_bytes = res["download_bytes"]
                c.reasons = budget_violations(res["accuracy"], r.budget)
                nat_median = (native[v].get("latency_ms") or {}).get("median")
                c.values = {"cold_start": res["cold_start_ms"], "memory": res.get("peak_memory_bytes"),
                            "responsiveness": responsiveness(res.get("qoe"), res["ship_mode"]["mode"]),
                            "slowdown": c.median_ms / nat_median if nat_median else None}
            else:
                c.reasons = [f"{res.get('stage')}: {res.get('error')}"]
            candidates.append(c)

        targets, decisions = {}, []
        for t in r.targets:
            d = select(t, candidates, r.selection.tie_tolerance, r.selection.objectives, r.selection.goals)
            decisions.append(d)
            if d.chosen is None:
                targets[t] = {"status": "unmet", "reason": d.reason, "runtime": None, "backend": None,
                              "variant": None, "files": [], "metrics": {}}
                continue
            rec = d.chosen.record
            nat = native[d.chosen.variant]
            targets[t] = {
                "status": "chosen", "reason": d.reason, "runtime": d.chosen.runtime,
                "runtime_version": rec.get("env", {}).get("version"),
                "backend": d.chosen.backend, "variant": d.chosen.variant,
                "runtime_options": {"threads": r.measure[t].threads} if t == "wasm" else {},
                "files": rec["files"],
                "metrics": {
                    "latency_ms": {k: rec["latency"][k] for k in ("median", "p90", "iqr")},
                    "native_latency_ms": ({k: nat["latency_ms"][k] for k in ("median", "p90", "iqr")}
                                          | {"measured": nat.get("measured")})
                    if nat["status"] == "ok" else {"median": None, "error": nat.get("error")},
                    "cold_start_ms": rec["cold_start_ms"],
                    "session_ms": rec["session_ms"], "first_inference_ms": rec["first_inference_ms"],
                    "download_bytes": rec["download_bytes"],
                    "accuracy": rec["accuracy"],
                    "peak_memory_bytes": rec.get("peak_memory_bytes"),
                    "gpu_process_peak_bytes": rec.get("gpu_process_peak_bytes"),
                    "page_memory_bytes": rec.get("page_memory_bytes"),
                    "cold_start": rec.get("cold_start"),
                    "qoe": rec.get("qoe"),
                },
                "ship_in": rec["ship_mode"],
                # Which runtime/variant came next and how far behind: "by how much" the winner won.
                "runner_up": ({"runtime": d.ranking[1].runtime, "variant": d.ranking[1].variant,
                               "median_ms": d.ranking[1].median_ms,
                               "slower_by": d.ranking[1].median_ms / d.chosen.median_ms}
                              if len(d.ranking) > 1 else None),
            }
        onnx_res = deps["onnx"].result()
        entry = {"description": r.description, "recipe": str(r.path), "build_key": self.key,
                 "inputs": [i.model_dump(mode="json") for i in r.inputs],
                 "outputs": [o.model_dump(mode="json") for o in r.outputs], "targets": targets}
        report = {"model": r.name, "version": r.version, "build_key": self.key,
                  "canonical_onnx": {k: onnx_res.get(k) for k in ("status", "error", "bytes", "ops")},
                  "decisions": [{"target": d.target, "status": d.status, "reason": d.reason,
                                 "chosen": d.chosen.variant if d.chosen else None,
                                 "ranking": [c.variant for c in d.ranking]} for d in decisions],
                  "candidates": candidate_rows(candidates),
                  "native": {v: {k: n.get(k) for k in ("status", "error", "latency_ms", "accuracy", "stage", "measured")}
                             for v, n in native.items()}}
        publish(self.registry(), r.name, r.version, entry, report)
        return {"targets": {t: {k: v[k] for k in ("status", "variant", "runtime", "reason")}
                            for t, v in targets.items()}, "report": report}


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
        from pipeline.report import console_table

        results = [t.result() for t in self.requires()]
        reg, html = Path(self.artifacts_dir) / "registry" / "index.json", Path(self.artifacts_dir) / "report" / "index.html"
        return f"{console_table(results)}\nregistry: {reg}\nreport:   {html}"

    def run(self):
        from pipeline.report import write_html_report

        results = [t.result() for t in self.requires()]
        write_html_report(Path(self.artifacts_dir) / "report", results)
        write_json_atomic(Path(self.output().path), {"recipes": self.recipe_files,
                                                     "keys": [t.key for t in self.requires()]})
        self._printed = True
        print(self.summary(), flush=True)
