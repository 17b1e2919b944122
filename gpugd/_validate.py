"""Argument checks shared by every public op. They run before any kernel, so a rejected
call changes nothing; each error names the argument and what was expected."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .backend import array_backend

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
HALF_NAMES = ("float16", "bfloat16")  # bfloat16: ml_dtypes' dtype (NumPy and CuPy ≥ 14)


def dtype_name(dtype: np.dtype) -> str:
    """The name of the dtype's scalar type ("float32", "bfloat16", …). ``dtype.name`` gives
    the same for float dtypes but is computed in Python (0.5–1.6 µs a call, against 30 ns,
    and several cache misses more when a training step has evicted NumPy's code)."""
    return dtype.type.__name__


def float_array(name: str, a: Any, *, writable: bool = False, half: bool = False) -> None:
    """``a`` is a C-contiguous float32/float64 array — or float16/bfloat16 with ``half`` —
    writable when asked."""
    if a.dtype not in FLOAT_DTYPES and not (half and dtype_name(a.dtype) in HALF_NAMES):
        kinds = "float32, float64, float16 or bfloat16" if half else "float32 or float64"
        raise TypeError(f"{name}: expected dtype {kinds}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(
            f"{name}: expected a C-contiguous array (strides {a.strides} for shape "
            f"{a.shape}); pass a contiguous copy"
        )
    # CuPy arrays have no read-only state (their flags lack ``writeable``): always writable.
    if writable and not getattr(a.flags, "writeable", True):
        raise ValueError(f"{name}: the array is read-only but the op writes into it")


def same_layout(name_a: str, a: Any, name_b: str, b: Any) -> None:
    """``a`` and ``b`` share shape and dtype."""
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: shape {b.shape} does not match {name_a}'s {a.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_b}: dtype {b.dtype} does not match {name_a}'s {a.dtype}")


def no_partial_overlap(name_a: str, a: Any, name_b: str, b: Any, xp: Any) -> None:
    """``a`` and ``b`` are the same memory or disjoint (a shifted alias would race)."""
    if a.size == 0 or b.size == 0:
        return
    same = (
        a.data.ptr == b.data.ptr
        if xp is not np
        else (a.__array_interface__["data"][0] == b.__array_interface__["data"][0])
    )
    if not same and xp.may_share_memory(a, b):
        raise ValueError(f"{name_b} partially overlaps {name_a}; pass disjoint arrays")


def output(out: Any, like_name: str, like: Any, inputs: dict[str, Any]) -> Any:
    """The output array of an elementwise op: a new one shaped like ``like`` when ``out`` is
    None, else ``out`` checked — the inputs' backend, a writable float array of like's
    shape and dtype, and either the very memory of an input (in place) or disjoint from it."""
    be = array_backend(**inputs)
    if be == "cpu":
        xp = np
    else:
        import cupy as xp
    if out is None:
        return xp.empty_like(like)
    if array_backend(**inputs, out=out) != be:
        raise TypeError("out: must be on the same backend as the inputs")
    float_array("out", out, writable=True)
    same_layout(like_name, like, "out", out)
    for name, a in inputs.items():
        no_partial_overlap(name, a, "out", out, xp)
    return out


def real_scalar(name: str, v: Any) -> float:
    """``v`` is a real Python/NumPy scalar (not an array, not complex, not bool)."""
    if type(v) is float:  # the common case, without the ABC check below (~0.3 µs, more cold)
        return v
    if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real scalar, got {type(v).__name__}")
    return float(v)


__all__ = [
    "array_backend",
    "dtype_name",
    "float_array",
    "no_partial_overlap",
    "output",
    "real_scalar",
    "same_layout",
]
