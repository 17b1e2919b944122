"""``cupy.ndarray`` of the stand-in: a NumPy view over one guarded allocation, behind CuPy's
rules (composition, not a ``numpy.ndarray`` subclass, so ``gpugd.backend`` sees a CuPy
array).

Mirrored from ``cupy/_core/core.pyx`` and ``cupy/_core/_routines_indexing.pyx``:

- ``__array__`` raises ``TypeError('Implicit conversion to a NumPy array is not allowed.
  Please use `.get()` to construct a NumPy array explicitly.')``; there is no buffer
  protocol and no ``__array_interface__``; ``__cuda_array_interface__`` is there;
- a ``numpy.ndarray`` operand of an operator or ufunc is ``TypeError('Unsupported type
  <class 'numpy.ndarray'>')`` (``_scalar.pyx``'s ``CScalar``; ``__array_ufunc__`` sends
  ``numpy.add(cupy_a, numpy_b)`` there too), and an ``out=`` that is not a
  ``cupy.ndarray`` is ``TypeError('Output arguments type must be cupy.ndarray')``
  (``_kernel.pyx``); ufunc outputs are new C-contiguous arrays;
- ``__int__``/``__float__``/``__complex__`` are ``int(self.get())`` etc. (so they follow the
  installed NumPy: size-1 arrays of ndim > 0 are refused by NumPy >= 2.4); ``__bool__``:
  empty → DeprecationWarning and False, size 1 → ``bool(self.get())``, else ValueError;
  no ``__index__``; ``__len__``/``__iter__`` refuse 0-d arrays; ``__repr__`` is
  ``repr(self.get())``; no ``__imatmul__`` (``a @= b`` rebinds ``a`` to a new array);
- integer indexing returns 0-d arrays that are views (not NumPy scalars); reductions
  return 0-d arrays; ``.data.ptr`` of a view is the base pointer plus the byte offset, and
  ``.base`` is the array that owns the memory;
- ``x[basic] = value`` with a value that is not a ``cupy.ndarray`` is ``x[basic].fill(value)``
  ("Refuse assignment from CPU arrays, see gh-2079"): a scalar or 0-d NumPy array only,
  else ``ValueError('non-scalar numpy.ndarray cannot be used for fill')``; with an advanced
  index (integer/boolean arrays) the value goes through ``cupy.array`` and may be a NumPy
  array; index arrays may be NumPy arrays or lists (``_prepare_slice_list``).

Not mirrored: CuPy wraps out-of-bounds integer *array* indices around, NumPy (and so this
stand-in) raises IndexError; CuPy's reductions and BLAS round differently from NumPy's
(float32 sums accumulate in another order); CuPy's dtype table is narrower than NumPy's
(object, string and datetime dtypes are refused here as "Unsupported dtype").
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import numpy as np

from ..cuda import memory as _memory
from ..cuda import stream as _stream

_CUPY: dict[str, Any] = {}  # "module": the stand-in cupy package, set by its __init__
_PY_SCALARS = (bool, int, float, complex)
_SCALARS = (*_PY_SCALARS, np.generic)
_IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. "
    "Please use `.get()` to construct a NumPy array explicitly."
)


def _check_dtype(dt: np.dtype) -> np.dtype:
    if dt.kind in "OSUMm":
        raise ValueError(f"Unsupported dtype {dt}")
    return dt


def _shape_of(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int | np.integer):
        return (operator.index(shape),)
    return tuple(operator.index(s) for s in shape)


class Flags:
    """``cupy/_core/flags.pyx``: c_contiguous, f_contiguous, owndata (no ``writeable``)."""

    __slots__ = ("_c_contiguous", "_f_contiguous", "_owndata")

    def __init__(self, c_contiguous: bool, f_contiguous: bool, owndata: bool):
        self._c_contiguous, self._f_contiguous, self._owndata = (
            c_contiguous,
            f_contiguous,
            owndata,
        )

    c_contiguous = property(lambda self: self._c_contiguous)
    f_contiguous = property(lambda self: self._f_contiguous)
    owndata = property(lambda self: self._owndata)
    fnc = property(lambda self: self._f_contiguous and not self._c_contiguous)
    forc = property(lambda self: self._f_contiguous or self._c_contiguous)

    def __getitem__(self, name: str) -> bool:
        if name == "C_CONTIGUOUS":
            return self.c_contiguous
        if name == "F_CONTIGUOUS":
            return self.f_contiguous
        if name == "OWNDATA":
            return self.owndata
        raise KeyError(f"{name} is not defined for cupy.ndarray.flags")

    def __repr__(self) -> str:
        return "\n".join(f"  {n} : {self[n]}" for n in ("C_CONTIGUOUS", "F_CONTIGUOUS", "OWNDATA"))


# ---------------------------------------------------------------- allocation and wrapping


def _new(view: np.ndarray, mem: _memory.Memory, base: ndarray | None) -> ndarray:
    obj = object.__new__(ndarray)
    obj._a, obj._mem, obj._base = view, mem, base
    return obj


def _alloc(shape: tuple[int, ...], dtype: Any, order: str = "C", zero: bool = False) -> ndarray:
    """A new array in guarded memory: 0xFF garbage, or zeros with ``zero``."""
    dt = _check_dtype(np.dtype(dtype))
    count = 1
    for s in shape:
        if s < 0:
            raise ValueError(f"negative dimensions are not allowed: {shape}")
        count *= s
    mem = _memory.Memory(count * dt.itemsize, zero=zero)
    flat = np.frombuffer(mem.buffer(), dtype=dt, count=count)
    return _new(flat.reshape(shape, order="F" if order in ("F", "f") else "C"), mem, None)


def _empty_for_capture(shape: tuple[int, ...], dtype: Any, order: str = "C") -> ndarray:
    """An array whose zero fill is a memset recorded into a capturing stream's graph."""
    out = _alloc(shape, dtype, order)
    view = out._a
    _stream.record_or_run("memset 0 (cupy.zeros)", lambda: view.fill(0))
    return out


