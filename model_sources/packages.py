"""Locate files shipped inside installed Python packages without importing them.

Some packages have heavy or broken top-level imports (``rapidocr_onnxruntime`` imports ``cv2``,
which is not installed here), so we resolve the package directory via
:func:`importlib.util.find_spec` of the *top-level* name only, which does not execute the package's
``__init__``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

__all__ = ["PackageNotInstalledError", "package_dir", "package_file"]


class PackageNotInstalledError(FileNotFoundError):
    """Raised when the requested import package cannot be found."""


def _dist_name(package: str) -> str:
    """Best-effort distribution name (for the pip hint) of an import package name."""
    try:
        dists = importlib.metadata.packages_distributions().get(package)
    except Exception:  # pragma: no cover - metadata scan failure is non-fatal
        dists = None
    if dists:
        return dists[0]
    return package.replace("_", "-")


def package_dir(package: str) -> Path:
    """Directory of an installed top-level import package (e.g. ``"rapidocr_onnxruntime"``)."""
    top = package.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise PackageNotInstalledError(
            f"package '{package}' is not installed (pip install {_dist_name(package)})"
        )
    if spec.submodule_search_locations:
        base = Path(list(spec.submodule_search_locations)[0])
    elif spec.origin:
        base = Path(spec.origin).parent  # single-module distribution
    else:  # pragma: no cover - namespace package without locations
        raise PackageNotInstalledError(
            f"package '{package}' is not installed (pip install {_dist_name(package)})"
        )
    rest = package.split(".")[1:]
    return base.joinpath(*rest) if rest else base


def package_file(package: str, relpath: str) -> Path:
    """Absolute path of ``relpath`` inside installed package ``package``.

    >>> package_file("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx")  # doctest: +SKIP

    Raises :class:`FileNotFoundError` (or its subclass :class:`PackageNotInstalledError`) with a message
    naming the package and the path that was searched.
    """
    base = package_dir(package)
    path = (base / relpath).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"file '{relpath}' not found in package '{package}' (looked in {base})")
    return path
