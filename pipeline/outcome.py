"""Failures as data: one exception hierarchy for every stage and family, and the record a task keeps of it.

A task never lets a model's problem stop the build: whatever goes wrong becomes a result with a status
(``failed`` or ``unsupported``), the stage, the cause and whether the next build should try again
(``retry``). Causes that a rebuild with the same inputs could cure (a package or tool installed later, a browser
crash) are retryable; causes inherent to the model and configuration (an op a converter lacks, a model over
budget) are not, and stay cached until their inputs change.
"""
from __future__ import annotations

import errno
import traceback

# A retryable failure is tried again by each of the next builds, up to this many attempts in all; then it is
# kept as a failure like any other (its record says so) until one of its inputs changes.
MAX_ATTEMPTS = 3


class PipelineError(Exception):
    """A failure the build records. `stage` None means "the stage of the task that raised it"."""

    stage: str | None = None
    status: str = "failed"
    retryable: bool = False

    def __init__(self, cause: str, *, stage: str | None = None, status: str | None = None,
                 retryable: bool | None = None, details: dict | None = None):
        super().__init__(cause)
        self.cause = cause
        if stage is not None:
            self.stage = stage
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable
        self.details = details or {}  # e.g. the browser's console and environment, kept in the result

    def record(self, task_stage: str) -> dict:
        return {**self.details, "status": self.status, "stage": self.stage or task_stage, "error": self.cause,
                "retry": self.retryable}


class RecipeError(PipelineError):
    """A recipe is unusable. The message names the file, the field and the cause. Raised before any work."""

    stage = "recipe"


class SourceError(PipelineError):
    """The model or data a recipe names cannot be located or loaded: a package or file that is not installed, a
    function that does not import, weights that do not fit. Retried: installing a package or fixing the
    module's code cures it without changing the build's inputs."""

    retryable = True


class ToolchainMissing(PipelineError):
    """A converter or compiler (emcc, onnx2tf, …) is not installed. Retried once it is."""

    retryable = True


class DataError(PipelineError):
    """The data loader's samples do not match what the recipe declares."""

    stage = "data"


class OutsideBudget(PipelineError):
    """Not measured in the browser: the same file, run natively, is already outside the accuracy budget."""

    stage = "browser"
    status = "skipped"


class ConversionError(PipelineError):
    """A conversion step failed; the message names the step, the file and the cause."""


class NotApplicable(ConversionError):
    """The variant makes no sense for this model (e.g. 4-bit MatMul on a graph without MatMul): not a failure."""

    status = "unsupported"


class UnsupportedOp(ConversionError):
    """Op(s) one converter cannot handle. `step` names the converter stage, `ops` the op types."""

    def __init__(self, step: str, ops: str | list[str], detail: str = ""):
        self.step = step
        self.ops = sorted(set([ops] if isinstance(ops, str) else ops))
        self.op = ", ".join(self.ops)
        self.detail = detail
        super().__init__(f"{step}: unsupported op {self.op}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # raised in a child process (pipeline.isolate), re-raised here
        return type(self), (self.step, self.ops, self.detail), self.__dict__


class IntegrityError(PipelineError):
    """A file differs from the content recorded for it (tampered, rewritten by a converter, corrupted on disk).
    Retried: the next build rebuilds whatever produced it."""

    stage = "integrity"
    retryable = True


class RegistryError(PipelineError):
    """The registry cannot be read or written as it is (e.g. a corrupt index.json); the message names the file."""

    stage = "registry"


class MeasurementError(PipelineError):
    """A browser measurement failed (crash, timeout, wrong console, page error)."""

    stage = "browser"


class Unsupported(PipelineError):
    """The browser cannot run this candidate (no adapter, a missing feature such as shader-f16)."""

    stage = "unsupported"
    status = "unsupported"


# Errors of the machine, not of the model: the build itself fails (non-zero exit) and nothing is recorded, so the
# next build simply runs the task again.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM}


def is_environment_failure(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS):
            return True
        e = e.__cause__ or e.__context__
    return False


def describe(e: BaseException, limit: int = 500) -> str:
    """`Type: message`; for an exception without a message (a bare `AssertionError:`), where it was raised and
    the failing line instead, so the record still says what went wrong."""
    msg = str(e).strip()
    if not msg:
        frames = traceback.extract_tb(e.__traceback__) if e.__traceback__ else []
        if frames:
            f = frames[-1]
            msg = f"raised without a message at {f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" + \
                  (f": `{f.line.strip()}`" if f.line else "")
        else:
            msg = "raised without a message"
    return f"{type(e).__name__}: {msg}"[:limit]


_describe = describe  # conversion_step's `describe` parameter shadows the name


def short(e: BaseException) -> str:
    """describe(), first line only."""
    return describe(e).splitlines()[0]


def failure_record(e: BaseException, task_stage: str) -> dict:
    """The result a task keeps for an exception: ours carry their own record; anything else is a failure of
    the task's stage with a short cause and a few frames of traceback."""
    if isinstance(e, PipelineError):
        return e.record(task_stage)
    return {"status": "failed", "stage": task_stage, "error": short(e), "retry": False,
            "traceback": traceback.format_exc(limit=8)}


def upstream_failure(result: dict) -> PipelineError:
    """An input task's failed result, carried into its dependant (same stage, cause, status and retry flag)."""
    return PipelineError(result.get("error", "failed"), stage=result.get("stage", "upstream"),
                         status=result.get("status", "failed"), retryable=result.get("retry", False))


def conversion_step(name: str, describe=None):
    """Decorator for a conversion step ``step(src, dst, ...)``: any error that is not already one of ours becomes
    a ConversionError naming the step and the files."""
    import functools

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except PipelineError:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised with context
                if is_environment_failure(e):
                    raise
                try:
                    where = describe(*args, **kwargs) if describe else _src_dst(*args, **kwargs)
                except Exception:  # noqa: BLE001
                    where = ""
                raise ConversionError(f"{name} failed{where}: {_describe(e, 2000)}") from e

        return wrapper

    return deco


def _src_dst(src=None, dst=None, *_, **__) -> str:
    return f" ({src} -> {dst})"
