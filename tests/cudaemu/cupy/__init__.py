"""A NumPy-backed stand-in for CuPy, installed as ``cupy`` by ``cudaemu.standin.install()``
where no CUDA device answers, so that gpugd's CuPy code paths and the ``cuda`` tests run on
the CPU: arrays live in guarded host memory (``cudaemu.memory``: a guard page after every
allocation, canary bytes around it, fresh memory 0xFF-filled) and ``RawModule`` kernels
are compiled by g++ and run by the emulator (``cudaemu.runtime``).

Everything is synchronous: all streams are one host queue and every operation has finished
when its call returns. So the emulator cannot show a missing synchronization, a race
between streams or between host and device, asynchronous error reporting, or any timing;
and NumPy computes what CuPy's own kernels would (reductions, matmul, elementwise math),
so their last bits may differ from a GPU's. Faithful, with the CuPy source each mirrors
(cited in each module): what gpugd's correctness depends on — pointers and views
(``.data.ptr``, zero-size pointers of 0), kernel argument marshalling and launch
configuration, the current stream and stream capture into graphs, the refusal of implicit
host/device conversions, the CuPy ndarray's conversion and truth-value rules.

The NumPy namespace is reached through ``__getattr__``: a NumPy function is wrapped so that
stand-in arrays go in as their NumPy views (a ``numpy.ndarray`` argument is a TypeError, as
in CuPy) and array results come back in guarded memory (views of an argument stay views);
a NumPy ufunc becomes a ``cupy._core.ufunc``; dtypes and constants are NumPy's.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

_EMULATOR_PACKAGE: str = globals().get("_EMULATOR_PACKAGE", "cudaemu")
__version__ = "14.0.0+gpugd-standin"
STANDIN = True  # real CuPy has no such attribute: how a test tells the two apart

from . import (  # noqa: E402
    cuda,
    linalg,
    random,
)
from ._core import core as _core_mod  # noqa: E402
from ._core.core import (  # noqa: E402
    array,
    asarray,
    ascontiguousarray,
    ndarray,
    ufunc,
    zeros,
)
from ._core.raw import RawKernel, RawModule  # noqa: E402
from .cuda import stream as _stream  # noqa: E402

_core_mod._CUPY["module"] = sys.modules[__name__]

dtype = np.dtype
newaxis = None
_MISSING = object()


def _shape(shape: Any) -> tuple[int, ...]:
    return _core_mod._shape_of(shape)


# ---------------------------------------------------------------- creation


def empty(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    """Uninitialised guarded memory (0xFF bytes: NaN in float formats)."""
    return _core_mod._alloc(_shape(shape), dtype, order)


def ones(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    a = empty(shape, dtype, order)
    a.fill(1)
    return a


def full(shape: Any, fill_value: Any, dtype: Any = None, order: str = "C") -> ndarray:
    if dtype is None:  # cupy/_creation/basic.py
        dtype = fill_value.dtype if isinstance(fill_value, ndarray) else np.array(fill_value).dtype
    a = empty(shape, dtype, order)
    a.fill(fill_value)
    return a


def _like(a: Any, dtype: Any, order: str, shape: Any) -> tuple[tuple[int, ...], Any, str]:
    if type(a) is not ndarray:
        raise TypeError(f"expected a cupy.ndarray as the prototype, got {type(a).__name__}")
    shape = a.shape if shape is None else _shape(shape)
    dtype = a.dtype if dtype is None else dtype
    if order in ("K", "A", None):
        order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    return shape, dtype, order


def empty_like(
    a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None
) -> ndarray:
    return empty(*_like(a, dtype, order, shape))


def zeros_like(
    a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None
) -> ndarray:
    return zeros(*_like(a, dtype, order, shape))


def ones_like(
    a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None
) -> ndarray:
    return ones(*_like(a, dtype, order, shape))


def full_like(
    a: Any,
    fill_value: Any,
    dtype: Any = None,
    order: str = "K",
    subok: Any = None,
    shape: Any = None,
) -> ndarray:
    shape, dtype, order = _like(a, dtype, order, shape)
    return full(shape, fill_value, dtype, order)


def asanyarray(
    a: Any, dtype: Any = None, order: str | None = None, *, copy: Any = None, blocking: bool = False
) -> ndarray:
    return asarray(a, dtype, order, copy=copy, blocking=blocking)


def asfortranarray(a: Any, dtype: Any = None) -> ndarray:
    if type(a) is not ndarray:
        raise TypeError(f"expected a cupy.ndarray, got {type(a).__name__}")
    dt = a.dtype if dtype is None else np.dtype(dtype)
    if dt == a.dtype and a.flags.f_contiguous:
        return a
    return a.astype(dt, order="F")


def copy(a: Any, order: str = "K") -> ndarray:
    if type(a) is not ndarray:
        raise TypeError(f"cupy.copy: expected a cupy.ndarray, got {type(a).__name__}")
    return a.copy(order="C" if order == "K" and not a.flags.fnc else order)


def asnumpy(
    a: Any, stream: Any = None, order: str = "C", out: Any = None, *, blocking: bool = True
) -> np.ndarray:
    """``a.get()`` for a cupy.ndarray, else ``numpy.asarray(a, order=order)``."""
    if type(a) is ndarray:
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    if out is not None:
        out[...] = a
        return out
    return np.asarray(a, order=order)


def get_array_module(*args: Any) -> Any:
    return sys.modules[__name__] if any(type(a) is ndarray for a in args) else np


def copyto(dst: ndarray, src: Any, casting: str = "same_kind", where: Any = None) -> None:
    """cupy/_manipulation/basic.py ``copyto``: ``src`` a cupy.ndarray, a scalar or a NumPy
    array of size 1; recorded into a capturing stream's graph (an elementwise copy)."""
    if type(dst) is not ndarray:
        raise TypeError(f"copyto: dst must be a cupy.ndarray, got {type(dst).__name__}")
    if type(src) in (bool, int, float, complex):
        np.copyto(np.empty((), dst.dtype), src, casting=casting)
        value = src
    elif isinstance(src, np.ndarray):
        if src.size != 1:
            raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
        if not np.can_cast(src.dtype, dst.dtype, casting):
            raise TypeError(f"Cannot cast {src.dtype} to {dst.dtype} in {casting} casting mode")
        value = src.squeeze()[()]
    elif isinstance(src, np.generic):
        if not np.can_cast(src.dtype, dst.dtype, casting):
            raise TypeError(f"Cannot cast {src.dtype} to {dst.dtype} in {casting} casting mode")
        value = src
    elif type(src) is ndarray:
        if not np.can_cast(src.dtype, dst.dtype, casting):
            raise TypeError(f"Cannot cast {src.dtype} to {dst.dtype} in {casting} casting mode")
        value = src._a
    else:
        raise TypeError(f"copyto: unsupported source {type(src).__name__}")
    if where is not None and type(where) is not ndarray:
        raise TypeError("copyto: where must be a cupy.ndarray")
    d, w = dst._a, (True if where is None else where._a)
    _stream.record_or_run("copyto", lambda: np.copyto(d, value, casting="unsafe", where=w))


