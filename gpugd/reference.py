"""Float64 NumPy implementations: the executable specification every kernel is tested against.

Each function takes NumPy arrays of any float dtype, computes in float64 and returns
float64 results; it never modifies its inputs.
"""

from __future__ import annotations

import numpy as np


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def axpy(x, a: float, y) -> np.ndarray:
    """x + a·y."""
    return _f64(x) + float(a) * _f64(y)


def scale(x, a: float) -> np.ndarray:
    """a·x."""
    return float(a) * _f64(x)


def sum_of_squares(x) -> float:
    """Σ x_i² (math.fsum over float64 squares: correctly rounded)."""
    import math

    v = _f64(x).ravel()
    return math.fsum((v * v).tolist()) if v.size < (1 << 22) else float(np.dot(v, v))
