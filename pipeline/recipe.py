"""Recipe schema: one YAML file per model says where it comes from, what it eats, how it is judged and what to build.

Validation happens before any work. Every error names the recipe file and the field, e.g.
``recipes/mobilenet_v2.yaml: budget.min_top1_agreement: Input should be less than or equal to 1``.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from pipeline.objectives import OBJECTIVES
from pipeline.outcome import RecipeError, SourceError
from pipeline.targets import TARGETS

CALLABLE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
NAME_RE = r"^[a-z0-9][a-z0-9_.-]*$"


class _Strict(BaseModel):
    # Unknown keys are typos more often than not: reject them instead of ignoring them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class CallableRef(_Strict):
    """``module.path:function`` plus keyword arguments. Resolved when the recipe is validated (the module is
    imported, the function must exist and accept the arguments): a typo stops the build before any work, not
    after training. Recipes name Python functions, so a recipe is code: trust it like code."""

    function: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("function")
    @classmethod
    def _format(cls, v: str) -> str:
        if not CALLABLE_RE.match(v):
            raise ValueError(f"expected 'package.module:function', got {v!r}")
        return v

    @model_validator(mode="after")
    def _resolvable(self):
        try:
            self.signature().bind_partial(**self.args)
        except SourceError as e:
            raise ValueError(str(e)) from None
        except TypeError as e:
            raise ValueError(f"{self.function} does not take the arguments {sorted(self.args)}: {e}") from None
        return self

    def signature(self) -> inspect.Signature:
        fn = self.resolve()
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):  # builtins without a signature: accept
            return inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])

    def check_call(self, *supplied: str) -> None:
        """ValueError unless the function can be called with its args plus the keywords the pipeline supplies."""
        try:
            self.signature().bind(**self.args, **{k: None for k in supplied})
        except TypeError as e:
            call = ", ".join([*(f"{k}=..." for k in supplied), *(f"{k}={v!r}" for k, v in self.args.items())])
            raise ValueError(f"{self.function} cannot be called as {self.function}({call}): {e}") from None

    def code_hash(self) -> str:
        """sha256 of the source file of the module that defines the function: results depend on the code a recipe
        names, not only on its name, so an edited model definition or data loader rebuilds what it made."""
        mod = importlib.import_module(self.function.split(":")[0])
        path = getattr(mod, "__file__", None)
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else "builtin"

    def resolve(self):
        mod_name, attr = self.function.split(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise SourceError(f"cannot import module {mod_name!r} ({e})") from None
        fn = getattr(mod, attr, None)
        if not callable(fn):
            raise SourceError(f"{mod_name!r} has no callable {attr!r}")
        return fn

    def call(self, **extra):
        return self.resolve()(**{**self.args, **extra})


class PackageFile(_Strict):
    """A file shipped inside an installed Python distribution (weights, ONNX files)."""

    package: str
    path: str


class FileRef(_Strict):
    """Exactly one of: a path (relative to the recipe's folder), a file inside a package, or a trainer."""

    file: str | None = None
    package_file: PackageFile | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.file is None) == (self.package_file is None):
            raise ValueError("give exactly one of 'file' or 'package_file'")
        return self


