"""Test layout: tests/unit (pure Python, seconds) and tests/integration (real converters, real Chromium).
Markers (pyproject.toml): `browser` launches headless Chromium, `toolchain` runs a converter or compiler
(torch export, onnxsim, quantizers, onnx2tf, tfjs converter, TVM, emcc), `slow` takes minutes.
Fast loop: `pytest -m "not browser and not toolchain"`."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # recipes in tests refer to 'models:...'
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session", autouse=True)
def _close_browser_at_end():
    yield
    if "browser_validate.browser" in sys.modules:
        from browser_validate.harness import close_browser

        close_browser()
