"""CPU (Numba) mirror of ``kernels/optim8.cu``: updates with blockwise 8-bit states.

One ``prange`` task per run of ``CHUNK`` quantization blocks of B elements (the scratch is
allocated once per task). Per block: dequantize and apply the rule element by element in
float32 (new p written at once, the new states kept in a block-sized scratch that stays in
L1, the block's absmax accumulated on the way), then requantize into the codes and write the
scale: every state is read once and written once. The float32 operations are
``gpugd.reference8``'s in its order (no fma, no fastmath), so codes, scales and p are the
same bits as the reference and the CUDA kernels. Arguments are validated by
``gpugd.ops.optim8``.

Quantizing by arithmetic, not by a search. The reference's code of r (the largest i with
q[i] ≤ r, moved up when q[i+1] − r < r − q[i] in float32) is a non-decreasing step function
of r: it steps from c to c + 1 at one float32 threshold τ_c (the smallest r whose code is
c + 1; NaN: code 0). The kernels find it from r's bits: u >> 15 (the sign, the exponent and
the top 8 mantissa bits) names a bucket whose range of r holds at most one threshold — the
maps' entries are ≥ 0.7% apart relative to their size, a bucket at most 0.4% wide — and the
bucket's one table entry packs the code T of its lowest r with the threshold's low 15 bits
L: ``code = T + (x ≥ L)``, x being r's low 15 bits (complemented for r < 0, so that x grows
with r). One load from a table built once per map from the reference's own rule
(``gpugd.reference8.nearest_code`` at each bucket's ends, bisection on the float32 order
inside it); +inf and the NaNs that share its bucket come out as 255 and 256, the uint8 store
wrapping 256 to NaN's 0. The integer work is written as LLVM intrinsics in 32 bits: Numba's
own integer arithmetic widens to 64 bits and LLVM then vectorizes the loops at half width.
``tests/test_optim8_speed_paths.py`` compares the code selection with the reference's over
every float32 of [−1, 1] and densely beyond it (midpoints, entries, bucket edges, NaN, ∞).
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .host import AMD_ZEN, AVX512
from .precision import kernel_view, ld, put, st

_RULE = dict(inline="always", error_model="numpy")
_KERNEL = dict(cache=True, nogil=True, parallel=True, error_model="numpy")

CHUNK = 8  # quantization blocks per prange task (its scratch allocated once)

# The bucket of r is its float32 bits u >> SHIFT: the sign, the exponent and the mantissa's
# top 23 − SHIFT bits, 2^17 buckets (a 512 KiB table of which a block touches a few lines).
SHIFT = 15
LOW = (1 << SHIFT) - 1  # the bits below the bucket's
NONE = 1 << SHIFT  # an entry's threshold field when its bucket holds none (never reached)
BUCKETS = 1 << (32 - SHIFT)
INF_BITS = 0x7F800000
INF_BUCKET = INF_BITS >> SHIFT  # +inf (low bits 0) and NaNs; the buckets above: NaNs


# AMD Zen hosts with AVX-512 (Zen 4: a 512-bit gather is microcoded; on Zen 5 it is still
# slower than lanes loaded one by one) compile the kernels without gathers; on Zen 3 (AVX2)
# the 256-bit gathers are the faster way (8-bit Adam, 2^22 elements, 2-core Zen 3 VM: 8.1-8.6
# ms with gathers, 32 ms with lanes loaded one by one). 2-core Zen 5 VM, 2^24 elements, with
# gathers / without (``python -m benchmarks.experiments.codegen_choices --choice gather``,
# two runs, ``benchmarks/results/cpu-codegen-choices-2026-12-08-zen5.txt``): 8-bit Adam
# 16.9, 17.2 / 13.2, 12.8 ms; Lion 9.1, 9.5 / 8.3, 8.0; over bfloat16 p, Adam 15.7, 15.5 /
# 10.9, 11.4, Lion 8.2, 8.2 / 6.2, 6.4.
NO_GATHER = AMD_ZEN and AVX512


@intrinsic
def _wide(typingctx):
    """Marks the LLVM function being compiled (the kernel's parallel body, where it is
    inlined) with ``prefer-vector-width=512``: on CPUs with AVX-512, LLVM's default for them is
    256-bit vectors; the 8-bit Adam step ran 12% faster at 512 (2-core Sapphire Rapids VM).
    Lane-wise the same IEEE operations: the results do not change. llvmlite checks function
    attributes against a list without string attributes, so the set is added to directly.
    On AMD Zen 4 (``NO_GATHER``) also ``prefer-no-gather``: there an AVX-512 gather is
    microcoded, and the map and bucket-table lookups, vectorized as gathers, took most of
    the step; LLVM then loads the lanes one by one (8-bit Adam, 2^24 elements, 2-core Zen 4:
    23.2 → 18.8 ms; with the quantizing lookup taken out, 10.5)."""

    def codegen(context, builder, signature, args):
        attrs = builder.function.attributes
        if isinstance(attrs, set):  # else (another llvmlite) the default width stays
            set.add(attrs, '"prefer-vector-width"="512"')
            if NO_GATHER:
                set.add(attrs, '"target-features"="+prefer-no-gather"')
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _bits(typingctx, x):
    """The int32 bit pattern of a float32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _from_bits(typingctx, u):
    """The float32 of a bit pattern (an integer's low 32 bits)."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if u.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def _bucket(typingctx, r):
    """The bucket of float32 r: its bits >> SHIFT (uint32)."""
    if r != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        return builder.lshr(builder.bitcast(args[0], i32), ir.Constant(i32, SHIFT))

    return types.uint32(types.float32), codegen


@intrinsic
def _pick(typingctx, r, e):
    """code = (e >> 16) + (x ≥ (e & 0xFFFF)), x: r's low 15 bits, complemented for r < 0
    (then x grows with r inside the bucket: the comparison is r ≥ τ)."""
    if r != types.float32 or not isinstance(e, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        c = lambda v: ir.Constant(i32, v)  # noqa: E731
        u = builder.bitcast(args[0], i32)
        ev = args[1] if e.bitwidth == 32 else builder.trunc(args[1], i32)
        x = builder.xor(builder.and_(u, c(LOW)), builder.and_(builder.ashr(u, c(31)), c(LOW)))
        up = builder.icmp_signed(">=", x, builder.and_(ev, c(0xFFFF)))
        return builder.add(builder.lshr(ev, c(16)), builder.zext(up, i32))

    return types.uint32(types.float32, e), codegen


@intrinsic
def _at(typingctx, ary, k):
    """ary[k] for a small non-negative k (an unsigned integer of at most 32 bits: a code or a
    bucket), addressed with a 32-bit offset. Numba would widen k to 64 bits, and LLVM then
    vectorizes the whole loop at half the width (4 float32 lanes instead of 8)."""
    if not isinstance(ary, types.Array) or not isinstance(k, types.Integer):
        return None
    if k.signed or k.bitwidth > 32:
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(ary)(context, builder, args[0])
        i = args[1] if k.bitwidth == 32 else builder.zext(args[1], ir.IntType(32))
        return builder.load(builder.gep(arr.data, [i], inbounds=True))

    return ary.dtype(ary, k), codegen


@njit(**_RULE)
def _code(r, tab):
    """reference8.nearest_code of r: its bucket's packed entry (see the module text)."""
    return np.uint8(_pick(r, _at(tab, _bucket(r))))


