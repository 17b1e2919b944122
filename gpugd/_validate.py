"""Argument checks shared by every public op. They run before any kernel, so a rejected
call changes nothing; each error names the argument and what was expected.

Which arrays a kernel may take: ``array_kind``, the one gate, run by ``array_backend`` on
every array argument of every op before any other check. Accepted: an exact
``numpy.ndarray`` or ``numpy.memmap`` (views of either included: a view is one of them)
or an exact ``cupy.ndarray``, its data aligned to its element size. Subclasses are
refused, ``np.matrix`` and masked arrays among them: a subclass may report a shape,
flags or address (``reshape``, ``flags``, ``__array_interface__``) other than the memory
the kernel is handed, and the kernels trust all three. For the accepted types these are
the array object's own C fields, so the shape, strides, writability and address the
checks read are the ones the kernels use (``np.memmap`` overrides none of them).
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._lazy import cpu

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
HALF_NAMES = ("float16", "bfloat16")  # bfloat16: ml_dtypes' dtype (NumPy and CuPy ≥ 14)
_NUMPY_TYPES = (np.ndarray, np.memmap)


def dtype_name(dtype: np.dtype) -> str:
    """The name of the dtype's scalar type ("float32", "bfloat16", …). ``dtype.name`` gives
    the same for float dtypes but is computed in Python (0.5–1.6 µs a call, against 30 ns,
    and several cache misses more when a training step has evicted NumPy's code)."""
    return dtype.type.__name__


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _cupy_ndarray() -> type | None:
    """``cupy.ndarray`` when CuPy is imported (never imported here), else None."""
    cls = getattr(sys.modules.get("cupy"), "ndarray", None)
    return cls if isinstance(cls, type) else None


def array_kind(name: str, a: Any) -> str:
    """The library ("numpy" or "cupy") of an array a kernel may be handed (see the module
    docstring): an accepted type, its data aligned to its element size. A ``TypeError`` naming
    ``name`` for any other object (subclasses included), a ``ValueError`` when unaligned."""
    t = type(a)
    if t in _NUMPY_TYPES:
        if not a.flags.aligned:
            _unaligned(name, a)
        return "numpy"
    cls = _cupy_ndarray()
    if cls is not None and t is cls:
        if a.size and a.data.ptr % a.dtype.itemsize:  # CuPy's flags have no ``aligned``
            _unaligned(name, a)
        return "cupy"
    if isinstance(a, np.ndarray) or (cls is not None and isinstance(a, cls)):
        lib = "numpy" if isinstance(a, np.ndarray) else "cupy"
        raise TypeError(
            f"{name}: expected a {lib}.ndarray, got its subclass {_type_name(t)} (a subclass "
            f"may report a shape or address other than its memory); pass {lib}.asarray({name})"
        )
    raise TypeError(f"{name}: expected a numpy.ndarray or cupy.ndarray, got {_type_name(t)}")


def _unaligned(name: str, a: Any) -> None:
    raise ValueError(
        f"{name}: the data is not aligned to its {a.dtype.itemsize}-byte elements; pass a "
        f"copy ({name}.copy())"
    )


def _library(name: str, a: Any) -> str:
    """The library ("numpy" or "cupy") by the object's type alone (for the mixing message), else the
    ``TypeError`` of a non-array."""
    if isinstance(a, np.ndarray):
        return "numpy"
    if (type(a).__module__ or "").split(".", 1)[0] == "cupy":
        return "cupy"
    cls = _cupy_ndarray()
    if cls is not None and isinstance(a, cls):  # a subclass: array_kind's error
        return "cupy"
    raise TypeError(f"{name}: expected a numpy.ndarray or cupy.ndarray, got {_type_name(type(a))}")


def array_backend(**arrays: Any) -> str:
    """Backend name ("cpu"/"cuda") shared by the named arrays: a ``TypeError`` naming both
    sides when NumPy and CuPy arrays mix, then each checked by ``array_kind``."""
    seen: dict[str, str] = {}
    for arg, a in arrays.items():
        seen.setdefault(_library(arg, a), arg)
    if len(seen) > 1:
        raise TypeError(
            f"mixed array libraries: {seen['numpy']} is a numpy.ndarray but "
            f"{seen['cupy']} is a cupy.ndarray; move them to one device first"
        )
    if not seen:
        raise TypeError("no array argument given")
    for arg, a in arrays.items():
        array_kind(arg, a)
    return "cuda" if "cupy" in seen else "cpu"


def float_array(name: str, a: Any, *, writable: bool = False, half: bool = False) -> None:
    """``a`` is a C-contiguous float32/float64 array — or float16/bfloat16 with ``half`` —
    writable when asked. Its type is ``array_backend``'s check, which every op runs on
    every array argument first."""
    if a.dtype not in FLOAT_DTYPES and not (
        half and a.dtype.isnative and dtype_name(a.dtype) in HALF_NAMES
    ):
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


def flag(name: str, value: Any) -> bool:
    """A bool option: ``True``/``False`` or a NumPy bool (not a string, number or array,
    whose truth would be taken silently: ``"False"`` is true)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    """One of the string ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


def same_layout(name_a: str, a: Any, name_b: str, b: Any) -> None:
    """``a`` and ``b`` share shape and dtype."""
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: shape {b.shape} does not match {name_a}'s {a.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_b}: dtype {b.dtype} does not match {name_a}'s {a.dtype}")


# dtypes whose exact-ndarray address Numba reads (``_cpu.tensor_table.array_address``);
# another dtype of one of these sizes (float16, bfloat16) is read through a view as the
# unsigned integer of its size: the same first byte (~0.4 µs against ~1.3 for
# ``__array_interface__``, and a bfloat16 update reads two per tensor)
_NUMBA_ADDRESS = frozenset(
    np.dtype(t)
    for t in (np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16)
)
_SAME_SIZE = {d.itemsize: d for d in map(np.dtype, (np.uint8, np.uint16, np.uint32, np.uint64))}


def address(a: Any) -> int:
    """The first byte of an array ``array_kind`` accepted (its own pointer field): the one
    place addresses come from."""
    if type(a) is np.ndarray:
        d = a.dtype
        if d not in _NUMBA_ADDRESS:
            same = None if d.hasobject else _SAME_SIZE.get(d.itemsize)
            if same is None:
                return a.__array_interface__["data"][0]
            a = a.view(same)
        return cpu("tensor_table").array_address(a)
    return a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a.data.ptr


def addresses(arrays: list) -> list[int]:
    """``address`` of each array, its lookups done once (a list update reads hundreds)."""
    read, kinds = cpu("tensor_table").array_address, _NUMBA_ADDRESS
    return [read(a) if type(a) is np.ndarray and a.dtype in kinds else address(a) for a in arrays]


def _span(a: Any) -> tuple[int, int]:
    """[start, end) bytes of a C-contiguous array (empty: start = end)."""
    start = address(a)
    return start, start + (a.nbytes if a.size else 0)


def no_partial_overlap(name_a: str, a: Any, name_b: str, b: Any, xp: Any = None) -> None:
    """``a`` and ``b`` (C-contiguous) are the same memory or disjoint (a shifted alias
    would race). ``xp`` is unused (kept for callers that pass it)."""
    if a.size == 0 or b.size == 0:
        return
    (sa, ea), (sb, eb) = _span(a), _span(b)
    if (sa, ea) != (sb, eb) and sa < eb and sb < ea:
        raise ValueError(f"{name_b} partially overlaps {name_a}; pass disjoint arrays")


def disjoint(arrays: dict[str, Any]) -> None:
    """No byte is shared by two of the named (C-contiguous) arrays, the same array twice
    included: sort the [start, end) ranges and compare neighbours."""
    if len(arrays) >= 32:  # many (a gradient list): the sorted NumPy test first
        each = list(arrays.values())
        if not overlapping(addresses(each), [a.nbytes for a in each]):
            return
    spans = sorted((*_span(a), k, n) for k, (n, a) in enumerate(arrays.items()) if a.size)
    reach, owner = -1, ""
    for start, end, _, name in spans:
        if start < reach:
            raise ValueError(f"{name} shares memory with {owner}; pass separate arrays")
        if end > reach:
            reach, owner = end, name


def overlapping(starts: Sequence[int], nbytes: Sequence[int] | np.ndarray) -> bool:
    """Whether two of the byte ranges [start, start + nbytes) share a byte (empty ones share
    none): ``disjoint``'s test for many arrays at once (sorted in NumPy, ~30 µs for 600
    against ~400 in Python); ``disjoint`` then names the two."""
    n = np.asarray(nbytes, np.uint64)
    s = np.asarray(starts, np.uint64)[n > 0]
    e = s + n[n > 0]
    order = np.argsort(s, kind="stable")
    return bool((s[order][1:] < np.maximum.accumulate(e[order])[:-1]).any())


def disjoint_from(name: str, a: Any, others: dict[str, Any]) -> None:
    """``a`` (an array the op writes) shares no byte with any of ``others`` (None: absent)."""
    if a is None or not a.size:
        return
    sa, ea = _span(a)
    for other, b in others.items():
        if b is not None and b.size:
            sb, eb = _span(b)
            if sa < eb and sb < ea:
                raise ValueError(f"{name} shares memory with {other}; pass separate arrays")


def output(out: Any, like_name: str, like: Any, inputs: dict[str, Any]) -> Any:
    """The output array of an elementwise op: a new one shaped like ``like`` when ``out`` is
    None, else ``out`` checked — the inputs' backend, a writable float array of like's
    shape and dtype, and either the very memory of an input (in place) or disjoint from it."""
    be = array_backend(**inputs)
    if out is None:
        if be == "cpu":  # a plain ndarray, also for a memmap input (no file behind it)
            return np.empty(like.shape, like.dtype)
        import cupy

        return cupy.empty_like(like)
    if array_backend(**inputs, out=out) != be:
        raise TypeError("out: must be on the same backend as the inputs")
    float_array("out", out, writable=True)
    same_layout(like_name, like, "out", out)
    for name, a in inputs.items():
        no_partial_overlap(name, a, "out", out)
    return out


def real_scalar(name: str, v: Any) -> float:
    """``v`` is a real Python/NumPy scalar (not an array, not complex, not bool)."""
    if type(v) is float:  # the common case, without the ABC check below (~0.3 µs, more cold)
        return v
    if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real scalar, got {type(v).__name__}")
    return float(v)


__all__ = [
    "address",
    "addresses",
    "array_backend",
    "array_kind",
    "choice",
    "disjoint",
    "disjoint_from",
    "dtype_name",
    "flag",
    "float_array",
    "no_partial_overlap",
    "output",
    "overlapping",
    "real_scalar",
    "same_layout",
]