class Weights(FileRef):
    # A trainer is called as trainer(out_path=..., **args) and must write the weights / model file there.
    trainer: CallableRef | None = None

    @model_validator(mode="after")
    def _one(self):
        given = [x for x in (self.file, self.package_file, self.trainer) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'file', 'package_file' or 'trainer'")
        if self.trainer is not None:
            self.trainer.check_call("out_path")
        return self


class PytorchSource(_Strict):
    kind: Literal["pytorch"]
    module: CallableRef  # returns an nn.Module without weights
    weights: Weights
    # Weight names (glob patterns) the module does not use, e.g. a checkpoint's pooler or training head: dropped
    # before a strict load, so every other key must still match the module exactly.
    unused_weights: list[str] = Field(default_factory=list)
    opset: int = Field(18, ge=18, le=21)  # the dynamo exporter emits opset 18+

    @field_validator("module")
    @classmethod
    def _module_callable(cls, v: CallableRef) -> CallableRef:
        v.check_call()
        return v


class OnnxSource(FileRef):
    kind: Literal["onnx"]


class KerasSource(Weights):
    """A Keras 3 model file (.keras): a file, a file inside a package, or a trainer that writes one."""

    kind: Literal["keras"]
    opset: int = Field(18, ge=13, le=21)  # for the ONNX route (tf2onnx)


Source = Annotated[Union[PytorchSource, OnnxSource, KerasSource], Field(discriminator="kind")]


DTYPES = Literal["float32", "float16", "int64", "int32", "int8", "uint8", "bool"]


def _default_batch_axis(data):
    """Before validation: an input or output whose first dimension is dynamic has its batch there, unless the
    recipe says otherwise (`batch_axis: null`: none; `batch_axis: 1`: an RNN state [layers, batch, hidden])."""
    if isinstance(data, dict) and "batch_axis" not in data:
        shape = data.get("shape")
        data = {**data, "batch_axis": 0 if shape is None or (shape and isinstance(shape[0], str)) else None}
    return data


class InputSpec(_Strict):
    name: str
    # Shape as the model takes it, batch included; strings name dynamic axes (e.g. "batch"); [] for a scalar.
    shape: list[int | str]
    dtype: DTYPES = "float32"
    # Where the batch is (see _default_batch_axis); null: no batch axis, the model takes one sample per call.
    batch_axis: int | None = 0
    # A constant the recipe fixes (e.g. a sample rate): fed with every sample, not given by the data loader.
    value: Any = None
    layout: Literal["NCHW", "NHWC", "NC", "NT", "other"] = "other"
    # What the data loader did to raw data; copied to the registry manifest so a web app can do the same.
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    # The static shape runtimes that compile for fixed shapes (TVM, LiteRT.js) are built for. Default: the shape with
    # a dynamic first (batch) dimension as 1; required when any other dimension is dynamic.
    compile_shape: list[int] | None = None
    # How a static-shape model takes a smaller input (a text line narrower than compile_shape): "zero" pads it
    # with zeros at the end of each axis up to compile_shape (as the preprocessing pads short lines), in the browser
    # (adapter.js runStatic) and natively alike. Default: only the compiled shape runs.
    compile_pad: Literal["zero"] | None = None

    @field_validator("shape")
    @classmethod
    def _dims(cls, v):
        for d in v:
            if isinstance(d, int) and d <= 0:
                raise ValueError(f"static dimensions must be positive, got {d}")
        return v

    _batch_default = model_validator(mode="before")(_default_batch_axis)

    @model_validator(mode="after")
    def _batch_axis_in_shape(self):
        if self.batch_axis is not None and not 0 <= self.batch_axis < len(self.shape):
            raise ValueError(f"batch_axis {self.batch_axis} is not an axis of shape {self.shape}")
        if self.value is not None:
            import numpy as np

            try:
                np.broadcast_to(np.asarray(self.value, dtype=self.dtype), self.sample_shape(fill=1))
            except (ValueError, TypeError) as e:
                raise ValueError(f"value does not fit shape {self.shape} as {self.dtype}: {e}") from None
        return self

    def sample_shape(self, fill: int | None = None) -> list:
        """One sample's shape: the shape without its batch axis (dynamic dims as `fill` when given)."""
        dims = [d for k, d in enumerate(self.shape) if k != self.batch_axis]
        return [fill if fill is not None and isinstance(d, str) else d for d in dims]

    @property
    def batchable(self) -> bool:
        """Several samples can be fed at once, by slicing: the batch is first and of dynamic size."""
        return self.batch_axis == 0 and isinstance(self.shape[0], str)

    @model_validator(mode="after")
    def _compile_shape(self):
        c = self.compile_shape
        if c is not None:
            if len(c) != len(self.shape) or any(d <= 0 for d in c):
                raise ValueError(f"compile_shape {c} must give a positive size for each of the {len(self.shape)} "
                                 f"dimensions of shape {self.shape}")
            fixed = [(i, s, d) for i, (s, d) in enumerate(zip(self.shape, c)) if isinstance(s, int) and s != d]
            if fixed:
                raise ValueError(f"compile_shape {c} contradicts the fixed dimensions of shape {self.shape} "
                                 f"(axis {fixed[0][0]}: {fixed[0][1]} vs {fixed[0][2]})")
        if self.compile_pad is not None and c is None:
            raise ValueError("compile_pad needs compile_shape (the shape a smaller input is padded up to)")
        return self

    def static_shape(self) -> list[int] | None:
        """The compile-time shape (None: a dimension besides the batch is dynamic and none was given)."""
        if self.compile_shape is not None:
            return list(self.compile_shape)
        if any(isinstance(d, str) for k, d in enumerate(self.shape) if k != self.batch_axis):
            return None
        return [d if isinstance(d, int) else 1 for d in self.shape]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


class OutputSpec(_Strict):
    name: str
    # logits / probabilities: argmax is the prediction (top-1 agreement and labelled accuracy apply); ctc: scores
    # [batch, steps, classes] decoded greedily (best class per step, repeats merged, `blank` dropped), judged as
    # text; embedding: cosine and retrieval; raw: errors only.
    kind: Literal["logits", "probabilities", "ctc", "embedding", "raw"] = "raw"
    blank: int = Field(0, ge=0)  # ctc: the blank class
    # Where the batch is in this output (first by default); null: none (one sample per call).
    batch_axis: int | None = 0
    # A function returning the class names along the last axis, in order: published with the model (a JSON file
    # the index names) so an app can show them.
    labels: CallableRef | None = None

    @field_validator("labels")
    @classmethod
    def _labels_callable(cls, v: CallableRef | None) -> CallableRef | None:
        if v is not None:
            v.check_call()
        return v


class DetectionSpec(_Strict):
    """Detections decoded from the raw outputs by the model's own rules (thresholds, box regression, NMS), for
    the reference and each candidate alike, then matched: what an app would draw is what is judged. `decode` is
    called as decode(outputs={name: array for every output, all samples}, **args) and returns one entry per
    sample, {"boxes": [K, 4] (x1, y1, x2, y2), "scores": [K], optionally "classes": [K]}."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    decode: CallableRef
    # A candidate detection matches a reference one of the same class when their boxes overlap this much.
    iou: float = Field(0.5, gt=0, le=1)

    @field_validator("decode")
    @classmethod
    def _decode_callable(cls, v: CallableRef) -> CallableRef:
        v.check_call("outputs")
        return v


def takes_assets(loader: CallableRef) -> bool:
    """A data loader that has a parameter `assets` is called with the recipe's assets ({name: path}): the data is
    then prepared with exactly the files that are published (a tokenizer)."""
    return "assets" in loader.signature().parameters


class DataSpec(_Strict):
    eval: CallableRef  # returns model_sources.datasets.EvalSet
    calibration: CallableRef | None = None  # needed by int8_qdq; defaults to the eval data
    eval_batch: int = Field(1, ge=1, le=4096)
    # A stateful model evaluated over sequences: the samples are consecutive steps of sequences of
    # `sequence_length` steps, and each output named in `feedback` is fed back as the named input at the next
    # step (the data's own value is used at a sequence's first step only), natively and in the browser alike.
    # Accuracy is then also reported per step (does the error grow along a sequence?).
    sequence_length: int | None = Field(None, ge=1)
    feedback: dict[str, str] = Field(default_factory=dict)  # output name -> input name

    @model_validator(mode="after")
    def _feedback_needs_sequences(self):
        if self.feedback and self.sequence_length is None:
            raise ValueError("feedback needs sequence_length (how many consecutive samples form one sequence)")
        if self.feedback and self.eval_batch != 1:
            raise ValueError("with feedback, each step needs the previous one's outputs: eval_batch must be 1")
        return self

    @field_validator("eval", "calibration")
    @classmethod
    def _loader_callable(cls, v: CallableRef | None) -> CallableRef | None:
        if v is not None:
            v.check_call(*(["assets"] if takes_assets(v) else []))
        return v


class OutputBudget(_Strict):
    """Bounds for one output, instead of the budget's own for it (e.g. boxes in pixels, scores in [0, 1])."""

    min_top1_agreement: float | None = Field(None, ge=0, le=1)  # logits / probabilities: per position
    max_accuracy_drop: float | None = Field(None, ge=0, le=1)   # labelled accuracy, fraction (0.01 = 1 point)
    max_abs_error: float | None = Field(None, gt=0)
    max_rel_error: float | None = Field(None, gt=0)             # max abs error / the output's largest magnitude
    min_cosine: float | None = Field(None, ge=-1, le=1)         # embeddings: per sample
    # embeddings: fraction of samples whose nearest other sample (cosine) is the reference's
    min_retrieval_agreement: float | None = Field(None, ge=0, le=1)
    # ctc: fraction of samples decoded exactly as the reference; edits / reference characters, over all samples
    min_sequence_match: float | None = Field(None, ge=0, le=1)
    max_char_error_rate: float | None = Field(None, ge=0)
    # detections (a recipe's `detections` entry, by its name): reference detections no candidate detection
    # matches, and candidate detections matching none, as fractions of the reference's detections; the worst IoU
    # of a matched pair; the largest score difference of a matched pair.
    max_missed_detections: float | None = Field(None, ge=0, le=1)
    max_extra_detections: float | None = Field(None, ge=0)
    min_box_iou: float | None = Field(None, ge=0, le=1)
    max_score_error: float | None = Field(None, gt=0)


class Budget(OutputBudget):
    """Accuracy budget against the reference. At least one bound. Each bound applies to every output it means
    something for: top-1 agreement to logits/probabilities (a single logit is judged by its sign, a sequence per
    position), cosine to embeddings, errors to every output; `outputs` sets one output's bounds by name, in place
    of the model's."""

    outputs: dict[str, OutputBudget] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _some(self):
        if not self.bounds():
            raise ValueError("set at least one of " + ", ".join(OutputBudget.model_fields)
                             + " (for the model or for an output under `outputs`)")
        return self

    def bounds(self) -> set[str]:
        """The bounds set anywhere in the budget."""
        own = {k for k in OutputBudget.model_fields if getattr(self, k) is not None}
        return own | {k for b in self.outputs.values() for k in OutputBudget.model_fields if getattr(b, k) is not None}

    def for_output(self, name: str) -> dict:
        """The bounds that apply to output `name`: its own entry under `outputs` when it has one (instead of the
        model's: pixels and probabilities do not share a scale), else the model's."""
        source = self.outputs.get(name, self)
        return {k: getattr(source, k) for k in OutputBudget.model_fields}


class NetworkProfile(_Strict):
    name: str
    download_kbps: float = Field(gt=0)
    upload_kbps: float | None = Field(None, gt=0)
    latency_ms: float = Field(0, ge=0)


class Measure(_Strict):
    """How candidates are measured on one target (defaults per target: pipeline.targets)."""

    warmup: int = Field(3, ge=0)
    runs: int = Field(20, ge=1)
    # Thread counts to measure at (wasm threads need a cross-origin isolated page): each is its own candidate,
    # paired with native onnxruntime at the same count; "cores" is the measuring host's core count
    # (navigator.hardwareConcurrency; natively os.cpu_count()). Every count is measured in full (same samples,
    # timings, QoE). An int means that one count.
    threads: list[int | Literal["cores"]] = Field(default_factory=lambda: [1], min_length=1)
    timeout_s: float = Field(600, gt=0)
    # User-experience probe: continuous inference on the main thread and in a Web Worker while frames,
    # event-loop lag and input delay are recorded. [] skips it. Each mode's window covers 30 inferences at the
    # measured median latency and at least 1.5 s, at most qoe_duration_ms (browser_validate.harness QOE_*).
    qoe_modes: list[Literal["main", "worker"]] = Field(default_factory=lambda: ["main", "worker"])
    qoe_duration_ms: float = Field(3000, ge=200, le=60000)
    # Evaluate accuracy on N evenly spaced samples only on this backend (None: all). For software WebGPU,
    # where 10k images would take hours; the report states how many samples each number rests on.
    max_eval_samples: int | None = Field(None, ge=1)
    # Download the model again under this emulated network: the cold start a user on it would see.
    network_profile: NetworkProfile | None = None
    # On a software GPU adapter (SwiftShader, this machine's WebGPU): "correctness" checks the outputs and times one
    # run (no warm-up, no user-experience probe): its speed says nothing of a GPU, and the decision is provisional
    # anyway; "full" measures as on hardware.
    software_gpu: Literal["correctness", "full"] = "correctness"
    # How many evaluation samples (the first of those measured; whole sequences for a stateful model) that
    # correctness check compares: a broken kernel shows on any sample, and on SwiftShader one 224x224 image takes
    # seconds. The accuracy figures say how many samples they rest on.
    software_gpu_samples: int = Field(8, ge=1)
    # Skip the browser for a variant whose own file, run natively (onnxruntime, same samples), is already outside
    # the accuracy budget: it cannot be chosen. Recorded as skipped with the native figures; remeasured when the
    # budget changes.
    skip_outside_budget: bool = True
    # Screening (pipeline.release.screen): every variant is first measured without the user-experience probe and the
    # emulated-network download, at the first thread count; only each runtime's best and those within this margin
    # of the best (on the objectives screening measures) are then measured in full at every count. null: every
    # variant in full at every count.
    screen_margin: float | None = Field(0.25, ge=0)

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v):
        v = [v] if isinstance(v, (int, str)) else v
        bad = [t for t in v if not (t == "cores" or (isinstance(t, int) and 1 <= t <= 16))]
        if bad:
            raise ValueError(f"thread counts must be 1..16 or 'cores', got {bad}")
        if len(set(map(str, v))) != len(v):
            raise ValueError(f"thread counts repeat: {v}")
        return v


