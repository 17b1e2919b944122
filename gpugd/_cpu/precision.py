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

from .._validate import dtype_name

HALF_VIEWS = {"float16": np.int16, "bfloat16": np.uint16}


def kernel_view(a: np.ndarray) -> np.ndarray:
    """The array as the kernels take it: half formats as their integer bit view."""
    view = HALF_VIEWS.get(dtype_name(a.dtype))
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


# bfloat16 and the hash in LLVM IR with 32-bit integers throughout: written in Numba, the
# uint32 arithmetic is widened to 64 bits, which halves the vector lanes (the bf16 Adam
# step ran at half the fp32 speed per core in cache).
_I16, _I32, _F32 = cgutils.ir.IntType(16), cgutils.ir.IntType(32), cgutils.ir.FloatType()


def _c32(v: int):
    return cgutils.ir.Constant(_I32, v)


@intrinsic
def bf16_to_f32(typingctx, b):
    """bfloat16 bits (uint16) → float32: the bits become the upper half."""

    def codegen(context, builder, signature, args):
        w = builder.shl(builder.zext(args[0], _I32), _c32(16))
        return builder.bitcast(w, _F32)

    return types.float32(b), codegen


def _round_bf16(builder, x, add):
    """(bits(x) + add) >> 16 as 16 bits; NaN x gives its quiet NaN (sign, payload kept)."""
    b = builder.bitcast(x, _I32)
    r = builder.lshr(builder.add(b, add), _c32(16))
    q = builder.or_(builder.lshr(b, _c32(16)), _c32(0x0040))
    nan = builder.fcmp_unordered("uno", x, x)
    return builder.trunc(builder.select(nan, q, r), _I16)


@intrinsic
def f32_to_bf16(typingctx, x):
    """Round-to-nearest-even: add 0x7FFF plus the lowest kept bit, drop 16 bits."""

    def codegen(context, builder, signature, args):
        b = builder.bitcast(args[0], _I32)
        lsb = builder.and_(builder.lshr(b, _c32(16)), _c32(1))
        return _round_bf16(builder, args[0], builder.add(lsb, _c32(0x7FFF)))

    return types.uint16(types.float32), codegen


@intrinsic
def f32_to_bf16_stochastic(typingctx, x, rand16):
    """Round up with probability (dropped bits)/2^16: add 16 random bits, drop 16 bits."""

    def codegen(context, builder, signature, args):
        r = args[1]
        r = builder.trunc(r, _I32) if r.type.width > 32 else builder.zext(r, _I32)
        return _round_bf16(builder, args[0], r)

    return types.uint16(types.float32, rand16), codegen


@intrinsic
def mix32(typingctx, key, index):
    """32 well-mixed bits of (key, integer index): a 32-bit integer finalizer ("lowbias32")
    of the index's two halves folded into the key. Mirrors precision.cuh's mix32."""

    def codegen(context, builder, signature, args):
        k, i = args
        k = builder.trunc(k, _I32) if k.type.width > 32 else builder.zext(k, _I32)
        i64 = builder.sext(i, cgutils.ir.IntType(64)) if i.type.width < 64 else i
        lo = builder.trunc(i64, _I32)
        hi = builder.trunc(builder.lshr(i64, cgutils.ir.Constant(i64.type, 32)), _I32)
        z = builder.xor(builder.mul(lo, _c32(0x9E3779B9)), k)
        z = builder.xor(z, builder.mul(hi, _c32(0x85EBCA6B)))
        z = builder.xor(z, builder.lshr(z, _c32(16)))
        z = builder.mul(z, _c32(0x7FEB352D))
        z = builder.xor(z, builder.lshr(z, _c32(15)))
        z = builder.mul(z, _c32(0x846CA68B))
        return builder.xor(z, builder.lshr(z, _c32(16)))

    return types.uint32(key, index), codegen


@njit(inline="always")
def hash32(key, index):
    """16 uniform random bits from (key, element index)."""
    return mix32(key, index) & np.uint32(0xFFFF)


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
