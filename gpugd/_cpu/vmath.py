"""Vectorizable exp and expm1 for the Numba kernels (float32 and float64), and float32 Φ
and log1p on [0, 1].

Numba lowers ``np.exp`` to a scalar libm call unless Intel's SVML is present, which keeps
the loops around it from vectorizing (an activation backward ran at ~1 GB/s). These are
Cephes' algorithms in plain arithmetic: range reduction x = k·ln2 + r, a polynomial (fp32)
or Padé form (fp64) for e^r, and 2^k assembled from its bits by an LLVM ``bitcast``, so
LLVM vectorizes the whole loop. Error bounds in ulps of the correctly rounded result
(tests/test_vmath_mpmath.py, against mpmath over a sweep of every float32/float64 bit
pattern and the edges): exp float32 ≤ 1, float64 ≤ 1.5; expm1 float32 ≤ 2, float64 ≤ 1.5;
float32 Φ (GELU's) ≤ 6; float32 log1p(e), 0 ≤ e ≤ 1 (softplus'), ≤ 1.5 (an atanh series).
Edges are the correctly rounded values, bit for bit: +Inf past ln(max), subnormal results
down to half the least subnormal (then 0), expm1(±0) = ±0, exp(−Inf) = 0, NaN kept. Chosen
over a table-driven exp because a table lookup is a gather (slow or scalar on the CPUs
here) and Cephes' polynomial needs only FMAs and one bit shift.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

_LOG2E = 1.4426950408889634


@intrinsic
def _pow2(typingctx, k, like):
    """2^k for an integral-valued float ``k`` in the normal range, built from its bits."""
    ftype = like

    def codegen(context, builder, signature, args):
        kv = args[0]
        if ftype == types.float32:
            ity, bias, shift = cgutils.ir.IntType(32), 127, 23
        else:
            ity, bias, shift = cgutils.ir.IntType(64), 1023, 52
        ki = builder.fptosi(kv, ity)
        bits = builder.shl(
            builder.add(ki, cgutils.ir.Constant(ity, bias)), cgutils.ir.Constant(ity, shift)
        )
        return builder.bitcast(bits, context.get_value_type(ftype))

    return ftype(k, like), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a·b + c with one rounding (``llvm.fma``: one instruction with FMA, vectorizable).
    Contraction alone cannot be relied on for an exact product's error term: LLVM merges
    the two x·x of ``x·x − (x·x)`` first, and the difference is then 0."""
    if not (a == b == c and a in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(a)
        fn = cgutils.get_or_insert_function(
            builder.module,
            cgutils.ir.FunctionType(ty, [ty, ty, ty]),
            f"llvm.fma.{'f32' if a == types.float32 else 'f64'}",
        )
        return builder.call(fn, args)

    return a(a, b, c), codegen


@intrinsic
def mul_rn(typingctx, a, b):
    """a·b rounded once and never contracted into a following add (an exact-sum step such
    as Fast2Sum needs the rounded product, not a fused one). Numba's fastmath pass flags
    only unflagged instructions, so this one carries ``arcp``, which has no effect on ·."""
    if not (a == b and a in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fmul(args[0], args[1], flags=("arcp",))

    return a(a, b), codegen


@intrinsic
def opaque(typingctx, x):
    """x itself, through LLVM's ``freeze`` (no instruction is emitted). A loop that writes
    its result over an input at the same index, with one branch giving that input back
    (relu's dy where x > 0), otherwise has that store dropped as redundant, and the loop
    vectorizes with masked stores (``vmaskmovps``): microcoded on AMD Zen 3, where relu
    backward in place ran at 0.6× its out-of-place speed. A frozen load is not the loaded
    value to LLVM, so every store stays (``activations._map2``/``_map3``)."""
    if x not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        frozen = cgutils.ir.Instruction(builder.block, args[0].type, "freeze", [args[0]])
        builder._insert(frozen)
        return frozen

    return x(x), codegen


# Elements per block of the streaming loops (``stream``): an inner loop of fixed length
# that vectorizes; the prefetches run once per block, PREFETCH_BYTES ahead of it.
BLOCK = 64
PREFETCH_BYTES = 4096


@intrinsic
def prefetch_block(typingctx, arr, i, write):
    """Prefetch the cache lines of ``arr[i + d : i + d + BLOCK]``, d = PREFETCH_BYTES ahead
    (``llvm.prefetch``, one per 64-byte line; ``write`` a literal bool: prefetch for a store).
    A prefetch never faults, so lines past the end are harmless. On the Intel Xeon VMs the
    hardware prefetchers alone left an in-place loop with math between its load and its store
    at half the speed of the same loop out of place (silu backward, 2^24 fp32: 2.4 against
    1.1 ns/element on one core); with these it runs at least as fast as the out-of-place.
    Whether a loop prefetches is its caller's choice (``activations._prefetch``: on AMD Zen
    only in place)."""
    if not isinstance(write, types.BooleanLiteral):
        return None
    rw = int(write.literal_value)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        item = context.get_abi_sizeof(context.get_data_type(aty.dtype))
        i8p = cgutils.ir.IntType(8).as_pointer()
        i32 = cgutils.ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module,
            cgutils.ir.FunctionType(cgutils.ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0i8",
        )
        base = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        for off in range(PREFETCH_BYTES, PREFETCH_BYTES + BLOCK * item, 64):
            ptr = builder.gep(base, [cgutils.ir.Constant(cgutils.ir.IntType(64), off)])
            # read/write, locality 3 (keep in all levels), data cache
            consts = [cgutils.ir.Constant(i32, c) for c in (rw, 3, 1)]
            builder.call(fn, [ptr, *consts])
        return context.get_dummy_value()

    return types.void(arr, i, write), codegen


class Consts32(NamedTuple):
    """The float32 math's constants, handed to a kernel as an argument (``K32``): to LLVM
    they are then runtime values, broadcast into vector registers once, before the loop,
    and spilled there when registers run short. As literals, Numba's large code model
    re-materializes each one from the constant pool in every iteration instead (a
    ``movabs`` of its address, then a ``vbroadcastss``): gelu backward's vector loop ran
    180 instructions, 26 of them ``movabs`` (2.28 ns/element on one core, AMD EPYC Zen 3;
    ``benchmarks/experiments/hoisted_consts.py``). Every function here takes them as ``c``;
    the float64 paths keep theirs literal and ignore it."""

    log2e: np.float32
    shifter: np.float32  # 1.5·2^23: (t + shifter) − shifter rounds |t| < 2^22 to an integer
    ln2_hi: np.float32  # ln 2 = ln2_hi + ln2_lo, ln2_hi with 9 significant bits (k·ln2_hi exact)
    ln2_lo: np.float32
    # Cephes expf's polynomial for (e^r − 1 − r)/r², highest power first (flat fields: a
    # tuple inside would not pass into a prange's body)
    exp_p0: np.float32
    exp_p1: np.float32
    exp_p2: np.float32
    exp_p3: np.float32
    exp_p4: np.float32
    exp_p5: np.float32
    exp_hi: np.float32  # ln of the largest float32
    exp_lo: np.float32  # ln of half the least subnormal: e^x rounds to 0 below it
    pow2_bias: np.float32  # 64 and 2^−64: 2^k as 2^(k+64)·2^−64 (``_exp_neg32``)
    pow2_unbias: np.float32
    rsqrt2: np.float32  # 1/√2
    erfc_t_min: np.float32  # t = 1/(1 + z/2) clamped into the fit of _ERFC_G (z ≤ 11.3)
    erfc_x_max: np.float32  # |x| clamped for e^(−x²/2): e^(−128) is 0 in float32
    erfc_g0: np.float32  # _ERFC_G, highest power first
    erfc_g1: np.float32
    erfc_g2: np.float32
    erfc_g3: np.float32
    erfc_g4: np.float32
    erfc_g5: np.float32
    erfc_g6: np.float32
    erfc_g7: np.float32
    erfc_g8: np.float32
    erfc_g9: np.float32
    one: np.float32
    half: np.float32
    two: np.float32
    sqrt2: np.float32  # √2 rounded: where log1p_unit halves 1 + e (either side is exact)
    log_q1: np.float32  # 1/3, 1/5, 1/7, 1/9: 2·atanh(s) = 2s·(1 + s²/3 + s⁴/5 + …)
    log_q2: np.float32
    log_q3: np.float32
    log_q4: np.float32


@njit(error_model="numpy", fastmath={"contract"})
def _round32(t, c):
    # round to nearest by adding and removing 1.5·2^23 (np.floor would be a libm call
    # that stops the loop from vectorizing); |t| < 2^22
    return (t + c.shifter) - c.shifter


@njit(error_model="numpy", fastmath={"contract"})
def _round64(t):
    return (t + 6755399441055744.0) - 6755399441055744.0  # 1.5·2^52, as _round32


@njit(error_model="numpy", fastmath={"contract"})
def _reduced32(xc, c):
    """(e^r, k) with xc = k·ln2 + r, |r| ≤ ln2/2: Cephes expf's reduction and polynomial."""
    k = _round32(xc * c.log2e, c)
    r = xc - k * c.ln2_hi - k * c.ln2_lo
    p = c.exp_p0
    p = p * r + c.exp_p1
    p = p * r + c.exp_p2
    p = p * r + c.exp_p3
    p = p * r + c.exp_p4
    p = p * r + c.exp_p5
    return p * r * r + r + c.one, k


@njit(error_model="numpy", fastmath={"contract"})
def _exp32(x, c):
    # Cephes expf on [-103.97, 88.72]: results below the normal range come out subnormal,
    # rounded once (libm's and torch's values); 0 below ln of half the smallest subnormal
    hi, lo = c.exp_hi, c.exp_lo
    xc = hi if x > hi else (lo if x < lo else x)
    er, k = _reduced32(xc, c)
    # 2^k as 2^j·2^(k−j), j = round(k/2): both factors normal over the range (k: −150..128);
    # the product's last factor rounds a subnormal result once
    k1 = _round32(k * c.half, c)
    e = er * _pow2(k1, xc) * _pow2(k - k1, xc)
    e = np.float32(np.inf) if x > hi else e
    e = np.float32(0.0) if x < lo else e
    return x if x != x else e


@njit(error_model="numpy", fastmath={"contract"})
def _exp_neg32(x, c):
    # _exp32 for x ≤ 0: 2^k (k: −150..0) as 2^(k+64)·2^−64, the first factor normal, so
    # e^r·2^(k+64) is exact and ·2^−64 rounds a subnormal result once, as _exp32 does;
    # no overflow side (x > 0 gives e^0's value: the caller selects it away)
    lo = c.exp_lo
    xc = np.float32(0.0) if x > 0 else (lo if x < lo else x)
    er, k = _reduced32(xc, c)
    e = er * _pow2(k + c.pow2_bias, xc) * c.pow2_unbias
    e = np.float32(0.0) if x < lo else e
    return x if x != x else e


@njit(error_model="numpy", fastmath={"contract"})
def _reduced64(xc):
    """(e^r, k): Cephes exp's reduction and Padé form."""
    k = _round64(xc * _LOG2E)
    r = xc - k * 6.93145751953125e-1 - k * 1.42860682030941723212e-6
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 1.0)
    qx = (
        (3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
        + 2.27265548208155028766e-1
    ) * rr + 2.0
    return 1.0 + 2.0 * px / (qx - px), k


@njit(error_model="numpy", fastmath={"contract"})
def _exp64(x):
    # Cephes exp: Padé form on [-745.13, 709.78] (subnormal results as in _exp32)
    hi, lo = 709.782712893384, -745.1332191019412
    xc = hi if x > hi else (lo if x < lo else x)
    er, k = _reduced64(xc)
    k1 = _round64(k * 0.5)  # 2^k in two normal factors, as in _exp32 (k is −1075..1024)
    e = er * _pow2(k1, xc) * _pow2(k - k1, xc)
    e = np.inf if x > hi else e
    e = 0.0 if x < lo else e
    return x if x != x else e


@njit(error_model="numpy", fastmath={"contract"})
def _exp_neg64(x):
    # _exp64 for x ≤ 0, 2^k (k: −1075..0) as 2^(k+64)·2^−64 (as _exp_neg32)
    lo = -745.1332191019412
    xc = 0.0 if x > 0 else (lo if x < lo else x)
    er, k = _reduced64(xc)
    e = er * _pow2(k + 64.0, xc) * 5.421010862427522e-20
    e = 0.0 if x < lo else e
    return x if x != x else e


def vexp(x, c):
    """e^x (vectorizable inside Numba loops; ``c``: ``K32``, see ``Consts32``)."""
    return math.exp(x)


@overload(vexp)
def _vexp(x, c):
    if x == types.float32:
        return lambda x, c: _exp32(x, c)
    if x == types.float64:
        return lambda x, c: _exp64(x)
    return None


def vexp_neg(x, c):
    """e^x for x ≤ 0 (NaN kept; x > 0 gives a wrong value, for a select to discard):
    ``vexp``'s values bit for bit, ~30% fewer operations (no overflow side, 2^k in one
    factor). The exponentials of the stable activation forms are all of this kind."""
    return math.exp(x)


@overload(vexp_neg)
def _vexp_neg(x, c):
    if x == types.float32:
        return lambda x, c: _exp_neg32(x, c)
    if x == types.float64:
        return lambda x, c: _exp_neg64(x)
    return None


def vexpm1(x, c):
    """e^x − 1, accurate near 0 (vectorizable inside Numba loops)."""
    return math.expm1(x)


@overload(vexpm1, inline="always")
def _vexpm1(x, c):
    # |x| < 1/2: the Taylor series Σ x^k/k! by Horner (9 / 17 terms reach
    # 1 ulp); beyond, e^x − 1 loses nothing. Both are computed (the series on x clamped to
    # ±1/2, so it stays finite) and one selected: no branch, so the loop around it
    # vectorizes; inlined into the caller's IR, since LLVM finds it too big to inline. (A
    # 0/1-weight blend, w·s + (1 − w)·e, turned −0.0 into +0.0: expm1(−0) is −0.)
    if x == types.float32:

        def f32(x, c):
            h = c.half
            xs = min(max(x, -h), h)
            s = xs * (
                np.float32(1.0)
                + xs
                * (
                    np.float32(0.5)
                    + xs
                    * (
                        np.float32(0.16666666666666666)
                        + xs
                        * (
                            np.float32(0.041666666666666664)
                            + xs
                            * (
                                np.float32(0.008333333333333333)
                                + xs
                                * (
                                    np.float32(0.001388888888888889)
                                    + xs
                                    * (
                                        np.float32(0.0001984126984126984)
                                        + xs
                                        * (
                                            np.float32(2.48015873015873e-05)
                                            + xs * (np.float32(2.7557319223985893e-06))
                                        )
                                    )
                                )
                            )
                        )
                    )
                )
            )
            e = _exp32(x, c) - c.one
            return s if abs(x) < h else e  # a select of two values: no branch

        return f32
    if x == types.float64:

        def f64(x, c):
            xs = min(max(x, -0.5), 0.5)
            s = xs * (
                1.0
                + xs
                * (
                    0.5
                    + xs
                    * (
                        0.16666666666666666
                        + xs
                        * (
                            0.041666666666666664
                            + xs
                            * (
                                0.008333333333333333
                                + xs
                                * (
                                    0.001388888888888889
                                    + xs
                                    * (
                                        0.0001984126984126984
                                        + xs
                                        * (
                                            2.48015873015873e-05
                                            + xs
                                            * (
                                                2.7557319223985893e-06
                                                + xs
                                                * (
                                                    2.755731922398589e-07
                                                    + xs
                                                    * (
                                                        2.505210838544172e-08
                                                        + xs
                                                        * (
                                                            2.08767569878681e-09
                                                            + xs
                                                            * (
                                                                1.6059043836821613e-10
                                                                + xs
                                                                * (
                                                                    1.1470745597729725e-11
                                                                    + xs
                                                                    * (
                                                                        7.647163731819816e-13
                                                                        + xs
                                                                        * (
                                                                            4.779477332387385e-14
                                                                            + xs
                                                                            * (
                                                                                2.8114572543455206e-15
                                                                            )
                                                                        )
                                                                    )
                                                                )
                                                            )
                                                        )
                                                    )
                                                )
                                            )
                                        )
                                    )
                                )
                            )
                        )
                    )
                )
            )
            e = _exp64(x) - 1.0
            return s if abs(x) < 0.5 else e

        return f64
    return None


def like(x, value):
    """``value`` as a constant of x's float type (a bare literal would promote a float32
    computation to float64, which halves the vector width)."""
    return value


@overload(like)
def _like(x, value):
    if x == types.float32:
        return lambda x, value: np.float32(value)
    if x == types.float64:
        return lambda x, value: np.float64(value)
    return None


def vphi(x, c):
    """Φ(x), the standard normal CDF: for float32 vectorizable, for float64 libm's erfc."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def vphi_gauss(x, c):
    """(Φ(x), e^(−x²/2)): the CDF and the unnormalized density from one exponential."""
    return vphi(x), math.exp(-0.5 * x * x)


# g(t) = erfc(z)·e^(z²)/t at t = 1/(1 + z/2), z ≥ 0: smooth on (0, 1], from 1 at z = 0 to
# 1/(2√π) as z → ∞. Degree-9 weighted least-squares fit (relative weights, 400 Chebyshev
# nodes on t ∈ [0.15, 1], i.e. z ≤ 11.3, values from mpmath; tools/fit_erfc.py): relative
# error ≤ 1.4e-7 evaluated in float32 by Horner with FMA. Highest power first.
_ERFC_G = (
    0.009784051217138767,
    -0.10971400886774063,
    0.39729174971580505,
    -0.6283048391342163,
    0.3871740996837616,
    -0.08046451210975647,
    0.21957771480083466,
    0.23986618220806122,
    0.28271839022636414,
    0.28207114338874817,
)

_F = np.float32
K32 = Consts32(
    log2e=_F(_LOG2E),
    shifter=_F(12582912.0),
    ln2_hi=_F(0.693359375),
    ln2_lo=_F(-2.12194440e-4),
    exp_p0=_F(1.9875691500e-4),
    exp_p1=_F(1.3981999507e-3),
    exp_p2=_F(8.3334519073e-3),
    exp_p3=_F(4.1665795894e-2),
    exp_p4=_F(1.6666665459e-1),
    exp_p5=_F(5.0000001201e-1),
    exp_hi=_F(88.72283),
    exp_lo=_F(-103.97208),
    pow2_bias=_F(64.0),
    pow2_unbias=_F(5.421010862427522e-20),
    rsqrt2=_F(0.7071067811865476),
    erfc_t_min=_F(0.15),
    erfc_x_max=_F(16.0),
    **{f"erfc_g{i}": _F(g) for i, g in enumerate(_ERFC_G)},
    one=_F(1.0),
    half=_F(0.5),
    two=_F(2.0),
    sqrt2=_F(math.sqrt(2.0)),
    log_q1=_F(1.0 / 3.0),
    log_q2=_F(1.0 / 5.0),
    log_q3=_F(1.0 / 7.0),
    log_q4=_F(1.0 / 9.0),
)


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def _phi_gauss32(x, c):
    # Φ(x) = ½·erfc(−x/√2) with erfc(z) = t·g(t)·e^(−z²): the e^(−x²/2) that GELU's
    # derivative needs is the same exponential, so the backward pays for one. x² is split
    # exactly, x·x = hi + lo (lo = fma(x, x, −hi)), and e^(−x²/2) taken
    # as e^(−hi/2)·(1 − lo/2): the tails keep their relative accuracy (a rounded x²/2
    # would cost x²/2 ulps in e^(−x²/2)). No branch: z ≥ 11.3 clamps t into the fit, where
    # e^(−z²) is 0 in float32 anyway; ±Inf give Φ = 1, 0; NaN stays NaN (through t).
    one, half = c.one, c.half
    z = abs(x) * c.rsqrt2
    t = one / (one + half * z)
    u = max(t, c.erfc_t_min)
    q = c.erfc_g0
    q = q * u + c.erfc_g1
    q = q * u + c.erfc_g2
    q = q * u + c.erfc_g3
    q = q * u + c.erfc_g4
    q = q * u + c.erfc_g5
    q = q * u + c.erfc_g6
    q = q * u + c.erfc_g7
    q = q * u + c.erfc_g8
    q = q * u + c.erfc_g9
    xa = min(abs(x), c.erfc_x_max)  # keeps lo finite at ±Inf
    hi = xa * xa
    lo = fma(xa, xa, -hi)
    e = _exp_neg32(-half * hi, c) * (one - half * lo)
    c = half * t * q * e  # ½·erfc(|x|/√2)
    w = np.float32(x >= 0)  # a blend, not a branch (both sides finite)
    return w * (one - c) + (one - w) * c, e


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def _phi32(x, c):
    return _phi_gauss32(x, c)[0]


# 1/√2 = _RSQRT2 + _RSQRT2_LO (float64 head and tail); 2/√π
_RSQRT2, _RSQRT2_LO = 0.7071067811865476, -4.833646656726457e-17
_TWO_RSQRTPI = 1.1283791670955126


@njit(error_model="numpy", fastmath={"contract"})
def _phi64(x):
    # Φ(x) = ½·erfc(z), z = −x/√2 carried as z + lo: a rounded z alone costs 2z² ulps in
    # erfc's tail (~340 at x = −26); erfc(z + lo) = erfc(z) − (2/√π)·e^(−z²)·lo, the
    # square's own rounding only in that small correction. lo is 0 past |x| = 10^30 (Inf − Inf
    # at ±Inf), where the correction is 0 anyway.
    z = -x * _RSQRT2
    lo = fma(-x, _RSQRT2, -z) - x * _RSQRT2_LO
    lo = lo if abs(x) <= 1e30 else 0.0
    return 0.5 * (math.erfc(z) - _TWO_RSQRTPI * math.exp(-z * z) * lo)


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def _gauss64(x):
    # e^(−x²/2) with x² = hi + lo split exactly (a rounded x²/2 costs x²/2 ulps: ~340 at
    # |x| = 26); |x| clamped at 40, past which it is 0, so lo stays finite at ±Inf
    xa = min(abs(x), 40.0)
    hi = xa * xa
    lo = fma(xa, xa, -hi)
    return _exp_neg64(-0.5 * hi) * (1.0 - 0.5 * lo)


@overload(vphi_gauss, inline="always")
def _vphi_gauss(x, c):
    if x == types.float32:
        return lambda x, c: _phi_gauss32(x, c)
    if x == types.float64:
        return lambda x, c: (_phi64(x), _gauss64(x) if x == x else x)
    return None


@overload(vphi, inline="always")
def _vphi(x, c):
    if x == types.float32:
        return lambda x, c: _phi32(x, c)
    if x == types.float64:
        return lambda x, c: _phi64(x)
    return None


def vlog1p_unit(e, c):
    """log(1 + e) for 0 ≤ e ≤ 1 (softplus' log1p(e^(−|βx|))): for float32 vectorizable,
    ≤ 1.5 ulps (1.16 seen; tests/test_vmath_mpmath.py); for float64 libm's log1p (scalar,
    exact)."""
    return math.log1p(e)


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def _log1p_unit32(e, c):
    # u = 1 + e rounded; 1 + f = u or u/2 (f exact by Sterbenz: u − 1 for u ≤ √2, u/2 − 1
    # above, so −0.293 < f ≤ 0.415), log(1 + f) = 2·atanh(s), s = f/(2 + f), |s| ≤
    # 0.172: 2s(1 + R), R = s²/3 + s⁴/5 + s⁶/7 + s⁸/9 (the next term is 2e-9 of the whole);
    # and 2s = f − s·f, so log(1 + f) = f − s·(f − 2R): f is exact, s's rounding only
    # scales s·f ≤ 0.17·f. Then + ln 2 (head and tail) above √2, and u's own rounding
    # e − (u − 1) (exact) over u: log1p(e) = log u + (e − (u − 1))/u to first order, which
    # is all of it for e below an ulp of 1. No branch: selects only; NaN stays NaN.
    one = c.one
    u = one + e
    big = u > c.sqrt2
    f = u * c.half - one if big else u - one
    s = f / (c.two + f)
    z = s * s
    r = z * (c.log_q1 + z * (c.log_q2 + z * (c.log_q3 + z * c.log_q4)))
    lg = f - s * (f - (r + r))
    corr = (e - (u - one)) / u
    lo = c.ln2_lo if big else np.float32(0.0)
    hi = c.ln2_hi if big else np.float32(0.0)
    return (lg + (corr + lo)) + hi


@overload(vlog1p_unit, inline="always")
def _vlog1p_unit(e, c):
    if e == types.float32:
        return lambda e, c: _log1p_unit32(e, c)
    if e == types.float64:
        return lambda e, c: np.log1p(e)
    return None