@intrinsic
def _absbits(typingctx, x):
    """|x|'s bits, NaN as 0 (int32): their integer maximum is the float maximum with NaN
    ignored. 32-bit operations: a 64-bit maximum would halve the loop's vector width."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        a = builder.and_(builder.bitcast(args[0], i32), ir.Constant(i32, 0x7FFFFFFF))
        nan = builder.icmp_signed(">", a, ir.Constant(i32, INF_BITS))
        return builder.select(nan, ir.Constant(i32, 0), a)

    return types.int32(types.float32), codegen


def _as_float(sign: int, mag: np.ndarray) -> np.ndarray:
    return (mag.astype(np.uint32) | np.uint32(sign << 31)).view(np.float32)


@functools.lru_cache(maxsize=4)
def _table(qbytes: bytes) -> np.ndarray:
    from ..reference8 import nearest_code

    q = np.frombuffer(qbytes, np.float32)[:256]
    code = lambda s, mag: nearest_code(q, _as_float(s, mag)).astype(np.int64)  # noqa: E731
    half = BUCKETS // 2
    tab = np.full(BUCKETS, NONE, np.int64)  # NaN buckets: code 0, no threshold
    j = np.arange(INF_BUCKET, dtype=np.int64)  # the finite buckets of one sign
    for s in (0, 1):
        # the magnitude bits of each bucket's first and last r, in r's order
        first, last = (j << SHIFT, (j << SHIFT) | LOW)[:: 1 if s == 0 else -1]
        c0, c1 = code(s, first), code(s, last)
        split = c1 > c0
        if np.any((c1 < c0) | (c1 > c0 + 1)):
            raise AssertionError("a bucket holds more than one threshold")
        # bisection on the ordinal o (r's order): the first o whose code is c0 + 1
        step = 1 if s == 0 else -1
        lo, hi = np.zeros_like(first), np.full_like(first, LOW)  # code(lo) = c0, code(hi) = c1
        while np.any(split & (hi - lo > 1)):
            mid = (lo + hi) // 2
            up = code(s, first + step * mid) > c0
            hi, lo = np.where(split & up, mid, hi), np.where(split & ~up, mid, lo)
        low = ((first + step * hi) & LOW) ^ (LOW if s else 0)  # as _pick's x of τ
        tab[s * half + j] = (c0 << 16) | np.where(split, low, NONE)
    # +inf is the code of 2^127·1.99 (255 or 0); a NaN in +inf's bucket (low bits ≥ 1) goes one
    # code above: 256, which the uint8 store wraps to 0, NaN's code
    top = int(code(0, np.array([INF_BITS - 1]))[0])
    if top == 255:
        tab[INF_BUCKET] = (255 << 16) | 1
    elif top != 0:
        raise AssertionError("+inf's code is neither 255 nor 0")
    if int(code(1, np.array([INF_BITS - 1]))[0]) != 0:
        raise AssertionError("-inf's code is not 0")
    out = tab.astype(np.int32)
    out.setflags(write=False)
    return out


def bucket_table(qmap: np.ndarray) -> np.ndarray:
    """The quantizer's table of a float32 map (its first 256 entries; a padded map works):
    int32[BUCKETS], entry k = (T << 16) | (τ's low bits as _pick compares them, or NONE), built
    once per map from reference8.nearest_code."""
    return _table(np.ascontiguousarray(qmap, np.float32)[:256].tobytes())


@njit(cache=True, nogil=True, error_model="numpy")
def codes(r, tab, out):
    """The fast code of every r (tests): out[i] = reference8.nearest_code(q, r[i])."""
    for i in range(r.size):
        out[i] = _code(r[i], tab)


@intrinsic
def _sign(typingctx, x):
    """np.sign of a float32 as Numba and the CUDA kernel compute it (±1, or x itself for ±0
    and NaN), as two selects: Numba's branches kept the Lion loop from vectorizing."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        f = ir.FloatType()
        v = args[0]
        neg = builder.select(
            builder.fcmp_ordered("<", v, ir.Constant(f, 0.0)), ir.Constant(f, -1.0), v
        )
        return builder.select(
            builder.fcmp_ordered(">", v, ir.Constant(f, 0.0)), ir.Constant(f, 1.0), neg
        )

    return types.float32(types.float32), codegen


@njit(**_RULE)
def _grad(g, gs, clip):
    d = g * gs
    d = clip if d > clip else d
    return -clip if d < -clip else d


@njit(**_RULE)
def _adam(p, d, m, v, b1, omb1, b2, omb2, eps, wd_c, decay_mul, step_size, inv_bc2_sqrt):
    p = p * decay_mul
    d = d + wd_c * p
    m = b1 * m + omb1 * d
    v = b2 * v + omb2 * (d * d)
    den = np.sqrt(v) * inv_bc2_sqrt + eps
    return p - step_size * m / den, m, v


MOMENTUM, LION, RMSPROP, ADAGRAD = 0, 1, 2, 3  # the one-state rules (``one_state``'s kind)


@njit(**_RULE)
def _one(kind, p, d, s, c0, c1, c2, c3, c4, c5):
    """The one-state rules of reference8 (float32, its order); c0..c5: the rule's scalars,
    flags as 0/1."""
    if kind == MOMENTUM:  # lr, wd, μ, 1 − τ, nesterov, first
        d = d + c1 * p
        s = d if c5 != 0 else c2 * s + c3 * d
        d = d + c2 * s if c4 != 0 else s
        return p - c0 * d, s
    if kind == LION:  # lr, β1, 1 − β1, β2, 1 − β2, 1 − lr·wd
        p = p * c5
        p = p - c0 * _sign(c1 * s + c2 * d)
        return p, c3 * s + c4 * d
    d = d + c1 * p
    if kind == RMSPROP:  # lr, wd, α, 1 − α, ε
        s = c2 * s + c3 * (d * d)
        eps = c4
    else:  # ADAGRAD: clr, wd, ε
        s = s + d * d
        eps = c2
    return p - c0 * d / (np.sqrt(s) + eps), s


@njit(**_RULE)
def _inverse(mx):
    return np.float32(1.0) / (mx if mx > 0 else np.float32(1.0))  # one division per block


@njit(**_RULE)
def _adam8_blocks(
    first, stop, xm, xv, w, g, out, rnd, mq, ma, vq, va, qs, qu, ts, tu, bs, b1, omb1, b2,
    omb2, eps, wd_c, dm, ss, ibc, gs, clip,
):  # fmt: skip
    """Adam over quantization blocks first..stop − 1 (one prange task of ``_adam8``; also
    the bench's compute bound over cache-resident blocks): xm, xv are the task's scratch
    of bs float32 each. Arguments as ``_adam8``'s."""
    n = w.size
    for b in range(first, stop):
        lo = b * bs
        cnt = min(bs, n - lo)
        s0, s1 = ma[b], va[b]
        mx0 = np.int32(0)
        mx1 = np.int32(0)
        for k in range(cnt):
            i = np.uint64(lo + k)  # unsigned: no wraparound test, the loop vectorizes
            pi, m, v = _adam(
                ld(w, i),
                _grad(ld(g, i), gs, clip),
                _at(qs, mq[i]) * s0,
                _at(qu, vq[i]) * s1,
                b1,
                omb1,
                b2,
                omb2,
                eps,
                wd_c,
                dm,
                ss,
                ibc,
            )
            st(w, i, pi, rnd)
            put(out, i, pi, rnd)
            xm[k] = m
            xv[k] = v
            mx0 = max(mx0, _absbits(m))
            mx1 = max(mx1, _absbits(v))
        a0, a1 = _from_bits(mx0), _from_bits(mx1)
        ma[b], va[b] = a0, a1
        r0, r1 = _inverse(a0), _inverse(a1)
        for k in range(cnt):
            mq[np.uint64(lo + k)] = _code(xm[k] * r0, ts)
            vq[np.uint64(lo + k)] = _code(xv[k] * r1, tu)


@njit(**_KERNEL)
def _adam8(
    w, g, out, rnd, mq, ma, vq, va, qs, qu, ts, tu, bs, b1, omb1, b2, omb2, eps, wd_c, dm,
    ss, ibc, gs, clip,
):  # fmt: skip
    """w: what the rule updates (p, or fp32 master weights), out: the half-precision p
    receiving round(w) (None without masters), rnd: stochastic rounding (None: nearest)."""
    nb = (w.size + bs - 1) // bs
    for c in prange((nb + CHUNK - 1) // CHUNK):
        _wide()
        xm = np.empty(bs, np.float32)
        xv = np.empty(bs, np.float32)
        _adam8_blocks(
            c * CHUNK, min(nb, (c + 1) * CHUNK), xm, xv, w, g, out, rnd, mq, ma, vq, va, qs,
            qu, ts, tu, bs, b1, omb1, b2, omb2, eps, wd_c, dm, ss, ibc, gs, clip,
        )  # fmt: skip


@njit(**_RULE)
def _one8_blocks(kind, first, stop, xb, w, g, out, rnd, bq, ba, qs, tab, bs, c0, c1, c2, c3,
                 c4, c5, gs, clip):  # fmt: skip
    """A one-state rule over quantization blocks first..stop − 1 (one prange task of
    ``_one8``; also the bench's compute bound): xb is the task's scratch of bs float32."""
    n = w.size
    for b in range(first, stop):
        lo = b * bs
        cnt = min(bs, n - lo)
        s0 = ba[b]
        mx = np.int32(0)
        for k in range(cnt):
            i = np.uint64(lo + k)  # unsigned: no wraparound test, the loop vectorizes
            pi, s = _one(
                kind, ld(w, i), _grad(ld(g, i), gs, clip), _at(qs, bq[i]) * s0,
                c0, c1, c2, c3, c4, c5,
            )  # fmt: skip
            st(w, i, pi, rnd)
            put(out, i, pi, rnd)
            xb[k] = s
            mx = max(mx, _absbits(s))
        a = _from_bits(mx)
        ba[b] = a
        r = _inverse(a)
        for k in range(cnt):
            bq[np.uint64(lo + k)] = _code(xb[k] * r, tab)


@njit(**_RULE)
def _one8(kind, w, g, out, rnd, bq, ba, qs, tab, bs, c0, c1, c2, c3, c4, c5, gs, clip):
    """A one-state rule over 8-bit state (bq, ba), inlined into one kernel per rule: with the
    kind a constant the loop holds that rule alone and vectorizes (one kernel branching on
    the kind ran 2–3× slower). w, out, rnd as in ``_adam8``."""
    nb = (w.size + bs - 1) // bs
    for c in prange((nb + CHUNK - 1) // CHUNK):
        _wide()
        xb = np.empty(bs, np.float32)
        _one8_blocks(
            kind, c * CHUNK, min(nb, (c + 1) * CHUNK), xb, w, g, out, rnd, bq, ba, qs, tab, bs,
            c0, c1, c2, c3, c4, c5, gs, clip,
        )  # fmt: skip


@njit(**_KERNEL)
def _momentum8(w, g, out, rnd, bq, ba, qs, tab, bs, c0, c1, c2, c3, c4, c5, gs, clip):
    _one8(MOMENTUM, w, g, out, rnd, bq, ba, qs, tab, bs, c0, c1, c2, c3, c4, c5, gs, clip)


@njit(**_KERNEL)
def _lion8(w, g, out, rnd, bq, ba, qs, tab, bs, c0, c1, c2, c3, c4, c5, gs, clip):
    _one8(LION, w, g, out, rnd, bq, ba, qs, tab, bs, c0, c1, c2, c3, c4, c5, gs, clip)


@njit(**_KERNEL)
def _rmsprop8(w, g, out, rnd, bq, ba, qs, tab, bs, c0, c1, c2, c3, c4, c5, gs, clip):
    _one8(RMSPROP, w, g, out, rnd, bq, ba, qs, tab, bs, c0, c1, c2, c3, c4, c5, gs, clip)


@njit(**_KERNEL)
def _adagrad8(w, g, out, rnd, bq, ba, qs, tab, bs, c0, c1, c2, c3, c4, c5, gs, clip):
    _one8(ADAGRAD, w, g, out, rnd, bq, ba, qs, tab, bs, c0, c1, c2, c3, c4, c5, gs, clip)


_ONE = {MOMENTUM: _momentum8, LION: _lion8, RMSPROP: _rmsprop8, ADAGRAD: _adagrad8}


def _precision(p, g, master, key):
    """The kernels' (w, g, out, rnd) of p, g, optional fp32 master weights and the tensor's
    stochastic-rounding key (None: nearest; the element index counts from 0)."""
    w, out = (master, kernel_view(p)) if master is not None else (kernel_view(p), None)
    rnd = None if key is None else (np.uint32(key), np.uint64(0))
    return w, kernel_view(g), out, rnd


def adam(p, g, master, key, mq, ma, vq, va, qs, qu, bs, b1, omb1, b2, omb2, eps, wd_c,
         dm, ss, ibc, gs, clip):  # fmt: skip
    """Adam over 8-bit m (map qs) and v (map qu), blocks of bs (gpugd.ops.optim8's call)."""
    ts, tu = bucket_table(qs), bucket_table(qu)
    _adam8(
        *_precision(p, g, master, key), mq, ma, vq, va, qs, qu, ts, tu, bs, b1, omb1,
        b2, omb2, eps, wd_c, dm, ss, ibc, gs, clip,
    )  # fmt: skip


def one_state(kind, p, g, master, key, bq, ba, qs, bs, c0, c1, c2, c3, c4, c5, gs, clip):
    """A one-state rule (``kind``) over 8-bit state (bq, ba) with the map qs."""
    _ONE[int(kind)](
        *_precision(p, g, master, key), bq, ba, qs, bucket_table(qs), bs,
        c0, c1, c2, c3, c4, c5, gs, clip,
    )  # fmt: skip
