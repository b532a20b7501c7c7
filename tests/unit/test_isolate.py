"""pipeline.isolate: a converter's native crash becomes a recorded failure, not the end of the build."""
import os

import pytest

from pipeline.isolate import run_isolated
from pipeline.outcome import ConversionError, UnsupportedOp


def _abort_after_saying(text: str):
    os.write(2, f"F0000 check failed: {text}\n".encode())
    os.abort()  # what a C++ CHECK in a native library does


def _raise_unsupported():
    raise UnsupportedOp("tflite converter", ["Erf", "Gelu"], "needs TF Select")


def _add(a, b=0):
    return a + b


def test_result_and_python_errors_come_back_as_they_were():
    assert run_isolated(_add, 2, b=3, what="adding") == 5
    with pytest.raises(UnsupportedOp) as e:
        run_isolated(_raise_unsupported, what="converting")
    assert e.value.ops == ["Erf", "Gelu"] and e.value.step == "tflite converter" and "TF Select" in str(e.value)


def test_a_native_abort_is_a_conversion_error_with_its_last_words():
    with pytest.raises(ConversionError, match=r"litert int8 conversion: the converter's process died .*"
                                              r"check failed: quantizer exploded"):
        run_isolated(_abort_after_saying, "quantizer exploded", what="litert int8 conversion")
    assert run_isolated(_add, 1, what="after a crash") == 1  # the caller's process goes on


def test_a_build_driven_from_a_script_on_stdin_can_isolate(tmp_path):
    # `python - <<EOF` has no main file a spawned child could re-run: it used to die as "process died ... none".
    import subprocess
    import sys
    from pathlib import Path

    script = "from pipeline.isolate import run_isolated\nimport operator\nprint(run_isolated(operator.add, 2, 3, what='x'))\n"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "5"
