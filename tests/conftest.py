import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # recipes in tests refer to 'tinymodels:...'
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session", autouse=True)
def _close_browser_at_end():
    yield
    try:
        from browser_validate.harness import close_browser
    except ImportError:
        return
    close_browser()
