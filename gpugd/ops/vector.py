"""Level-1 vector ops: ``axpy_`` (x += a·y), ``scale_`` (x *= a), ``sum_of_squares`` (Σx²).

They are the kernels the bandwidth roofline is measured with: ``axpy_`` must move 3 words
per element, ``scale_`` 2, ``sum_of_squares`` 1. Arrays may have any shape but must be
C-contiguous float32/float64; NumPy arrays run the Numba kernels of ``gpugd._cpu.vector``,
CuPy arrays the CUDA kernels of ``kernels/vector.cu``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _validate as v
from .._lazy import cpu

# Every kernel of kernels/vector.cu this module launches (checked against the PTX by NVRTC).
CUDA_KERNELS = (
    *(
        f"gpugd_vector_{op}_{sfx}"
        for op in ("axpy", "scale", "sum_of_squares_partial", "scale_sum_of_squares_partial")
        for sfx in ("f32", "f64")
    ),
    "gpugd_vector_sum_partials",
)

_SSQ_BLOCKS_MAX = 1024  # stage-1 partials fit one block of stage 2 many times over


def axpy_(x: Any, a: float, y: Any) -> Any:
    """x ← x + a·y, in place; returns ``x``. ``x`` and ``y``: same shape and float dtype."""
    be = v.array_backend(x=x, y=y)
    a = v.real_scalar("a", a)
    v.float_array("x", x, writable=True)
    v.float_array("y", y)
    v.same_layout("x", x, "y", y)
    v.no_partial_overlap("x", x, "y", y)
    if be == "cpu":
        k = cpu("vector")
        if x.size:
            k.axpy(x.reshape(-1), x.dtype.type(a), y.reshape(-1))
    else:
        from .. import _cuda

        if x.size:
            name = f"gpugd_vector_axpy_{_cuda.dtype_suffix(x.dtype)}"
            _cuda.launch("vector", name, x.size, (x, x.dtype.type(a), y, np.int64(x.size)))
    return x


def scale_(x: Any, a: float) -> Any:
    """x ← a·x, in place; returns ``x``."""
    be = v.array_backend(x=x)
    a = v.real_scalar("a", a)
    v.float_array("x", x, writable=True)
    if not x.size:
        return x
    if be == "cpu":
        k = cpu("vector")
        k.scale(x.reshape(-1), x.dtype.type(a))
    else:
        from .. import _cuda

        name = f"gpugd_vector_scale_{_cuda.dtype_suffix(x.dtype)}"
        _cuda.launch("vector", name, x.size, (x, x.dtype.type(a), np.int64(x.size)))
    return x


def sum_of_squares(x: Any) -> Any:
    """Σ x_i², accumulated in float64, read-only.

    Returns a NumPy ``float64`` scalar for NumPy input, and a 0-d float64 CuPy array (no
    host synchronization) for CuPy input. Deterministic run to run on both backends.
    """
    be = v.array_backend(x=x)
    v.float_array("x", x)
    if be == "cpu":
        k = cpu("vector")
        return np.float64(k.sum_of_squares(x.reshape(-1)) if x.size else 0.0)

    return _cuda_sum_of_squares("sum_of_squares_partial", x, ())


def scale_sum_of_squares_(x: Any, a: float) -> Any:
    """x ← a·x in place and Σ (a·x_i)² (float64) from the same pass: scaling and the norm
    that clipping needs in one read and one write (how gradient averaging yields the
    global norm for free). Returns the sum like ``sum_of_squares``."""
    be = v.array_backend(x=x)
    v.float_array("x", x, writable=True)
    a = v.real_scalar("a", a)
    t = x.dtype.type
    if be == "cpu":
        k = cpu("vector")
        return np.float64(k.scale_sum_of_squares(x.reshape(-1), t(a)) if x.size else 0.0)

    return _cuda_sum_of_squares("scale_sum_of_squares_partial", x, (t(a),))


def _cuda_sum_of_squares(op: str, x: Any, scalars: tuple) -> Any:
    """The two-stage CUDA sum of squares (``op``: plain, or scaling x on the way): per-block
    partials, then one block folds them in a fixed order. A 0-d float64 CuPy array."""
    import cupy

    from .. import _cuda

    out = cupy.zeros((), dtype=cupy.float64)
    if not x.size:
        return out
    n = x.size
    name = f"gpugd_vector_{op}_{_cuda.dtype_suffix(x.dtype)}"
    blocks = min(_cuda.grid_for("vector", name, n, per_thread=8), _SSQ_BLOCKS_MAX)
    partial = cupy.empty(blocks, dtype=cupy.float64)
    args = (x, *scalars, np.int64(n), partial)
    _cuda.get_kernel("vector", name)((blocks,), (_cuda.THREADS,), args)
    _cuda.get_kernel("vector", "gpugd_vector_sum_partials")(
        (1,), (_cuda.THREADS,), (partial, np.int64(blocks), out)
    )
    return out
