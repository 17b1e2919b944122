"""``cupy.linalg`` of the stand-in: ``numpy.linalg``'s functions behind CuPy's argument
rules (cupy arrays in, cupy arrays out, NumPy arrays refused)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._core import core as _core

LinAlgError = np.linalg.LinAlgError


def __getattr__(name: str) -> Any:
    f = getattr(np.linalg, name, None)
    if name.startswith("_") or f is None or not callable(f) or isinstance(f, type):
        raise AttributeError(f"module 'cupy.linalg' has no attribute {name!r}")

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return _core.call_numpy(f, f"cupy.linalg.{name}", args, kwargs)

    wrapped.__name__ = name
    globals()[name] = wrapped
    return wrapped
