"""Reading the tensor table (``gpugd._tensor_table``) inside Numba kernels: the CPU mirror
of the CUDA ``apply_table``. ``entry(table, row, t, lo, n, like)`` turns a table entry back
into a 1-D array of ``n`` elements from element ``lo``; ``like`` (a 1-element array of the
dtype) stands in for an unused state (address 0). ``entry_or_none`` reads an optional row
(the half-precision parameters beside fp32 master weights): None when ``like`` is None.
"""

from __future__ import annotations

from numba import carray, njit, types
from numba.extending import intrinsic, overload

from .._tensor_table import OUT_ROW, SIZE_ROW

__all__ = ["OUT_ROW", "SIZE_ROW", "array_address", "entry", "entry_or_none"]


@njit(cache=True, nogil=True)
def array_address(a):
    """The data pointer of a NumPy array, read from Numba's view of the array struct:
    ~0.3 µs against ~1.7 for ``__array_interface__`` (which builds a dict), and a list
    update reads four per tensor. For the dtypes Numba types (``_validate.address``)."""
    return a.ctypes.data


@intrinsic
def _as_pointer(typingctx, addr, like):
    """int64 address → pointer to ``like``'s dtype (Numba has no cast for this)."""
    sig = types.CPointer(like.dtype)(types.int64, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_data_type(like.dtype).as_pointer())

    return sig, codegen


@njit(inline="always")
def entry(table, row, t, lo, n, like):
    """Elements [lo, lo + n) of the array in ``table[row, t]``; ``like`` when that is 0."""
    addr = table[row, t]
    if addr == 0:
        return like
    return carray(_as_pointer(addr + lo * like.itemsize, like), n)


def entry_or_none(table, row, t, lo, n, like):
    """``entry`` for an optional row: None when ``like`` is None (resolved at compile time)."""


@overload(entry_or_none, inline="always")
def _entry_or_none(table, row, t, lo, n, like):
    if isinstance(like, types.NoneType):
        return lambda table, row, t, lo, n, like: None
    return lambda table, row, t, lo, n, like: entry(table, row, t, lo, n, like)