def _default_measure() -> dict[str, Measure]:
    return {name: Measure(**t.measure_defaults) for name, t in TARGETS.items()}


# Hard limits a candidate must meet to be chosen at all (besides the accuracy budget): one optional upper bound
# per objective (pipeline.objectives), e.g. `input_delay_ms: 100` bounds `responsiveness`.
Goals = create_model(
    "Goals", __base__=_Strict,
    **{o.goal: (float | None, Field(None, gt=0, description=f"upper bound of {o.label} ({o.unit})"))
       for o in OBJECTIVES.values()})


class Selection(_Strict):
    # Candidates are ranked by the objectives in order: a later objective decides only between
    # candidates within `tie_tolerance` (relative) on every earlier one. The download size breaks
    # remaining ties.
    objectives: list[str] = Field(default_factory=lambda: ["latency"], min_length=1)
    goals: Goals = Goals()
    tie_tolerance: float = Field(0.02, ge=0, le=0.5)
    # Which measured thread counts compete (measure.<target>.threads): "all" ranks every count together (a
    # cross-origin isolated page runs the best; a page without isolation falls back to the best 1-thread
    # candidate, which the ranking keeps); "single" ranks only 1-thread candidates.
    threads: Literal["all", "single"] = "all"

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v):
        unknown = [o for o in v if o not in OBJECTIVES]
        if unknown:
            raise ValueError(f"unknown objective(s) {unknown}; known: {list(OBJECTIVES)}")
        return v