def shares_memory(a: Any, b: Any, max_work: Any = None) -> bool:
    owners: list = []
    ua, ub = _core_mod._unwrap((a, b), owners, "cupy.shares_memory")
    return bool(np.shares_memory(ua, ub, max_work))


def may_share_memory(a: Any, b: Any, max_work: Any = None) -> bool:
    owners: list = []
    ua, ub = _core_mod._unwrap((a, b), owners, "cupy.may_share_memory")
    return bool(np.may_share_memory(ua, ub, max_work))


def is_available() -> bool:
    return True


get_default_memory_pool = cuda.memory.get_default_memory_pool
get_default_pinned_memory_pool = cuda.memory.get_default_pinned_memory_pool


# ---------------------------------------------------------------- the NumPy namespace

# NumPy names CuPy lacks or that would bypass guarded memory / the conversion rules.
_REFUSED = {
    "asarray_chkfinite",
    "asmatrix",
    "ctypeslib",
    "frombuffer",
    "fromfile",
    "fromiter",
    "fromstring",
    "genfromtxt",
    "load",
    "loadtxt",
    "memmap",
    "matrix",
    "save",
    "savetxt",
    "savez",
    "savez_compressed",
    "from_dlpack",
}


def _function(f: Any, name: str) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return _core_mod.call_numpy(f, f"cupy.{name}", args, kwargs)

    wrapped.__name__ = wrapped.__qualname__ = name
    wrapped.__module__ = "cupy"
    wrapped.__doc__ = f"numpy.{name} on the stand-in's arrays (see cupy/__init__.py)."
    return wrapped


def __getattr__(name: str) -> Any:
    if name.startswith("__") or name in _REFUSED:
        raise AttributeError(f"module 'cupy' has no attribute {name!r}")
    obj = getattr(np, name, _MISSING)
    if obj is _MISSING:
        raise AttributeError(f"module 'cupy' has no attribute {name!r} (nor has numpy)")
    if isinstance(obj, np.ufunc):
        w = ufunc(obj)
    elif isinstance(obj, type | int | float | np.dtype):  # scalar types, dtypes, constants
        w = obj
    elif callable(obj) and not isinstance(obj, type(np)):
        w = _function(obj, name)
    else:
        raise AttributeError(f"module 'cupy' has no attribute {name!r} (stand-in)")
    globals()[name] = w
    return w


__all__ = [
    "RawKernel",
    "RawModule",
    "array",
    "asarray",
    "ascontiguousarray",
    "asnumpy",
    "cuda",
    "empty",
    "linalg",
    "ndarray",
    "random",
    "zeros",
]
