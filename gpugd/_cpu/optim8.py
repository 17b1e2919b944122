"""CPU (Numba) mirror of ``kernels/optim8.cu``: updates with blockwise 8-bit states.

One ``prange`` task per quantization block of B elements: dequantize and apply the rule
element by element in float32 (new p written at once, the new states kept in a block-sized
scratch that stays in L1), the block's absmax, then requantize into the codes and write the
scale: every state is read once and written once. The float32 operations are
``gpugd.reference8``'s in its order (no fma, no fastmath), so codes, scales and p are the
same bits as the reference and the CUDA kernels. Arguments are validated by
``gpugd.ops.optim8``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_RULE = dict(inline="always", error_model="numpy")


@njit(**_RULE)
def _grad(g, gs, clip):
    d = g * gs
    d = clip if d > clip else d
    return -clip if d < -clip else d


@njit(**_RULE)
def _nearest(q, r):
    """The map entry nearest to r (reference8.nearest_code): an 8-step binary search written
    as selects (no branch: the block loop vectorizes, with gathers from the map in L1). ``q``
    is the map padded with +inf at [256], so the last step needs no bounds test."""
    i = 0
    i = i + 128 if q[i + 128] <= r else i
    i = i + 64 if q[i + 64] <= r else i
    i = i + 32 if q[i + 32] <= r else i
    i = i + 16 if q[i + 16] <= r else i
    i = i + 8 if q[i + 8] <= r else i
    i = i + 4 if q[i + 4] <= r else i
    i = i + 2 if q[i + 2] <= r else i
    i = i + 1 if q[i + 1] <= r else i
    return i + 1 if (q[i + 1] - r) < (r - q[i]) else i


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
        p = p - c0 * np.sign(c1 * s + c2 * d)
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
def _requantize(x, n, q, codes, lo):
    """Codes of x[:n] (one block) into codes[lo:lo+n]; returns the block's absmax."""
    mx = np.float32(0.0)
    for k in range(n):
        a = abs(x[k])
        if a > mx:
            mx = a
    inv = np.float32(1.0) / (mx if mx > 0 else np.float32(1.0))  # one division per block
    for k in range(n):
        codes[lo + k] = _nearest(q, x[k] * inv)
    return mx


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def adam(p, g, mq, ma, vq, va, qs, qu, bs, b1, omb1, b2, omb2, eps, wd_c, dm, ss, ibc, gs, clip):
    n = p.size
    nb = (n + bs - 1) // bs
    for b in prange(nb):
        lo = b * bs
        cnt = min(bs, n - lo)
        xm = np.empty(cnt, np.float32)
        xv = np.empty(cnt, np.float32)
        s0, s1 = ma[b], va[b]
        for k in range(cnt):
            i = lo + k
            pi, xm[k], xv[k] = _adam(
                p[i],
                _grad(g[i], gs, clip),
                qs[mq[i]] * s0,
                qu[vq[i]] * s1,
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
            p[i] = pi
        ma[b] = _requantize(xm, cnt, qs, mq, lo)
        va[b] = _requantize(xv, cnt, qu, vq, lo)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def one_state(kind, p, g, bq, ba, qs, bs, c0, c1, c2, c3, c4, c5, gs, clip):
    """A one-state rule (``kind``) over 8-bit state (bq, ba) with the map qs."""
    n = p.size
    nb = (n + bs - 1) // bs
    for b in prange(nb):
        lo = b * bs
        cnt = min(bs, n - lo)
        xb = np.empty(cnt, np.float32)
        s0 = ba[b]
        for k in range(cnt):
            i = lo + k
            p[i], xb[k] = _one(
                kind, p[i], _grad(g[i], gs, clip), qs[bq[i]] * s0, c0, c1, c2, c3, c4, c5
            )
        ba[b] = _requantize(xb, cnt, qs, bq, lo)
