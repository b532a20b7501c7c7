"""Measure browser model variants in headless Chromium (see harness.measure).

Modules: ``harness`` (MeasureRequest -> MeasureResult: drives the page), ``browser`` (one Chromium per
process), ``memory`` (renderer / GPU process RSS), ``job`` (the files a measurement serves to the page),
``server`` (same-origin, cross-origin-isolated static server), ``runtimes`` (adapters + the RUNTIMES table),
``page`` (the measuring page). Importing this package stays light: Playwright, numpy and psutil load with
``harness``.
"""

from __future__ import annotations

from pathlib import Path

from .runtimes import ADAPTER_INTERFACE, RUNTIMES, RUNTIMES_DIR

PACKAGE_DIR = Path(__file__).resolve().parent
PAGE_DIR = PACKAGE_DIR / "page"

__all__ = ["measuring_code_files", "RUNTIMES"]


def measuring_code_files(runtime: str) -> list[Path]:
    """Every file whose content decides what a measurement of ``runtime`` means (Python harness, page,
    adapter interface, runtime table, the runtime's adapter), sorted: callers hash them into cache keys, so
    a change to any of them re-measures exactly the runtimes it can affect. KeyError for an unknown runtime."""
    if runtime not in RUNTIMES:
        raise KeyError(f"unknown runtime {runtime!r} (known: {', '.join(sorted(RUNTIMES))})")
    files = {
        *PACKAGE_DIR.glob("*.py"),
        *(p for p in PAGE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
        ADAPTER_INTERFACE,
        RUNTIMES_DIR / "__init__.py",
        RUNTIMES_DIR / RUNTIMES[runtime].js,
    }
    return sorted(files)