class Release(_Strict):
    """The release gate: what `pipeline-release promote` requires of a version against the alias's current holder,
    per target (besides keeping every target the holder had). Fractions: 0.10 = at most 10 % worse."""

    max_latency_increase: float = Field(0.10, ge=0)     # steady median latency
    max_cold_start_increase: float = Field(0.10, ge=0)  # download + session + first inference
    max_size_increase: float = Field(0.10, ge=0)        # download bytes
    # Labelled accuracy may fall by at most this (fraction, 0.01 = 1 point); default: the budget's
    # max_accuracy_drop, else 0.01. Top-1 agreement and max abs error must stay inside the budget.
    max_accuracy_loss: float | None = Field(None, ge=0, le=1)


class Recipe(_Strict):
    name: str = Field(pattern=NAME_RE)
    version: str = Field(pattern=NAME_RE)
    description: str = ""
    source: Source
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    data: DataSpec
    budget: Budget
    targets: list[str] = Field(min_length=1)
    variants: list[str] | None = Field(None, min_length=1)  # absent: every variant of every family
    measure: dict[str, Measure] = Field(default_factory=_default_measure)
    selection: Selection = Selection()
    release: Release = Release()
    # Files the app needs beside the model to prepare its inputs as the evaluation did (a tokenizer.json, a
    # vocabulary), by name: published with every version under their sha256 and handed to a data loader that
    # has an `assets` parameter, so what is published is what the evaluation used.
    assets: dict[str, FileRef] = Field(default_factory=dict)
    # Decoded detections judged besides the raw outputs (budget bounds under budget.outputs.<name>).
    detections: list[DetectionSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _detection_names(self):
        names = [o.name for o in self.outputs] + [d.name for d in self.detections]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"detections: names {dup} repeat an output's or another detection's name")
        return self

    @field_validator("assets")
    @classmethod
    def _asset_names(cls, v):
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z0-9_.-]+", k)]
        if bad:
            raise ValueError(f"asset names {bad}: use letters, digits, '_', '-', '.'")
        return v

    @model_validator(mode="after")
    def _loaders_get_assets(self):
        for what, loader in (("eval", self.data.eval), ("calibration", self.data.calibration)):
            if loader is not None and takes_assets(loader) and not self.assets:
                raise ValueError(f"data.{what}: {loader.function} takes `assets`, but the recipe has no `assets`")
        return self

    @model_validator(mode="after")
    def _one_sample_at_a_time(self):
        """Several samples per call only when every input batches by slicing (batch first, dynamic) and every
        output has its batch first; otherwise the model is evaluated one sample at a time."""
        why = [f"input {i.name} ({'no batch axis' if i.batch_axis is None else f'batch on axis {i.batch_axis}' if i.batch_axis else 'a fixed batch'})"
               for i in self.inputs if not i.batchable]
        why += [f"output {o.name} (batch on axis {o.batch_axis})" for o in self.outputs if o.batch_axis != 0]
        if why and self.data.eval_batch != 1:
            raise ValueError(f"data.eval_batch must be 1 for this model: {', '.join(why)}")
        return self

    @model_validator(mode="after")
    def _feedback_names(self):
        inputs, outputs = {i.name: i for i in self.inputs}, {o.name: o for o in self.outputs}
        for out, inp in self.data.feedback.items():
            if out not in outputs:
                raise ValueError(f"data.feedback: {out!r} is not an output ({list(outputs)})")
            if inp not in inputs or inputs[inp].value is not None:
                raise ValueError(f"data.feedback: {inp!r} is not an input the data gives ({list(inputs)})")
            if outputs[out].batch_axis != inputs[inp].batch_axis:
                raise ValueError(f"data.feedback: output {out!r} has its batch on axis {outputs[out].batch_axis}, "
                                 f"input {inp!r} on axis {inputs[inp].batch_axis}: they must match to feed back")
        if self.data.feedback and self.source.kind == "keras":
            raise ValueError("data.feedback: stateful evaluation is implemented for pytorch and onnx sources")
        return self

    @model_validator(mode="after")
    def _budget_outputs(self):
        known = [o.name for o in self.outputs] + [d.name for d in self.detections]
        unknown = sorted(set(self.budget.outputs) - set(known))
        if unknown:
            raise ValueError(f"budget.outputs names {unknown}, which are not outputs or detections of this recipe "
                             f"({known})")
        return self

    @field_validator("targets")
    @classmethod
    def _targets(cls, v):
        unknown = [t for t in v if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown target(s) {unknown}; known: {sorted(TARGETS)}")
        if len(set(v)) != len(v):
            raise ValueError("targets repeat")
        return v

    @field_validator("variants")
    @classmethod
    def _variants(cls, v):
        if v is None:
            return v
        from pipeline.families import all_variants

        known = all_variants()  # every registered family's
        unknown = [x for x in v if x not in known]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; known: {sorted(known)}")
        return v

    @field_validator("measure", mode="before")
    @classmethod
    def _measure(cls, v):
        if v is not None and not isinstance(v, dict):
            raise ValueError("expected a mapping of target -> measurement settings")
        unknown = [k for k in (v or {}) if k not in TARGETS]
        if unknown:  # e.g. `wsam`: the settings would be silently ignored
            raise ValueError(f"unknown target(s) {unknown}; known: {sorted(TARGETS)}")
        merged = {k: b.model_dump() for k, b in _default_measure().items()}
        for k, b in (v or {}).items():
            if b is not None and not isinstance(b, dict):
                raise ValueError(f"{k}: expected a mapping of measurement settings, got {b!r}")
            merged[k] = {**merged[k], **(b or {})}
        return merged

    # Filled in by load_recipe: where the recipe lives, so relative paths resolve against it.
    path: Path | None = Field(None, exclude=True)

    def fingerprint(self, *parts: str) -> str:
        """Stable hash of selected top-level fields (cache keys)."""
        dump = self.model_dump(mode="json")
        chosen = {p: dump[p] for p in parts} if parts else dump
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()

    def asset_paths(self) -> dict[str, Path]:
        """The recipe's assets, located (SourceError naming the asset when one is missing)."""
        out = {}
        for name, ref in self.assets.items():
            try:
                out[name] = self.resolve_file(ref)
            except SourceError as e:
                raise SourceError(f"assets.{name}: {e}") from None
        return out

    def resolve_file(self, ref: FileRef) -> Path:
        """Locate a FileRef; SourceError if missing."""
        if ref.package_file is not None:
            from model_sources.packages import package_file

            try:
                return package_file(ref.package_file.package, ref.package_file.path)
            except (FileNotFoundError, ModuleNotFoundError, ImportError) as e:
                raise SourceError(str(e)) from None
        p = Path(ref.file)
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        if not p.is_file():
            raise SourceError(f"file not found: {p}")
        return p


def _format_validation(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith("function-after"))
        # Discriminated unions put the tag in the location; it helps more than it confuses.
        lines.append(f"{path}: {loc or '<top>'}: {e['msg']}")
    return "\n".join(lines)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_validation(path, e)) from None
    return recipe.model_copy(update={"path": path.resolve()})


def load_recipes(directory: str | Path) -> list[Recipe]:
    """Validate every recipe in a folder; report all bad ones at once, and duplicate name/version pairs."""
    directory = Path(directory)
    files = sorted(list(directory.glob("*.yaml")) + list(directory.glob("*.yml")))
    if not files:
        raise RecipeError(f"{directory}: no recipes (*.yaml) found")
    recipes, errors, seen = [], [], {}
    for f in files:
        try:
            r = load_recipe(f)
        except RecipeError as e:
            errors.append(str(e))
            continue
        key = (r.name, r.version)
        if key in seen:
            errors.append(f"{f}: name/version {r.name} {r.version} already used by {seen[key]}")
        seen[key] = f
        recipes.append(r)
    if errors:
        raise RecipeError("\n".join(errors))
    return recipes
