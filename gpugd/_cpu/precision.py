"""Half-precision storage for the Numba kernels: load as float32, store with rounding.

Numba has neither float16 nor bfloat16, so half-precision arrays reach the kernels as
integer views of their bits, and the view's type says the format at compile time:

    float16  → int16 view    (IEEE binary16; LLVM ``fpext``/``fptrunc``, F16C on x86)
    bfloat16 → uint16 view   (the upper half of a float32; plain integer arithmetic)

``ld(a, i)`` gives element i as a float (float32 for both half formats, the element
itself for float32/float64 arrays); ``st(a, i, x, rnd)`` stores x, rounded to the array's
format: round-to-nearest-even when ``rnd`` is None, stochastic rounding (bfloat16 only)
when ``rnd`` is a (key, base) pair: the 16 discarded bits are compared with 16 random bits
of a counter-based hash of key and element index base + i, so E[round(x)] = x and the
same key gives the same bits on every run. NaN stays NaN (quiet), ±Inf stays ±Inf,
float32 values beyond bfloat16's range round to ±Inf as IEEE rounding does.
``put(out, i, x, rnd)`` is ``st`` into an optional array: nothing when ``out`` is None.
All three are resolved at compile time, so a float32 kernel compiles to exactly the code
it had before, and every branch here is a select that vectorizes.
Mirrors ``kernels/precision.cuh``.

Numba's on-disk cache is keyed by the file of the function it compiled, not by the files of
the functions inlined into it: after editing this file, delete ``gpugd/_cpu/__pycache__``
(or point ``NUMBA_CACHE_DIR`` at a fresh folder) or the optimizer kernels keep the old code.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

HALF_VIEWS = {"float16": np.int16, "bfloat16": np.uint16}


def kernel_view(a: np.ndarray) -> np.ndarray:
    """The array as the kernels take it: half formats as their integer bit view."""
    view = HALF_VIEWS.get(a.dtype.name)
    return a if view is None else a.view(view)


@intrinsic
def _f16_bits_to_f32(typingctx, bits):
    def codegen(context, builder, signature, args):
        h = builder.bitcast(args[0], cgutils.ir.HalfType())
        return builder.fpext(h, cgutils.ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _f32_to_f16_bits(typingctx, x):
    """IEEE round-to-nearest-even (LLVM's ``fptrunc``), overflow to ±Inf, NaN kept."""

    def codegen(context, builder, signature, args):
        h = builder.fptrunc(args[0], cgutils.ir.HalfType())
        return builder.bitcast(h, cgutils.ir.IntType(16))

    return types.int16(x), codegen


@intrinsic
def _f32_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], cgutils.ir.IntType(32))

    return types.uint32(x), codegen


@intrinsic
def _bits_f32(typingctx, b):
    """The float32 whose bits are the low 32 bits of integer ``b``."""

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, cgutils.ir.IntType(32))
        return builder.bitcast(v, cgutils.ir.FloatType())

    return types.float32(b), codegen


@njit(inline="always")
def bf16_to_f32(b):
    return _bits_f32(np.uint32(b) << np.uint32(16))


@njit(inline="always")
def _nan_or(x, b, r):
    """``r`` as 16 bits, or for NaN x its quiet NaN (sign and payload kept); a bit select,
    no branch."""
    q = (b >> np.uint32(16)) | np.uint32(0x0040)
    sel = np.uint32(0) - np.uint32(x != x)  # all ones for NaN
    return np.uint16((q & sel) | (r & ~sel))


@njit(inline="always")
def f32_to_bf16(x):
    """Round-to-nearest-even: add 0x7FFF plus the lowest kept bit, drop 16 bits."""
    b = _f32_bits(np.float32(x))
    r = (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return _nan_or(x, b, r)


@njit(inline="always")
def mix32(key, index):
    """32 well-mixed bits of (key, integer index): a 32-bit integer finalizer ("lowbias32")
    of the index's two halves folded into the key."""
    lo = np.uint32(index & 0xFFFFFFFF)
    hi = np.uint32((index >> 32) & 0xFFFFFFFF)
    z = np.uint32(lo * np.uint32(0x9E3779B9)) ^ np.uint32(key)
    z = np.uint32(z ^ np.uint32(hi * np.uint32(0x85EBCA6B)))
    z = np.uint32(z ^ (z >> np.uint32(16)))
    z = np.uint32(z * np.uint32(0x7FEB352D))
    z = np.uint32(z ^ (z >> np.uint32(15)))
    z = np.uint32(z * np.uint32(0x846CA68B))
    return np.uint32(z ^ (z >> np.uint32(16)))


@njit(inline="always")
def hash32(key, index):
    """16 uniform random bits from (key, element index)."""
    return mix32(key, index) & np.uint32(0xFFFF)


@njit(inline="always")
def f32_to_bf16_stochastic(x, rand16):
    """Round up with probability (dropped bits)/2^16: add 16 random bits, drop 16 bits."""
    b = _f32_bits(np.float32(x))
    return _nan_or(x, b, (b + rand16) >> np.uint32(16))


def ld(a, i):
    """Element i of ``a`` as a float (float32 for half formats)."""


def st(a, i, x, rnd):
    """a[i] = x rounded to a's format (``rnd``: None or (key, base) for stochastic)."""


def put(out, i, x, rnd):
    """``st`` into ``out`` unless it is None."""


@overload(ld, inline="always")
def _ld(a, i):
    if not isinstance(a, types.Array):
        return None
    if a.dtype == types.int16:
        return lambda a, i: _f16_bits_to_f32(a[i])
    if a.dtype == types.uint16:
        return lambda a, i: bf16_to_f32(a[i])
    return lambda a, i: a[i]


@overload(st, inline="always")
def _st(a, i, x, rnd):
    if not isinstance(a, types.Array):
        return None
    if a.dtype == types.int16:

        def st_f16(a, i, x, rnd):
            a[i] = _f32_to_f16_bits(np.float32(x))

        return st_f16
    if a.dtype == types.uint16:
        if isinstance(rnd, types.NoneType | types.Omitted) or rnd is None:

            def st_bf16(a, i, x, rnd):
                a[i] = f32_to_bf16(x)

            return st_bf16

        def st_bf16_sr(a, i, x, rnd):
            a[i] = f32_to_bf16_stochastic(x, hash32(rnd[0], rnd[1] + i))

        return st_bf16_sr

    def st_float(a, i, x, rnd):
        a[i] = x

    return st_float


@overload(put, inline="always")
def _put(out, i, x, rnd):
    if isinstance(out, types.NoneType):
        return lambda out, i, x, rnd: None
    return lambda out, i, x, rnd: st(out, i, x, rnd)