def zeros(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    shape = _shape_of(shape)
    if _stream.capturing() is not None:  # CuPy: empty + memset_async, which is captured
        return _empty_for_capture(shape, dtype, order)
    return _alloc(shape, dtype, order, zero=True)


def _fresh(r: np.ndarray, op: str, order: str = "C") -> ndarray:
    """``r`` (host memory) copied into a new guarded array: C order, or F when asked and
    ``r`` is F-contiguous only."""
    _stream.refuse_capture(op)
    if r.dtype.kind == "O":
        raise ValueError("Unsupported dtype object")
    keep_f = order == "K" and r.flags.f_contiguous and not r.flags.c_contiguous
    out = _alloc(r.shape, r.dtype, "F" if keep_f else "C")
    np.copyto(out._a, r, casting="unsafe")
    return out


def _owner(r: np.ndarray, owners: list[ndarray]) -> ndarray | None:
    """The stand-in array among ``owners`` whose allocation holds ``r``'s data, if any."""
    if not owners:
        return None
    addr = r.__array_interface__["data"][0]
    for o in owners:
        m = o._mem
        if m.ptr and m.ptr <= addr <= m.ptr + m.size:
            return o
    return None


def _wrap(r: Any, owners: list[ndarray], op: str, order: str = "K") -> Any:
    """A NumPy result as stand-in arrays: a view of an input's memory stays a view, new
    data is copied into guarded memory, NumPy scalars become 0-d arrays."""
    if isinstance(r, np.ndarray):
        o = _owner(r, owners)
        if o is not None:
            if r is o._a:
                return o
            return _new(r, o._mem, o._base if o._base is not None else o)
        return _fresh(r, op, order)
    if isinstance(r, np.generic):
        return _fresh(np.asarray(r), op)
    if isinstance(r, tuple):
        return tuple(_wrap(x, owners, op, order) for x in r)
    if isinstance(r, list):
        return [_wrap(x, owners, op, order) for x in r]
    return r


def _refuse_numpy(x: np.ndarray, op: str) -> TypeError:
    return TypeError(
        f"Unsupported type {type(x)} in {op}: a numpy.ndarray is never converted to a "
        "cupy.ndarray implicitly (use cupy.asarray)"
    )


def _unwrap(x: Any, owners: list[ndarray], op: str) -> Any:
    """Stand-in arrays → their NumPy views (noted in ``owners``), recursively through
    lists, tuples and dicts; a NumPy array is refused as CuPy refuses it."""
    if type(x) is ndarray:
        owners.append(x)
        return x._a
    if isinstance(x, np.ndarray):
        raise _refuse_numpy(x, op)
    if isinstance(x, list | tuple):
        items = [_unwrap(v, owners, op) for v in x]
        return items if isinstance(x, list) else tuple(items)
    if isinstance(x, dict):
        return {k: _unwrap(v, owners, op) for k, v in x.items()}
    return x


def call_numpy(func: Any, name: str, args: tuple, kwargs: dict, order: str = "K") -> Any:
    """``func`` (a NumPy function) on the NumPy views of stand-in arguments; array results
    wrapped back (``out=`` given: that very stand-in array)."""
    owners: list[ndarray] = []
    out = kwargs.get("out")
    if out is not None and not isinstance(out, ndarray | tuple):
        raise TypeError("Output arguments type must be cupy.ndarray")
    uargs = _unwrap(args, owners, name)
    ukw = _unwrap(kwargs, owners, name)
    if out is not None:
        _stream.refuse_capture(name)  # an in-place NumPy function: not recorded
    r = func(*uargs, **ukw)
    if out is not None and isinstance(out, ndarray) and r is out._a:
        return out
    return _wrap(r, owners, name, order)


# ---------------------------------------------------------------- ufuncs


def _ufunc_operand(x: Any, name: str, compare: bool) -> Any:
    if type(x) is ndarray:
        return x._a
    if isinstance(x, _SCALARS):
        return x
    if isinstance(x, np.ndarray):
        if compare and x.ndim == 0:  # core.pyx: "workaround for numpy/numpy#12142"
            return x.item()
        raise _refuse_numpy(x, f"cupy.{name}")
    raise TypeError(f"Unsupported type {type(x)}")


_COMPARISONS = {"greater", "greater_equal", "less", "less_equal", "equal", "not_equal"}


def apply_ufunc(u: np.ufunc, method: str, inputs: tuple, kwargs: dict) -> Any:
    """``u.<method>(*inputs, **kwargs)`` with CuPy's operand rules, into guarded memory.

    While the current stream captures, an elementwise ``__call__`` is recorded into the
    graph (into a new array allocated now, or into ``out``), as CuPy's kernel would be;
    ``reduce``/``accumulate``/... are refused."""
    name = u.__name__
    compare = name in _COMPARISONS
    args = tuple(_ufunc_operand(x, name, compare) for x in inputs)
    kwargs = dict(kwargs)
    out = kwargs.pop("out", None)
    where = kwargs.get("where")
    if where is not None and not isinstance(where, bool):
        if type(where) is not ndarray:
            raise TypeError(f"Unsupported type {type(where)} for where= in cupy.{name}")
        kwargs["where"] = where._a
    if isinstance(out, tuple):
        out = out[0] if len(out) == 1 else out
    outs: tuple = () if out is None else (out if isinstance(out, tuple) else (out,))
    for o in outs:
        if type(o) is not ndarray:
            raise TypeError("Output arguments type must be cupy.ndarray")
    if outs:
        kwargs["out"] = tuple(o._a for o in outs)
    label = f"cupy.{name}" if method == "__call__" else f"cupy.{name}.{method}"
    capture = _stream.capturing()
    if capture is not None:
        if method != "__call__":
            _stream.refuse_capture(label)
        if not outs:
            with np.errstate(all="ignore"):  # shape and dtype only: contents are garbage
                probe = u(*args, **kwargs)
            probes = probe if isinstance(probe, tuple) else (probe,)
            outs = tuple(_alloc(np.shape(p), np.asarray(p).dtype) for p in probes)
            kwargs["out"] = tuple(o._a for o in outs)
        fn_args, fn_kwargs = args, kwargs
        capture._capture.append(_stream.OpNode(label, lambda: u(*fn_args, **fn_kwargs)))
        return outs[0] if len(outs) == 1 else outs
    r = getattr(u, method)(*args, **kwargs)
    if outs:
        return outs[0] if len(outs) == 1 else outs
    if r is None:  # ufunc.at
        return None
    return _wrap(r, [], label, order="C")


class ufunc:
    """A NumPy ufunc behind CuPy's operand rules (``cupy._core._kernel.ufunc``)."""

    def __init__(self, u: np.ufunc):
        self._u = u
        self.__name__ = u.__name__
        self.nin, self.nout, self.nargs = u.nin, u.nout, u.nargs
        self.types = u.types
        self.__doc__ = u.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return apply_ufunc(self._u, "__call__", args, kwargs)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return apply_ufunc(self._u, "reduce", args, kwargs)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return apply_ufunc(self._u, "accumulate", args, kwargs)

    def reduceat(self, *args: Any, **kwargs: Any) -> Any:
        return apply_ufunc(self._u, "reduceat", args, kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return apply_ufunc(self._u, "outer", args, kwargs)

    def at(self, *args: Any, **kwargs: Any) -> Any:
        return apply_ufunc(self._u, "at", args, kwargs)

    def __repr__(self) -> str:
        return f"<ufunc '{self.__name__}'>"


ufunc.__module__ = "cupy._core._kernel"


# ---------------------------------------------------------------- indexing


def _index(key: Any, op: str) -> tuple[Any, bool, list[ndarray]]:
    """(the key for the NumPy view, whether it is an advanced index, stand-in index arrays).
    NumPy arrays and lists as indices are accepted (CuPy copies them to the device)."""
    items = key if isinstance(key, tuple) else (key,)
    out, adv, owners = [], False, []
    for s in items:
        if s is None or s is Ellipsis or isinstance(s, slice):
            out.append(s)
        elif type(s) is ndarray:
            owners.append(s)
            out.append(s._a)
            adv = True
        elif isinstance(s, bool | np.bool_):
            out.append(s)
            adv = True
        elif isinstance(s, int | np.integer):
            out.append(s)
        elif isinstance(s, np.ndarray | list | tuple):
            _stream.refuse_capture(f"{op} with a host index array (a host-to-device copy)")
            out.append(np.asarray(s) if not isinstance(s, np.ndarray) else s)
            adv = True
        else:
            raise IndexError(
                "only integers, slices (`:`), ellipsis (`...`), numpy.newaxis (`None`) and "
                "integer or boolean arrays are valid indices"
            )
    return tuple(out), adv, owners


def _basic_view(a: np.ndarray, key: tuple) -> np.ndarray:
    """``a[key]`` for a basic key, always an array view (a 0-d one for a full index)."""
    r = a[key]
    if not isinstance(r, np.ndarray):
        r = a[(*key, Ellipsis)]
    return r


# ---------------------------------------------------------------- the array


def _binary(name: str, reflected: bool = False):
    u = getattr(np, name)

    def op(self: ndarray, other: Any) -> Any:
        if type(other) is not ndarray and not isinstance(other, _SCALARS):
            if getattr(other, "__array_ufunc__", 0) is None:
                return NotImplemented
            if not isinstance(other, np.ndarray):
                raise TypeError(f"Unsupported type {type(other)}")
        pair = (other, self) if reflected else (self, other)
        return apply_ufunc(u, "__call__", pair, {})

    return op


def _inplace(name: str):
    u = getattr(np, name)

    def op(self: ndarray, other: Any) -> ndarray:
        apply_ufunc(u, "__call__", (self, other), {"out": self})
        return self

    return op


def _operators(ufunc: str) -> tuple:
    """(x op y, y op x, x op= y) of one ufunc, as cupy.ndarray's dunders."""
    return _binary(ufunc), _binary(ufunc, True), _inplace(ufunc)


def _unary(name: str):
    u = getattr(np, name)

    def op(self: ndarray) -> Any:
        return apply_ufunc(u, "__call__", (self,), {})

    return op


def _method(name: str, order: str = "K"):
    def m(self: ndarray, *args: Any, **kwargs: Any) -> Any:
        return call_numpy(getattr(self._a, name), f"cupy.ndarray.{name}", args, kwargs, order)

    m.__name__ = name
    return m


class ndarray:
    """``cupy.ndarray(shape, dtype=float, memptr=None, strides=None, order='C')``:
    uninitialised (0xFF-filled) guarded memory, or a view of ``memptr``'s memory."""

    __slots__ = ("__weakref__", "_a", "_base", "_mem")
    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self,
        shape: Any,
        dtype: Any = float,
        memptr: _memory.MemoryPointer | None = None,
        strides: Any = None,
        order: str = "C",
    ):
        shape = _shape_of(shape)
        if memptr is None and strides is None:
            new = _alloc(shape, dtype, order)
            self._a, self._mem, self._base = new._a, new._mem, None
            return
        dt = _check_dtype(np.dtype(dtype))
        if memptr is None:
            count = 1
            for s in shape:
                count *= s
            memptr = _memory.alloc(count * dt.itemsize)
        mem = memptr.mem
        view = np.ndarray(
            shape,
            dt,
            buffer=np.frombuffer(mem.buffer(), np.uint8),
            offset=memptr.ptr - mem.ptr,
            strides=strides,
            order=order,
        )
        self._a, self._mem, self._base = view, mem, None

    # ---- attributes

    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @shape.setter
    def shape(self, value: Any) -> None:
        v = self._a.view()
        try:
            v.shape = _shape_of(value)
        except AttributeError as exc:
            raise AttributeError(f"incompatible shape: {exc}") from None
        self._a = v

    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)

    @property
    def base(self) -> ndarray | None:
        return self._base

    @property
    def flags(self) -> Flags:
        f = self._a.flags
        return Flags(f.c_contiguous, f.f_contiguous, self._base is None)

    @property
    def data(self) -> _memory.MemoryPointer:
        """A ``MemoryPointer`` at this view's first element (``ptr`` 0 for an empty
        allocation, as CuPy's)."""
        mem = self._mem
        if not mem.ptr:
            return _memory.MemoryPointer(mem, 0)
        return _memory.MemoryPointer(mem, self._a.__array_interface__["data"][0] - mem.ptr)

    @property
    def device(self):
        from ..cuda.device import Device

        return Device(0)

    @property
    def T(self) -> ndarray:
        return _new(self._a.T, self._mem, self._root())

    @property
    def mT(self) -> ndarray:
        return _new(self._a.mT, self._mem, self._root())

    @property
    def real(self) -> ndarray:
        return _wrap(self._a.real, [self], "cupy.ndarray.real")

    @property
    def imag(self) -> ndarray:
        return _wrap(self._a.imag, [self], "cupy.ndarray.imag")

    @property
    def __cuda_array_interface__(self) -> dict:
        c = self._a.flags.c_contiguous
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "descr": self.dtype.descr,
            "data": (self.data.ptr, False),
            "version": 3,
            "strides": None if c else self.strides,
            "stream": 1,
        }

    def _root(self) -> ndarray:
        return self._base if self._base is not None else self

    # ---- conversion (CuPy: explicit only)

    def __array__(self, dtype: Any = None, copy: Any = None):
        raise TypeError(_IMPLICIT)

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True):
        """A NumPy copy on the host: a synchronization (refused while capturing), unless
        ``blocking=False`` with ``out``: then an asynchronous copy into ``out`` on the
        stream (CuPy >= 13; the caller orders it, e.g. with an event), recorded in a capture
        like any other stream work. Everything here has run, so the copy is immediate."""
        if not blocking and out is None:
            raise ValueError("stand-in: get(blocking=False) needs out= (a pinned host array)")
        if blocking:
            _stream._refuse_sync("cupy.ndarray.get()")
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            if out.shape != self.shape or out.dtype != self.dtype:
                raise ValueError("Shape or dtype mismatch")
            src = self._a
            _stream.record_or_run("device-to-host copy", lambda: np.copyto(out, src))
            return out
        return np.array(self._a, order="F" if order in ("F", "f") else "C", copy=True)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        """Copy a host array of the same shape and dtype in (a host-to-device copy)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        _stream.refuse_capture("cupy.ndarray.set (a host-to-device copy)")
        np.copyto(self._a, arr)

    def item(self) -> Any:
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self.get().item()

    def tolist(self) -> Any:
        return self.get().tolist()

    def tobytes(self, order: str = "C") -> bytes:
        return self.get().tobytes(order)

    def __int__(self) -> int:
        return int(self.get())

    def __float__(self) -> float:
        return float(self.get())

    def __complex__(self) -> complex:
        return complex(self.get())

    def __bool__(self) -> bool:
        if self.size == 0:
            warnings.warn(
                "The truth value of an empty array is ambiguous. Returning False, but in "
                "future this will result in an error. Use `array.size > 0` to check that "
                "an array is not empty.",
                DeprecationWarning,
                stacklevel=2,
            )
            return False
        if self.size == 1:
            return bool(self.get())
        raise ValueError(
            "The truth value of an array with more than one element is ambiguous. "
            "Use a.any() or a.all()"
        )

    def __repr__(self) -> str:
        if _stream.capturing() is not None:
            return f"<cupy.ndarray {self.shape} {self.dtype} (unreadable while capturing)>"
        return repr(self.get())

    def __str__(self) -> str:
        if _stream.capturing() is not None:
            return self.__repr__()
        return str(self.get())

    def __format__(self, spec: str) -> str:
        return format(self.get(), spec)

    def __reduce__(self):
        return (_from_host, (self.get(),))

    def __copy__(self) -> ndarray:
        return self.copy()

    def __deepcopy__(self, memo: dict) -> ndarray:
        return self.copy()

    # ---- NumPy protocols: numpy.f(cupy_array) runs cupy.f (core.pyx)

    def __array_ufunc__(self, u: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        for x in (*inputs, *kwargs.get("out", ())):
            if not (type(x) is ndarray or isinstance(x, (*_SCALARS, np.ndarray))):
                return NotImplemented
        return apply_ufunc(u, method, inputs, kwargs)

    def __array_function__(self, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        mod = _CUPY["module"]  # the stand-in package (sys.modules["cupy"] may be patched)
        for part in func.__module__.split(".")[1:]:
            mod = getattr(mod, part, None)
            if mod is None:
                return NotImplemented
        impl = getattr(mod, func.__name__, None)
        if impl is None or impl is func:
            return NotImplemented
        return impl(*args, **kwargs)

    # ---- container

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __getitem__(self, key: Any) -> ndarray:
        k, adv, _ = _index(key, "cupy.ndarray.__getitem__")
        if not adv:
            v = _basic_view(self._a, k)
            if v.size == 0 and self._a.size != 0:
                v = self._empty_view(v, k)
            return _new(v, self._mem, self._root())
        return _wrap(self._a[k], [self], "indexing with an array (a gather kernel)", "C")

    def _empty_view(self, v: np.ndarray, key: tuple) -> np.ndarray:
        """An empty basic view at CuPy's pointer: ``_view_getitem`` adds every slice start
        and integer index to the offset (NumPy leaves an empty slice at the base)."""
        a = self._a
        ell = a.ndim - sum(1 for s in key if s is not None and s is not Ellipsis)
        off, axis = 0, 0
        for s in key:
            if s is None:
                continue
            if s is Ellipsis:
                axis += ell
                continue
            if isinstance(s, slice):
                start = s.indices(a.shape[axis])[0]
                off += a.strides[axis] * start if start > 0 else 0
            else:
                i = operator.index(s)
                off += a.strides[axis] * (i + a.shape[axis] if i < 0 else i)
            axis += 1
        here = a.__array_interface__["data"][0] - self._mem.ptr
        buf = np.frombuffer(self._mem.buffer(), np.uint8)
        return np.ndarray(v.shape, v.dtype, buffer=buf, offset=here + off, strides=v.strides)

    def __setitem__(self, key: Any, value: Any) -> None:
        k, adv, _ = _index(key, "cupy.ndarray.__setitem__")
        if type(value) is ndarray:
            src = value._a
        elif adv:
            if isinstance(value, _SCALARS):
                src = value
            else:  # cupy.array(value): a host-to-device copy
                _stream.refuse_capture("__setitem__ from host data")
                src = np.asarray(value)
        else:  # _scatter_op: "Refuse assignment from CPU arrays" -> y.fill(value)
            src = _fill_value(value, self.dtype)
        if adv:
            _stream.refuse_capture("__setitem__ with an array index (a scatter kernel)")
            self._a[k] = src
            return
        dst = _basic_view(self._a, k)
        _stream.record_or_run("copy (__setitem__)", lambda: dst.__setitem__(Ellipsis, src))

    # ---- methods with CuPy's own semantics

    def fill(self, value: Any) -> None:
        """Every element ← ``value`` (a scalar, a 0-d NumPy array or a 0-d cupy.ndarray)."""
        a = self._a
        if type(value) is ndarray:
            if value.shape != ():
                raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
            src = value._a
            _stream.record_or_run("fill", lambda: a.__setitem__(Ellipsis, src))
            return
        v = _fill_value(value, self.dtype)
        _stream.record_or_run("fill", lambda: a.fill(v))

    def copy(self, order: str = "C") -> ndarray:
        if _stream.capturing() is not None:
            out = _alloc(self.shape, self.dtype, "F" if order in ("F", "f") else "C")
            src, dst = self._a, out._a
            _stream.record_or_run("copy", lambda: np.copyto(dst, src))
            return out
        return _fresh(self._a.copy(order=order), "copy", "K")

    def astype(
        self, dtype: Any, order: str = "K", casting: Any = None, subok: Any = None, copy=True
    ) -> ndarray:
        dt = np.dtype(dtype)
        if not copy and dt == self.dtype:
            f = self._a.flags
            if (
                order in ("K", "A")
                or (order == "C" and f.c_contiguous)
                or (order == "F" and f.f_contiguous)
            ):
                return self
        kw = {} if casting is None else {"casting": casting}
        if _stream.capturing() is not None:  # an elementwise copy kernel: recorded
            probe = self._a.astype(dt, order=order, **kw)
            out = _alloc(self.shape, dt, "F" if probe.flags.fnc else "C")
            src, dst = self._a, out._a
            _stream.record_or_run("astype", lambda: np.copyto(dst, src, casting="unsafe"))
            return out
        return _fresh(self._a.astype(dt, order=order, **kw), "cupy.ndarray.astype", "K")

    def view(self, dtype: Any = None, array_class: Any = None) -> ndarray:
        v = self._a.view() if dtype is None else self._a.view(dtype)
        return _new(v, self._mem, self._root())

    def reshape(self, *shape: Any, order: str = "C", copy: Any = None) -> ndarray:
        if len(shape) == 1 and not isinstance(shape[0], int | np.integer):
            shape = shape[0]
        return _wrap(self._a.reshape(shape, order=order), [self], "cupy.ndarray.reshape")

    def ravel(self, order: str = "C") -> ndarray:
        return _wrap(self._a.ravel(order), [self], "cupy.ndarray.ravel")

    def flatten(self, order: str = "C") -> ndarray:
        return _fresh(self._a.flatten(order), "cupy.ndarray.flatten", "K")

    def transpose(self, *axes: Any) -> ndarray:
        return _new(self._a.transpose(*axes), self._mem, self._root())

    def swapaxes(self, a1: int, a2: int) -> ndarray:
        return _new(self._a.swapaxes(a1, a2), self._mem, self._root())

    def squeeze(self, axis: Any = None) -> ndarray:
        return _new(self._a.squeeze(axis), self._mem, self._root())

    def dot(self, b: ndarray, out: ndarray | None = None) -> ndarray:
        kwargs = {} if out is None else {"out": out}
        return call_numpy(np.dot, "cupy.dot", (self, b), kwargs, "C")

    def ptp(self, *args: Any, **kwargs: Any) -> Any:
        return call_numpy(np.ptp, "cupy.ndarray.ptp", (self, *args), kwargs)

    # ---- operators (core.pyx: cupy's ufuncs; a numpy.ndarray operand is a TypeError)

    __add__, __radd__, __iadd__ = _operators("add")
    __sub__, __rsub__, __isub__ = _operators("subtract")
    __mul__, __rmul__, __imul__ = _operators("multiply")
    __truediv__, __rtruediv__, __itruediv__ = _operators("true_divide")
    __floordiv__, __rfloordiv__, __ifloordiv__ = _operators("floor_divide")
    __mod__, __rmod__, __imod__ = _operators("remainder")
    __pow__, __rpow__, __ipow__ = _operators("power")
    __lshift__, __rlshift__, __ilshift__ = _operators("left_shift")
    __rshift__, __rrshift__, __irshift__ = _operators("right_shift")
    __and__, __rand__, __iand__ = _operators("bitwise_and")
    __or__, __ror__, __ior__ = _operators("bitwise_or")
    __xor__, __rxor__, __ixor__ = _operators("bitwise_xor")
    __matmul__, __rmatmul__ = _binary("matmul"), _binary("matmul", True)  # no __imatmul__
    __lt__, __le__ = _binary("less"), _binary("less_equal")
    __gt__, __ge__ = _binary("greater"), _binary("greater_equal")
    __eq__, __ne__ = _binary("equal"), _binary("not_equal")  # type: ignore[assignment]
    __neg__, __pos__ = _unary("negative"), _unary("positive")
    __abs__, __invert__ = _unary("absolute"), _unary("invert")

    def __divmod__(self, other: Any) -> Any:
        return apply_ufunc(np.divmod, "__call__", (self, other), {})

    def __rdivmod__(self, other: Any) -> Any:
        return apply_ufunc(np.divmod, "__call__", (other, self), {})


# Methods that compute through NumPy and wrap their result (the rest of cupy.ndarray's
# method list in core.pyx; NumPy-only ones such as ctypes or tofile are left out).
for _name in (
    "all",
    "any",
    "argmax",
    "argmin",
    "argpartition",
    "argsort",
    "choose",
    "clip",
    "compress",
    "conj",
    "conjugate",
    "cumprod",
    "cumsum",
    "diagonal",
    "max",
    "mean",
    "min",
    "nonzero",
    "partition",
    "prod",
    "put",
    "repeat",
    "round",
    "searchsorted",
    "sort",
    "std",
    "sum",
    "take",
    "trace",
    "var",
):
    setattr(ndarray, _name, _method(_name))
del _name

ndarray.__module__ = "cupy"


def _fill_value(value: Any, dtype: np.dtype) -> Any:
    """``fill``'s value rule (core.pyx): ``numpy.asarray(value, dtype)`` must be 0-d."""
    if isinstance(value, ndarray):
        raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
    v = np.asarray(value, dtype=dtype)
    if v.shape != ():
        raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
    return v[()]


