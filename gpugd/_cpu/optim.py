"""CPU (Numba) mirror of ``kernels/optim.cu``: fused torch.optim updates.

The per-element rule of each optimizer is one ``inline='always'`` function (``_sgd``,
``_adagrad``, ...), the same math as the CUDA ``Rule`` structs; ``_apply_*`` runs it over
a contiguous range (serial, vectorizable), and the public drivers split large arrays
into ``CHUNK``-element tasks of a ``prange``. Scalars arrive already in the arrays'
dtype, with every step-dependent factor (bias corrections, decayed learning rate,
``1 − β``) computed once on the host, so the loops hold no mixed-precision arithmetic.
A state that a configuration does not use is passed as a 1-element dummy and never
indexed. ``error_model="numpy"``: a division by zero gives Inf/NaN as in CUDA and torch,
instead of Numba's Python-style ZeroDivisionError check, whose branch stops the loops from
vectorizing (Adam ran at 17 GB/s with it, scalar code).
Arguments are validated by ``gpugd.ops.optim``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .vector import CHUNK, PARALLEL_MIN

# ---------------------------------------------------------------- per-element rules


@njit(inline="always", error_model="numpy")
def _sgd(p, g, buf, lr, wd, mom, one_m_damp, nesterov, first, has_buf, gs):
    d = g * gs + wd * p
    if has_buf:
        buf = d if first else mom * buf + one_m_damp * d
        d = d + mom * buf if nesterov else buf
    return p - lr * d, buf


@njit(inline="always", error_model="numpy")
def _adagrad(p, g, acc, clr, wd, eps, gs):
    d = g * gs + wd * p
    acc = acc + d * d
    return p - clr * d / (np.sqrt(acc) + eps), acc


@njit(inline="always", error_model="numpy")
def _rmsprop(p, g, sq, gavg, buf, lr, alpha, one_m_alpha, eps, wd, mom, centered, has_buf, gs):
    d = g * gs + wd * p
    sq = alpha * sq + one_m_alpha * d * d
    if centered:
        gavg = alpha * gavg + one_m_alpha * d
        den = np.sqrt(sq - gavg * gavg) + eps
    else:
        den = np.sqrt(sq) + eps
    if has_buf:
        buf = mom * buf + d / den
        return p - lr * buf, sq, gavg, buf
    return p - lr * d / den, sq, gavg, buf


@njit(inline="always", error_model="numpy")
def _adam(
    p,
    g,
    m,
    v,
    vmax,
    b1,
    one_m_b1,
    b2,
    one_m_b2,
    eps,
    wd_c,
    decay_mul,
    amsgrad,
    step_size,
    bc2_sqrt,
    gs,
):
    # Weight decay without a branch: coupled (Adam) has wd_c = wd, decay_mul = 1; decoupled
    # (AdamW) has wd_c = 0, decay_mul = 1 − lr·wd. Both reduce exactly to the CUDA rule.
    p = p * decay_mul
    d = g * gs + wd_c * p
    m = b1 * m + one_m_b1 * d
    v = b2 * v + one_m_b2 * d * d
    vh = v
    if amsgrad:
        vmax = vmax if vmax > v else v
        vh = vmax
    return p - step_size * m / (np.sqrt(vh) / bc2_sqrt + eps), m, v, vmax


@njit(inline="always", error_model="numpy")
def _nadam(p, g, m, v, b1, one_m_b1, b2, one_m_b2, eps, wd_c, decay_mul, c_g, c_m, bc2, gs):
    p = p * decay_mul  # weight decay as in _adam: coupled or decoupled without a branch
    d = g * gs + wd_c * p
    m = b1 * m + one_m_b1 * d
    v = b2 * v + one_m_b2 * d * d
    den = np.sqrt(v / bc2) + eps
    p = p - c_g * d / den
    return p - c_m * m / den, m, v


# ---------------------------------------------------------------- serial range loops


@njit(cache=True, nogil=True, error_model="numpy")
def _apply_sgd(p, g, buf, lr, wd, mom, one_m_damp, nesterov, first, has_buf, gs):
    for i in range(p.size):
        b = buf[i] if has_buf else buf[0]
        p[i], b = _sgd(p[i], g[i], b, lr, wd, mom, one_m_damp, nesterov, first, has_buf, gs)
        if has_buf:
            buf[i] = b


@njit(cache=True, nogil=True, error_model="numpy")
def _apply_adagrad(p, g, acc, clr, wd, eps, gs):
    for i in range(p.size):
        p[i], acc[i] = _adagrad(p[i], g[i], acc[i], clr, wd, eps, gs)


@njit(cache=True, nogil=True, error_model="numpy")
def _apply_rmsprop(
    p, g, sq, gavg, buf, lr, alpha, one_m_alpha, eps, wd, mom, centered, has_buf, gs
):
    for i in range(p.size):
        ga = gavg[i] if centered else gavg[0]
        b = buf[i] if has_buf else buf[0]
        p[i], sq[i], ga, b = _rmsprop(
            p[i], g[i], sq[i], ga, b, lr, alpha, one_m_alpha, eps, wd, mom, centered, has_buf, gs
        )
        if centered:
            gavg[i] = ga
        if has_buf:
            buf[i] = b


@njit(cache=True, nogil=True, error_model="numpy")
def _apply_adam(
    p,
    g,
    m,
    v,
    vmax,
    b1,
    one_m_b1,
    b2,
    one_m_b2,
    eps,
    wd_c,
    decay_mul,
    amsgrad,
    step_size,
    bc2_sqrt,
    gs,
):
    # One loop per configuration, the flag a constant inside it: branch-free, vectorized.
    if amsgrad:
        for i in range(p.size):
            p[i], m[i], v[i], vmax[i] = _adam(
                p[i],
                g[i],
                m[i],
                v[i],
                vmax[i],
                b1,
                one_m_b1,
                b2,
                one_m_b2,
                eps,
                wd_c,
                decay_mul,
                True,
                step_size,
                bc2_sqrt,
                gs,
            )
    else:
        for i in range(p.size):
            p[i], m[i], v[i], _ = _adam(
                p[i],
                g[i],
                m[i],
                v[i],
                v[i],
                b1,
                one_m_b1,
                b2,
                one_m_b2,
                eps,
                wd_c,
                decay_mul,
                False,
                step_size,
                bc2_sqrt,
                gs,
            )


@njit(cache=True, nogil=True, error_model="numpy")
def _apply_nadam(p, g, m, v, b1, one_m_b1, b2, one_m_b2, eps, wd_c, decay_mul, c_g, c_m, bc2, gs):
    for i in range(p.size):
        p[i], m[i], v[i] = _nadam(
            p[i],
            g[i],
            m[i],
            v[i],
            b1,
            one_m_b1,
            b2,
            one_m_b2,
            eps,
            wd_c,
            decay_mul,
            c_g,
            c_m,
            bc2,
            gs,
        )


# ---------------------------------------------------------------- parallel drivers


@njit(inline="always", error_model="numpy")
def _part(a, lo, hi, used):
    """a[lo:hi] for a state in use, the untouched 1-element dummy otherwise."""
    return a[lo:hi] if used else a[0:1]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _par_sgd(p, g, buf, lr, wd, mom, one_m_damp, nesterov, first, has_buf, gs):
    n = p.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(c * CHUNK + CHUNK, n)
        _apply_sgd(
            p[lo:hi],
            g[lo:hi],
            _part(buf, lo, hi, has_buf),
            lr,
            wd,
            mom,
            one_m_damp,
            nesterov,
            first,
            has_buf,
            gs,
        )


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _par_adagrad(p, g, acc, clr, wd, eps, gs):
    n = p.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(c * CHUNK + CHUNK, n)
        _apply_adagrad(p[lo:hi], g[lo:hi], acc[lo:hi], clr, wd, eps, gs)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _par_rmsprop(p, g, sq, gavg, buf, lr, alpha, one_m_alpha, eps, wd, mom, centered, has_buf, gs):
    n = p.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(c * CHUNK + CHUNK, n)
        _apply_rmsprop(
            p[lo:hi],
            g[lo:hi],
            sq[lo:hi],
            _part(gavg, lo, hi, centered),
            _part(buf, lo, hi, has_buf),
            lr,
            alpha,
            one_m_alpha,
            eps,
            wd,
            mom,
            centered,
            has_buf,
            gs,
        )


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _par_adam(
    p,
    g,
    m,
    v,
    vmax,
    b1,
    one_m_b1,
    b2,
    one_m_b2,
    eps,
    wd_c,
    decay_mul,
    amsgrad,
    step_size,
    bc2_sqrt,
    gs,
):
    n = p.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(c * CHUNK + CHUNK, n)
        _apply_adam(
            p[lo:hi],
            g[lo:hi],
            m[lo:hi],
            v[lo:hi],
            _part(vmax, lo, hi, amsgrad),
            b1,
            one_m_b1,
            b2,
            one_m_b2,
            eps,
            wd_c,
            decay_mul,
            amsgrad,
            step_size,
            bc2_sqrt,
            gs,
        )


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _par_nadam(p, g, m, v, b1, one_m_b1, b2, one_m_b2, eps, wd_c, decay_mul, c_g, c_m, bc2, gs):
    n = p.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(c * CHUNK + CHUNK, n)
        _apply_nadam(
            p[lo:hi],
            g[lo:hi],
            m[lo:hi],
            v[lo:hi],
            b1,
            one_m_b1,
            b2,
            one_m_b2,
            eps,
            wd_c,
            decay_mul,
            c_g,
            c_m,
            bc2,
            gs,
        )


_DRIVERS = {
    "sgd": (_apply_sgd, _par_sgd),
    "adagrad": (_apply_adagrad, _par_adagrad),
    "rmsprop": (_apply_rmsprop, _par_rmsprop),
    "adam": (_apply_adam, _par_adam),
    "nadam": (_apply_nadam, _par_nadam),
}


def run(rule: str, p: np.ndarray, *args) -> None:
    """Apply ``rule`` to 1-D contiguous ``p`` (and the arrays/scalars in ``args``, in the
    order of the rule's ``_apply_*`` signature), in parallel for large arrays."""
    serial, parallel = _DRIVERS[rule]
    (parallel if p.size >= PARALLEL_MIN else serial)(p, *args)
