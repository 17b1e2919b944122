"""CPU (Numba) mirror of ``kernels/activations.cu``: activation forward and fused backward.

Each activation's math is one pair of inline functions (``_<kind>_f(x, a, b, c)`` and
``_<kind>_b(dy, v, a, b, c)``, v = output for sigmoid/tanh, input otherwise; c = the
float32 math's constants, ``vmath.K32``, passed in as an argument), in the stable
forms of the CUDA file: exponentials only of non-positive arguments (no overflow for any
finite input), ``expm1`` where 1 − e^x would cancel. ``forward``/``backward`` run one
loop per kind (the kind is chosen outside the loop, so each loop vectorizes; exp is the
vectorizable ``vmath.vexp``, or ``vexp_neg`` where the argument is ≤ 0), in CHUNK-element
tasks of a ``prange`` for large arrays.
Each loop runs in ``vmath.BLOCK``-element blocks that prefetch their lines 4 KiB ahead
(``_map2``/``_map3``): without it, on the Intel Xeon VMs, every transcendental backward in
place ran at half its out-of-place speed from memory (the same machine code; in cache both
were equal), e.g. silu 2^24 fp32, one run: 97 ms in place, 45 out of place; after, 33/39.
On AMD Zen only the in-place loops of the kinds with the most math prefetch (``_prefetch``):
out of place, and for the memory-bound kinds, the prefetches only cost there.
Every load goes through ``vmath.opaque``: in place, LLVM would otherwise drop the store of
a branch that gives dy back and vectorize with masked stores, microcoded on AMD Zen 3
(relu backward in place, 2^24 fp32: 8.7 ms against 7.1 out of place; after, 3.6 against
4.3, torch 3.5: ``benchmarks/experiments/inplace_act.py``).
The float32 constants of the transcendental math arrive as an argument (``vmath.K32``),
runtime values held in registers or stack slots, not literals reloaded from the constant
pool in every iteration: gelu backward 2.28 → 1.79 ns/element on one core (AMD EPYC Zen 3),
silu 1.43 → 1.12, softplus 1.12 → 0.88, the same bits
(``benchmarks/experiments/hoisted_consts.py``).
float32 GELU takes Φ from a vectorizable erfc (relative error ~1e-7 in both tails), float32
softplus its log1p(e^(−|βx|)) from ``vmath.vlog1p_unit`` (≤ 1.5 ulps; libm's log1pf, a scalar
call, kept the loop from vectorizing: 2^24 elements 225 → 10 ms, torch 15, on 2 cores);
float64 GELU and softplus' forward call libm's erfc/log1p (scalar: exact, slower).
Compiled with fastmath ``contract`` only (here and in ``vmath``): a·b + c may become one
FMA, as nvcc does by default, and nothing else is relaxed (no reassociation, NaN and Inf
kept). Measured in L1 on one core (AMD EPYC, 2026-12-02): elu 1.78 → 2.34, softplus 1.09
→ 1.68, silu 1.04 → 1.66, gelu 0.40 → 0.67 G elements/s.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .host import AMD_ZEN
from .vector import CHUNK, PARALLEL_MIN
from .vmath import (
    BLOCK,
    K32,
    fma,
    like,
    mul_rn,
    opaque,
    prefetch_block,
    vexp_neg,
    vexpm1,
    vlog1p_unit,
    vphi,
    vphi_gauss,
)

# kernel ids, the same in kernels/activations.cu; selu runs as elu with its constants
KINDS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "softplus", "silu")
_INV_SQRT_2PI = 0.3989422804014327
# gelu_tanh's argument 2u = A·x + B·x³, A = 2√(2/π), B = 0.044715·A: float64 heads and tails
_A, _A_LO = 1.5957691216057308, -9.96930880911092e-17
_B, _B_LO = 0.07135481627260025, -6.175149918155315e-19

_J = dict(inline="always", error_model="numpy", fastmath={"contract"})


@njit(**_J)
def _sig_pair(x, c):
    """(σ(x), 1 − σ(x)) from one exponential and one division: σ(|x|) = 1/(1 + e) with
    e = e^(−|x|), and σ(−|x|) = e·σ(|x|), not 1 − σ(|x|), which would cancel."""
    one = like(x, 1.0)
    e = vexp_neg(-abs(x), c)
    big = one / (one + e)
    small = e * big
    return (big, small) if x >= 0 else (small, big)


@njit(**_J)
def _sig(x, c):
    return _sig_pair(x, c)[0]


@njit(**_J)
def _dy_times_far_slope(dy, x):
    """dy·f'(x) past the computed range (±Inf; gelu_tanh past 10^4): f' is 1 for x > 0, else
    a negative value below every subnormal, so dy or dy·(−0)."""
    return dy if x > 0 else dy * like(x, -0.0)


@njit(**_J)
def _signed_underflow(d, x):
    """A derivative that underflowed to 0 where it is negative (x < −1 for gelu and
    gelu_tanh) is −0, the sign of the exact value."""
    return like(x, -0.0) if d == like(x, 0.0) and x < like(x, -1.0) else d


@njit(**_J)
def _tanh(x, c):
    m = vexpm1(like(x, -2.0) * abs(x), c)  # tanh|x| = −m/(2 + m): no cancellation near 0
    t = -m / (like(x, 2.0) + m)
    return t if x > 0 else (-t if x < 0 else x)  # ±0 and NaN: x itself, as tanh(±0) = ±0


# ---- per-element rules: forward f(x) and backward dx = dy·f'(·) --------------------------
# Constants go through ``like`` so float32 stays float32 (a bare 0.5 would promote).


@njit(**_J)
def _sigmoid_f(x, a, b, c):
    return _sig(x, c)


@njit(**_J)
def _sigmoid_b(dy, y, a, b, c):
    return dy * y * (like(y, 1.0) - y)


@njit(**_J)
def _tanh_f(x, a, b, c):
    return _tanh(x, c)


@njit(**_J)
def _tanh_b(dy, y, a, b, c):
    # 1 − y² as one explicit fma, as the CUDA kernel writes it: the algebraic backwards
    # (this, sigmoid's, relu's) give the same bits on both backends, whatever LLVM contracts
    return dy * fma(-y, y, like(y, 1.0))


@njit(**_J)
def _relu_f(x, a, b, c):
    return like(x, 0.0) if x < 0 else x  # relu(−Inf) = +0, relu(−0) = −0, NaN kept (torch)


@njit(**_J)
def _relu_b(dy, x, a, b, c):
    # torch's select: dy where x > 0, else +0 (for every dy, ±Inf included); NaN in x or dy
    # gives NaN (a NaN is not a point where the derivative is 0)
    return dy if x > 0 else (x + dy if x != x or dy != dy else like(dy, 0.0))


@njit(**_J)
def _leaky_relu_f(x, a, b, c):
    return x if x > 0 else a * x


@njit(**_J)
def _leaky_relu_b(dy, x, a, b, c):
    return dy if x > 0 else (a * dy if x == x else x)  # NaN x: NaN, not the slope's side


@njit(**_J)
def _elu_f(x, a, b, c):
    return b * x if x > 0 else b * a * vexpm1(x, c)  # a = α, b = scale (1 for elu; selu's)


@njit(**_J)
def _elu_b(dy, x, a, b, c):
    return b * dy if x > 0 else dy * (b * a * vexp_neg(x, c))  # dy ⊗ f'(x): Inf·0 is NaN


@njit(**_J)
def _gelu_f(x, a, b, c):
    # x·Φ(x) = ½x(1 + erf(x/√2)), Φ from erfc: accurate in both tails; gelu(−Inf) = −0
    return x * vphi(x, c) if x != like(x, -np.inf) else like(x, -0.0)


@njit(**_J)
def _gelu_b(dy, x, a, b, c):
    # f'(x) = Φ(x) + x·φ(x), Φ and e^(−x²/2) from one exponential. Past |x| = 40 it is 1
    # or a negative value below every subnormal: x clamped there (Inf·0 at ±Inf), and a 0
    # for x < −1 (where f' < 0) is −0
    xc = like(x, 40.0) if x > like(x, 40.0) else (like(x, -40.0) if x < like(x, -40.0) else x)
    cdf, gauss = vphi_gauss(xc, c)
    d = cdf + xc * like(x, _INV_SQRT_2PI) * gauss
    return dy * _signed_underflow(d, x)


@njit(**_J)
def _sig_gelu_tanh(x, c):
    """(s, 1 − s), s = σ(2u), 2u = A·x + B·x³ (A = 2√(2/π), B = 0.044715·A), 2u as t + δ.

    In the tail σ(t) has relative condition |t| (~240 at x = −14.5): a t rounded alone, or
    constants rounded to x's type, cost |t| ulps; σ(t + δ) = σ(t)(1 + (1 − σ(t))·δ) keeps
    the roundings of x³ (fma), of the constants (heads and tails) and of the sums in δ.
    1 − s is σ(−t), exact where s rounds to 1 (f' needs it for x > 0). δ is 0 past
    |x| = 10^4, where σ is 0 or 1 (and x³ may overflow).
    """
    a = like(x, _A)
    a_lo = like(x, (_A - np.float64(a)) + _A_LO)  # float32: the head's rounding, float64: _A_LO
    b = like(x, _B)
    b_lo = like(x, (_B - np.float64(b)) + _B_LO)
    p = x * x
    q = p * x  # x³ = q + eq
    eq = fma(p, x, -q) + fma(x, x, -p) * x
    h1 = mul_rn(b, q)  # rounded, not fused into t: the two-sum needs h1 and h2 as floats
    e1 = fma(b, q, -h1) + (b * eq + b_lo * q)
    h2 = mul_rn(a, x)
    e2 = fma(a, x, -h2) + a_lo * x
    t = h1 + h2
    r = t - h1
    d = ((h1 - (t - r)) + (h2 - r)) + (e1 + e2)  # two-sum of h1 + h2, then the tails
    d = d if abs(x) < like(x, 1e4) else like(x, 0.0)
    s, sbar = _sig_pair(t, c)
    ds = s * sbar * d
    return s + ds, sbar - ds


@njit(**_J)
def _gelu_tanh_f(x, a, b, c):
    # ½x(1 + tanh u) = x·σ(2u), u = √(2/π)(x + 0.044715x³): 1 + tanh u cancels for x ≪ 0
    # (−0 from x = −10 in float32), σ(2u) keeps its relative accuracy; gelu_tanh(−Inf) = −0
    return x * _sig_gelu_tanh(x, c)[0] if x != like(x, -np.inf) else like(x, -0.0)


@njit(**_J)
def _gelu_tanh_b(dy, x, a, b, c):
    # f'(x) = s + x·s(1 − s)·(A + 3B·x²), s = σ(2u); past |x| = 10^4 it is 1 (x > 0) or a
    # negative value below every subnormal (x·s·(1 − s) with s = e^(−10^12)), where
    # 3Bx² would overflow and s(1 − s) be 0: Inf·0. A 0 for x < −1 (f' < 0 there) is −0.
    s, sbar = _sig_gelu_tanh(x, c)
    d = s + x * s * sbar * (like(x, _A) + like(x, 3.0 * _B) * x * x)
    return _dy_times_far_slope(dy, x) if abs(x) > like(x, 1e4) else dy * _signed_underflow(d, x)


@njit(**_J)
def _softplus_f(x, a, b, c):
    bx = a * x  # a = β, b = threshold: linear above it, as torch
    pos = bx if bx > 0 else like(x, 0.0)  # (bx·0 would make −Inf's softplus NaN, not 0)
    return x if bx > b else (pos + vlog1p_unit(vexp_neg(-abs(bx), c), c)) / a


@njit(**_J)
def _softplus_b(dy, x, a, b, c):
    bx = a * x
    return dy if bx > b else dy * _sig(bx, c)


@njit(**_J)
def _silu_f(x, a, b, c):
    return x * _sig(x, c) if x != like(x, -np.inf) else like(x, -0.0)  # silu(−Inf) = −0


@njit(**_J)
def _silu_b(dy, x, a, b, c):
    s, sbar = _sig_pair(x, c)  # sbar = 1 − s, exact where s rounds to 1
    # f' first, then dy: dy·s would round a subnormal s(x) twice (x = −103 in float32); at
    # ±Inf s(1 + x(1 − s)) is Inf·0, so the far slope
    if abs(x) == like(x, np.inf):
        return _dy_times_far_slope(dy, x)
    return dy * (s * (like(x, 1.0) + x * sbar))


# ---- loops: the kind picked outside, one vectorizable loop each --------------------------


@njit(**_J)
def _map2(f, x, y, a, b, c, pf):
    """y[i] = f(x[i], a, b) in BLOCK-element blocks (the fixed-length inner loop vectorizes),
    each prefetching the lines of the block PREFETCH_BYTES ahead when ``pf``."""
    n = x.size
    full = n - n % BLOCK
    for lo in range(0, full, BLOCK):
        if pf:
            prefetch_block(x, lo, False)
            prefetch_block(y, lo, True)
        for i in range(lo, lo + BLOCK):
            y[i] = f(opaque(x[i]), a, b, c)
    for i in range(full, n):
        y[i] = f(opaque(x[i]), a, b, c)


@njit(**_J)
def _map3(f, dy, v, dx, a, b, c, pf):
    """dx[i] = f(dy[i], v[i], a, b), blocked and prefetched as ``_map2``."""
    n = dy.size
    full = n - n % BLOCK
    for lo in range(0, full, BLOCK):
        if pf:
            prefetch_block(dy, lo, False)
            prefetch_block(v, lo, False)
            prefetch_block(dx, lo, True)
        for i in range(lo, lo + BLOCK):
            dx[i] = f(opaque(dy[i]), opaque(v[i]), a, b, c)
    for i in range(full, n):
        dx[i] = f(opaque(dy[i]), opaque(v[i]), a, b, c)


@njit(**_J)
def _forward_loops(kind, x, y, a, b, c, pf):
    if kind == 0:
        _map2(_sigmoid_f, x, y, a, b, c, pf)
    elif kind == 1:
        _map2(_tanh_f, x, y, a, b, c, pf)
    elif kind == 2:
        _map2(_relu_f, x, y, a, b, c, pf)
    elif kind == 3:
        _map2(_leaky_relu_f, x, y, a, b, c, pf)
    elif kind == 4:
        _map2(_elu_f, x, y, a, b, c, pf)
    elif kind == 5:
        _map2(_gelu_f, x, y, a, b, c, pf)
    elif kind == 6:
        _map2(_gelu_tanh_f, x, y, a, b, c, pf)
    elif kind == 7:
        _map2(_softplus_f, x, y, a, b, c, pf)
    elif kind == 8:
        _map2(_silu_f, x, y, a, b, c, pf)


@njit(**_J)
def _backward_loops(kind, dy, v, dx, a, b, c, pf):
    if kind == 0:
        _map3(_sigmoid_b, dy, v, dx, a, b, c, pf)
    elif kind == 1:
        _map3(_tanh_b, dy, v, dx, a, b, c, pf)
    elif kind == 2:
        _map3(_relu_b, dy, v, dx, a, b, c, pf)
    elif kind == 3:
        _map3(_leaky_relu_b, dy, v, dx, a, b, c, pf)
    elif kind == 4:
        _map3(_elu_b, dy, v, dx, a, b, c, pf)
    elif kind == 5:
        _map3(_gelu_b, dy, v, dx, a, b, c, pf)
    elif kind == 6:
        _map3(_gelu_tanh_b, dy, v, dx, a, b, c, pf)
    elif kind == 7:
        _map3(_softplus_b, dy, v, dx, a, b, c, pf)
    elif kind == 8:
        _map3(_silu_b, dy, v, dx, a, b, c, pf)


# The dispatch bodies above are inlined (Numba IR) into one wrapper per aliasing form. In
# place, a wrapper passes the same array for both roles, so LLVM sees one pointer and
# vectorizes the loop as it is (an element is read, then written at the same index). Passed
# as two arguments that happen to be the same memory, LLVM's runtime overlap check fails
# and its scalar fallback runs: silu in place took 85-110 ms for 2^24 elements instead of
# 5-8 ms.
_L = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_P = dict(_L, parallel=True)
# how the output aliases the inputs: none, y is x / dx is dy, dx is v (backward)
SEPARATE, OVER_FIRST, OVER_SECOND = 0, 1, 2


@njit(**_L)
def _forward_serial(kind, x, y, a, b, c, alias, pf):
    if alias == OVER_FIRST:
        _forward_loops(kind, x, x, a, b, c, pf)
    else:
        _forward_loops(kind, x, y, a, b, c, pf)


@njit(**_L)
def _backward_serial(kind, dy, v, dx, a, b, c, alias, pf):
    if alias == OVER_FIRST:
        _backward_loops(kind, dy, v, dy, a, b, c, pf)
    elif alias == OVER_SECOND:
        _backward_loops(kind, dy, v, v, a, b, c, pf)
    else:
        _backward_loops(kind, dy, v, dx, a, b, c, pf)


@njit(**_P)
def _forward_parallel(kind, x, y, a, b, c, alias, pf):
    n = x.size
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = t * CHUNK, min(t * CHUNK + CHUNK, n)
        _forward_serial(kind, x[lo:hi], y[lo:hi], a, b, c, alias, pf)


@njit(**_P)
def _backward_parallel(kind, dy, v, dx, a, b, c, alias, pf):
    n = dy.size
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = t * CHUNK, min(t * CHUNK + CHUNK, n)
        _backward_serial(kind, dy[lo:hi], v[lo:hi], dx[lo:hi], a, b, c, alias, pf)


def _alias(out: np.ndarray, first: np.ndarray, second: np.ndarray | None = None) -> int:
    """Which input ``out`` is (the ops layer admits only exact aliasing or none)."""
    if np.may_share_memory(out, first):
        return OVER_FIRST
    if second is not None and np.may_share_memory(out, second):
        return OVER_SECOND
    return SEPARATE


# kinds whose in-place loops prefetch on AMD Zen: those with the most math per element
_ZEN_PREFETCH = frozenset(KINDS.index(k) for k in ("gelu", "gelu_tanh", "softplus", "silu"))


def _prefetch(kind: int, alias: int) -> bool:
    """Whether the loops prefetch: always on Intel; on AMD Zen only in place, and only for
    the kinds with the most math per element. 2-core Zen 4, 2^24 fp32 backward in place,
    round-robin after a cache flush, medians of 21, three runs, time with / without:
    sigmoid 1.07, 1.05, 1.17; tanh 1.05, 1.25, 1.14; relu 1.07, 1.16, 1.17; leaky_relu 1.16,
    1.19, 1.18; elu 1.13, 1.24, 1.27 — but gelu 0.94, 0.97, 0.92; gelu_tanh 1.02, 0.93, 0.90;
    silu 0.96, 0.93, 0.82; softplus 1.14, 0.98, 0.87 (``benchmarks/experiments/inplace_act.py``,
    ``benchmarks/results/cpu-inplace-act-2026-12-07-zen4.txt``). Out of place the same run:
    relu 6.42 → 7.74 ms with them, silu 10.62 → 9.94, gelu 22.98 → 22.90 (earlier, best of
    15: silu 7.1 → 8.2, gelu 10.7 → 11.0), so none there. On a 2-core Zen 5 VM (one run, medians of
    15, ``benchmarks/results/cpu-inplace-act-2026-12-08-zen5.txt``), in place with / without:
    gelu 0.97, gelu_tanh 0.95, silu 0.93, softplus 0.93, sigmoid 0.99, relu 0.99, elu 1.00;
    out of place: softplus 0.90, silu 0.96, relu 1.05, elu 1.01: kept as on Zen 4."""
    if not AMD_ZEN:
        return True
    return alias != SEPARATE and kind in _ZEN_PREFETCH


def forward(kind: int, x: np.ndarray, y: np.ndarray, a, b) -> None:
    """y = f(x) elementwise (1-D contiguous, same dtype; y may be x)."""
    run = _forward_parallel if x.size >= PARALLEL_MIN else _forward_serial
    alias = _alias(y, x)
    run(kind, x, y, a, b, K32, alias, _prefetch(kind, alias))


def backward(kind: int, dy: np.ndarray, v: np.ndarray, dx: np.ndarray, a, b) -> None:
    """dx = dy·f'(·) elementwise (dx may be dy or v)."""
    run = _backward_parallel if dy.size >= PARALLEL_MIN else _backward_serial
    alias = _alias(dx, dy, v)
    run(kind, dy, v, dx, a, b, K32, alias, _prefetch(kind, alias))
