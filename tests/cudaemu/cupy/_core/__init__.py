"""``cupy._core`` of the stand-in: the array (``core.ndarray``) and the raw kernels."""

from __future__ import annotations

from . import core, raw
from .core import ndarray, ufunc

__all__ = ["core", "ndarray", "raw", "ufunc"]