def _from_host(host: np.ndarray, dtype: Any = None, order: str = "K") -> ndarray:
    """A host array (or nested lists/scalars) copied into guarded memory (a host-to-device
    copy: refused while capturing)."""
    _stream.refuse_capture("a host-to-device copy (cupy.asarray/cupy.array of host data)")
    a = np.asarray(host, dtype=dtype)
    _check_dtype(a.dtype)
    keep_f = order in ("F", "f") or (
        order in ("K", "A") and a.flags.f_contiguous and not a.flags.c_contiguous
    )
    out = _alloc(a.shape, a.dtype, "F" if keep_f else "C")
    np.copyto(out._a, a)
    return out


def _has_device_array(x: Any) -> bool:
    if type(x) is ndarray:
        return True
    if isinstance(x, list | tuple):
        return any(_has_device_array(v) for v in x)
    return False


def array(
    obj: Any,
    dtype: Any = None,
    copy: Any = True,
    order: str | None = "K",
    subok: bool = False,
    ndmin: int = 0,
    *,
    blocking: bool = False,
) -> ndarray:
    """``cupy.array`` (core.pyx ``array``): from a cupy.ndarray (``astype`` with ``copy``),
    from nested sequences of cupy arrays (concatenated on the device), or from host data."""
    if subok:
        raise NotImplementedError
    order = "K" if order is None else order
    if type(obj) is ndarray:
        a = obj.astype(obj.dtype if dtype is None else dtype, order=order, copy=bool(copy))
        if ndmin > a.ndim:
            a = a.view() if a is obj else a
            a.shape = (1,) * (ndmin - a.ndim) + a.shape
        return a
    if isinstance(obj, list | tuple) and _has_device_array(obj):
        owners: list[ndarray] = []
        host = np.array(_unwrap_nested(obj, owners), dtype=dtype)
        a = _fresh(host, "cupy.array of device arrays")
    else:
        a = _from_host(obj, dtype, order)
    if ndmin > a.ndim:
        a.shape = (1,) * (ndmin - a.ndim) + a.shape
    return a


def _unwrap_nested(x: Any, owners: list[ndarray]) -> Any:
    if type(x) is ndarray:
        owners.append(x)
        return x._a
    if isinstance(x, list | tuple):
        return [_unwrap_nested(v, owners) for v in x]
    if isinstance(x, np.ndarray):  # core.pyx: nested NumPy and CuPy arrays do not mix
        raise TypeError("Nested array of numpy.ndarray and cupy.ndarray is not supported")
    return x


def asarray(
    a: Any, dtype: Any = None, order: str | None = None, *, copy: Any = None, blocking: bool = False
) -> ndarray:
    return array(a, dtype, False if copy is None else copy, order, blocking=blocking)


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    """core.pyx ``ascontiguousarray(_ndarray_base a, dtype=None)``: a cupy.ndarray only."""
    if type(a) is not ndarray:
        raise TypeError(
            f"Argument 'a' has incorrect type (expected cupy._core.core._ndarray_base, got "
            f"{type(a).__name__})"
        )
    dt = a.dtype if dtype is None else np.dtype(dtype)
    if dt == a.dtype and a._a.flags.c_contiguous:
        return a
    return a.astype(dt, order="C")
