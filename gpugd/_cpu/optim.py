"""CPU (Numba) mirror of ``kernels/optim.cu``: fused torch.optim updates.

The per-element rule of each optimizer is one ``inline='always'`` function (``_sgd``,
``_adagrad``, ...), the same math as the CUDA ``Rule`` structs; ``_apply_*`` runs it over
a contiguous range (serial, vectorizable), and ``_multi_*`` runs it over the
``CHUNK``-element tasks of a tensor table (``gpugd._tensor_table``) in one ``prange``: a
large array is a one-tensor table, a model's list of arrays one table for all. Scalars
arrive already in the arrays' dtype, with every step-dependent factor (bias corrections,
decayed learning rate, ``1 − β``) computed once on the host, so the loops hold no
mixed-precision arithmetic.
A state that a configuration does not use is passed as a 1-element dummy and never
indexed. ``error_model="numpy"``: a division by zero gives Inf/NaN as in CUDA and torch,
instead of Numba's Python-style ZeroDivisionError check, whose branch stops the loops from
vectorizing (Adam ran at 17 GB/s with it, scalar code).
Arguments are validated by ``gpugd.ops.optim``.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange, types
from numba.extending import overload

from .. import _tensor_table as layout
from .precision import ld, mix32, put, st
from .tensor_table import OUT_ROW, SIZE_ROW, entry, entry_or_none
from .vector import CHUNK, PARALLEL_MIN
from .vmath import fma

# Every a·b + c of the rules is an explicit fused multiply-add (``vmath.fma``, one rounding),
# as in kernels/optim.cu: ~10% fewer instructions per element than separate products and
# sums (the bfloat16 Adam step sits near the edge between arithmetic and memory on two
# cores), and the same rounding on every path. Contraction left to LLVM (fastmath
# ``contract``) fused differently in the float32 and the half-precision loops, so master
# weights stopped equalling an fp32 run bit for bit.
# Launch Numba's threading layer now, before any kernel is compiled or loaded. Its symbols
# (``get_thread_id``, which ``_before`` calls) exist in the process only once it runs;
# compiling a parallel function launches it, loading one from the cache does not. Without
# this, a process that compiles a new tensor-table driver over a ``_before`` that an
# earlier process cached aborts in LLVM ("Symbol not found: get_thread_id";
# tests/test_numba_cache.py).
get_num_threads()

_RULE = dict(inline="always", error_model="numpy")
_LOOP = dict(cache=True, nogil=True, error_model="numpy")

# ---------------------------------------------------------------- per-element rules


@njit(**_RULE)
def _sgd(p, g, buf, lr, wd, mom, one_m_damp, nesterov, first, has_buf):
    d = fma(wd, p, g)
    if has_buf:
        buf = d if first else fma(mom, buf, one_m_damp * d)
        d = fma(mom, buf, d) if nesterov else buf
    return fma(-lr, d, p), buf


@njit(**_RULE)
def _adagrad(p, g, acc, clr, wd, eps):
    d = fma(wd, p, g)
    acc = fma(d, d, acc)
    return p - clr * d / (np.sqrt(acc) + eps), acc


@njit(**_RULE)
def _rmsprop(p, g, sq, gavg, buf, lr, alpha, one_m_alpha, eps, wd, mom, centered, has_buf):
    d = fma(wd, p, g)
    sq = fma(alpha, sq, one_m_alpha * d * d)
    if centered:
        gavg = fma(alpha, gavg, one_m_alpha * d)
        den = np.sqrt(fma(-gavg, gavg, sq)) + eps
    else:
        den = np.sqrt(sq) + eps
    if has_buf:
        buf = fma(mom, buf, d / den)
        return fma(-lr, buf, p), sq, gavg, buf
    return p - lr * d / den, sq, gavg, buf


@njit(**_RULE)
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
    inv_bc2_sqrt,
):
    # Weight decay without a branch: coupled (Adam) has wd_c = wd, decay_mul = 1; decoupled
    # (AdamW) has wd_c = 0, decay_mul = 1 − lr·wd. Both reduce exactly to the CUDA rule.
    p = p * decay_mul
    d = fma(wd_c, p, g)
    m = fma(b1, m, one_m_b1 * d)
    v = fma(b2, v, one_m_b2 * d * d)
    vh = v
    if amsgrad:
        vmax = vmax if vmax > v else v
        vh = vmax
    return p - step_size * m / fma(np.sqrt(vh), inv_bc2_sqrt, eps), m, v, vmax


@njit(**_RULE)
def _nadam(p, g, m, v, b1, one_m_b1, b2, one_m_b2, eps, wd_c, decay_mul, c_g, c_m, inv_bc2):
    p = p * decay_mul  # weight decay as in _adam: coupled or decoupled without a branch
    d = fma(wd_c, p, g)
    m = fma(b1, m, one_m_b1 * d)
    v = fma(b2, v, one_m_b2 * d * d)
    return p - fma(c_g, d, c_m * m) / (np.sqrt(v * inv_bc2) + eps), m, v


@njit(**_RULE)
def _lion(p, g, m, lr, b1, one_m_b1, b2, one_m_b2, decay_mul):
    # Decoupled weight decay as lion-pytorch. Numba's np.sign keeps c's dtype and is the
    # CUDA rule's select: ±1, or c itself for ±0 and NaN.
    p = p * decay_mul
    c = fma(b1, m, one_m_b1 * g)
    return fma(-lr, np.sign(c), p), fma(b2, m, one_m_b2 * g)


# ---------------------------------------------------------------- serial range loops
# Every array is read through ``ld`` and written through ``st`` (gpugd._cpu.precision):
# float32/float64 arrays as they are, half-precision ones as their bit views, converted
# to float32 around the rule. ``p`` holds the weights the rule updates (the fp32 master
# copy when there is one); ``out`` is None, or the half-precision parameters that receive
# round(p) in the same loop; ``rnd`` is None (round to nearest even) or (key, base) for
# stochastic rounding of bfloat16 stores of the parameters.


@njit(**_RULE)
def _grad(g, gs, clip):
    """The gradient a rule sees: g·s clamped to [−clip, clip] (clip = ∞: off). Written so
    NaN passes through (a NaN compares False), as torch's clamp does."""
    d = g * gs
    d = clip if d > clip else d
    return -clip if d < -clip else d


@njit(inline="always")
def _store_p(p, out, i, x, rnd):
    st(p, i, x, rnd)
    put(out, i, x, rnd)


@njit(**_LOOP)
def _apply_sgd(p, g, buf, out, rnd, lr, wd, mom, one_m_damp, nesterov, first, has_buf, gs, clip):
    for i in range(p.size):
        b = ld(buf, i) if has_buf else ld(buf, 0)
        pi, b = _sgd(
            ld(p, i),
            _grad(ld(g, i), gs, clip),
            b,
            lr,
            wd,
            mom,
            one_m_damp,
            nesterov,
            first,
            has_buf,
        )
        _store_p(p, out, i, pi, rnd)
        if has_buf:
            st(buf, i, b, None)


@njit(**_LOOP)
def _apply_adagrad(p, g, acc, out, rnd, clr, wd, eps, gs, clip):
    for i in range(p.size):
        pi, a = _adagrad(ld(p, i), _grad(ld(g, i), gs, clip), ld(acc, i), clr, wd, eps)
        _store_p(p, out, i, pi, rnd)
        st(acc, i, a, None)


@njit(**_LOOP)
def _apply_rmsprop(
    p, g, sq, gavg, buf, out, rnd, lr, alpha, one_m_alpha, eps, wd, mom, centered, has_buf, gs, clip
):
    for i in range(p.size):
        ga = ld(gavg, i) if centered else ld(gavg, 0)
        b = ld(buf, i) if has_buf else ld(buf, 0)
        pi, s, ga, b = _rmsprop(
            ld(p, i),
            _grad(ld(g, i), gs, clip),
            ld(sq, i),
            ga,
            b,
            lr,
            alpha,
            one_m_alpha,
            eps,
            wd,
            mom,
            centered,
            has_buf,
        )
        _store_p(p, out, i, pi, rnd)
        st(sq, i, s, None)
        if centered:
            st(gavg, i, ga, None)
        if has_buf:
            st(buf, i, b, None)


@njit(**_LOOP)
def _apply_adam(
    p,
    g,
    m,
    v,
    vmax,
    out,
    rnd,
    b1,
    one_m_b1,
    b2,
    one_m_b2,
    eps,
    wd_c,
    decay_mul,
    amsgrad,
    step_size,
    inv_bc2_sqrt,
    gs,
    clip,
):
    # One loop per configuration, the flag a constant inside it: branch-free, vectorized.
    if amsgrad:
        for i in range(p.size):
            pi, mi, vi, wi = _adam(
                ld(p, i),
                _grad(ld(g, i), gs, clip),
                ld(m, i),
                ld(v, i),
                ld(vmax, i),
                b1,
                one_m_b1,
                b2,
                one_m_b2,
                eps,
                wd_c,
                decay_mul,
                True,
                step_size,
                inv_bc2_sqrt,
            )
            _store_p(p, out, i, pi, rnd)
            st(m, i, mi, None)
            st(v, i, vi, None)
            st(vmax, i, wi, None)
    else:
        for i in range(p.size):
            vi = ld(v, i)
            pi, mi, vi, _ = _adam(
                ld(p, i),
                _grad(ld(g, i), gs, clip),
                ld(m, i),
                vi,
                vi,
                b1,
                one_m_b1,
                b2,
                one_m_b2,
                eps,
                wd_c,
                decay_mul,
                False,
                step_size,
                inv_bc2_sqrt,
            )
            _store_p(p, out, i, pi, rnd)
            st(m, i, mi, None)
            st(v, i, vi, None)


@njit(**_LOOP)
def _apply_nadam(
    p,
    g,
    m,
    v,
    out,
    rnd,
    b1,
    one_m_b1,
    b2,
    one_m_b2,
    eps,
    wd_c,
    decay_mul,
    c_g,
    c_m,
    inv_bc2,
    gs,
    clip,
):
    for i in range(p.size):
        pi, mi, vi = _nadam(
            ld(p, i),
            _grad(ld(g, i), gs, clip),
            ld(m, i),
            ld(v, i),
            b1,
            one_m_b1,
            b2,
            one_m_b2,
            eps,
            wd_c,
            decay_mul,
            c_g,
            c_m,
            inv_bc2,
        )
        _store_p(p, out, i, pi, rnd)
        st(m, i, mi, None)
        st(v, i, vi, None)


@njit(**_LOOP)
def _apply_lion(p, g, m, out, rnd, lr, b1, one_m_b1, b2, one_m_b2, decay_mul, gs, clip):
    for i in range(p.size):
        pi, mi = _lion(
            ld(p, i), _grad(ld(g, i), gs, clip), ld(m, i), lr, b1, one_m_b1, b2, one_m_b2, decay_mul
        )
        _store_p(p, out, i, pi, rnd)
        st(m, i, mi, None)


# ---------------------------------------------------------------- tensor-table drivers


@njit(cache=True, nogil=True)
def _before(p, scratch, want_stats, lp):
    """With ``want_stats``, p's values before the rule rewrites them, copied into this
    thread's scratch row; else the placeholder ``lp``. A loop, not ``old[:] = p``: Numba's
    slice assignment guards against overlap and cost 0.33 ns/element against this loop's
    0.07 (4096 fp32 in L1, one core), which made the statistics cost as much as the Adam
    update itself."""
    if not want_stats:
        return lp
    old = scratch[get_thread_id(), : p.size]
    for i in range(p.size):
        old[i] = p[i]
    return old


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _update_stats(p, old):
    """Σ p_new² and Σ (p_new − p_old)² of a chunk that is still in cache (float64)."""
    pn = dp = 0.0
    for i in range(p.size):
        a = np.float64(ld(p, i))
        d = a - np.float64(ld(old, i))
        pn += a * a
        dp += d * d
    return pn, dp


def _task_rnd(key, t, lo):
    """The stochastic-rounding pair of one task: None stays None."""


@overload(_task_rnd, inline="always")
def _task_rnd_impl(key, t, lo):
    if isinstance(key, types.NoneType):
        return lambda key, t, lo: None
    return lambda key, t, lo: (mix32(key, t), np.int64(lo))


# One prange over the chunk tasks of every tensor in the table (a whole model, or one large
# array split into CHUNK-element tasks): the mirror of the CUDA apply_table. ``likes`` holds
# a 1-element array of the dtype (or bit view) of p, g and the states: an unused state's
# table entry is 0 and comes back as that dummy. ``out_like`` is None, or a 1-element array
# of the half-precision parameters' view: then row OUT_ROW lists them and p is the master.


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _multi_sgd(
    table,
    tasks,
    chunk,
    likes,
    out_like,
    key,
    stats,
    want_stats,
    scratch,
    lr,
    wd,
    mom,
    one_m_damp,
    nesterov,
    first,
    has_buf,
    gs,
    clip,
):
    lp, lg, ls = likes
    for k in prange(tasks.shape[0]):
        t, lo = tasks[k, 0], tasks[k, 1]
        n = min(chunk, table[SIZE_ROW, t] - lo)
        p = entry(table, 0, t, lo, n, lp)
        old = _before(p, scratch, want_stats, lp)
        _apply_sgd(
            p,
            entry(table, 1, t, lo, n, lg),
            entry(table, 2, t, lo, n, ls),
            entry_or_none(table, OUT_ROW, t, lo, n, out_like),
            _task_rnd(key, t, lo),
            lr,
            wd,
            mom,
            one_m_damp,
            nesterov,
            first,
            has_buf,
            gs,
            clip,
        )
        if want_stats:
            stats[k, 0], stats[k, 1] = _update_stats(p, old)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _multi_adagrad(
    table, tasks, chunk, likes, out_like, key, stats, want_stats, scratch, clr, wd, eps, gs, clip
):
    lp, lg, ls = likes
    for k in prange(tasks.shape[0]):
        t, lo = tasks[k, 0], tasks[k, 1]
        n = min(chunk, table[SIZE_ROW, t] - lo)
        p = entry(table, 0, t, lo, n, lp)
        old = _before(p, scratch, want_stats, lp)
        _apply_adagrad(
            p,
            entry(table, 1, t, lo, n, lg),
            entry(table, 2, t, lo, n, ls),
            entry_or_none(table, OUT_ROW, t, lo, n, out_like),
            _task_rnd(key, t, lo),
            clr,
            wd,
            eps,
            gs,
            clip,
        )
        if want_stats:
            stats[k, 0], stats[k, 1] = _update_stats(p, old)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _multi_rmsprop(
    table,
    tasks,
    chunk,
    likes,
    out_like,
    key,
    stats,
    want_stats,
    scratch,
    lr,
    alpha,
    one_m_alpha,
    eps,
    wd,
    mom,
    centered,
    has_buf,
    gs,
    clip,
):
    lp, lg, ls = likes
    for k in prange(tasks.shape[0]):
        t, lo = tasks[k, 0], tasks[k, 1]
        n = min(chunk, table[SIZE_ROW, t] - lo)
        p = entry(table, 0, t, lo, n, lp)
        old = _before(p, scratch, want_stats, lp)
        _apply_rmsprop(
            p,
            entry(table, 1, t, lo, n, lg),
            entry(table, 2, t, lo, n, ls),
            entry(table, 3, t, lo, n, ls),
            entry(table, 4, t, lo, n, ls),
            entry_or_none(table, OUT_ROW, t, lo, n, out_like),
            _task_rnd(key, t, lo),
            lr,
            alpha,
            one_m_alpha,
            eps,
            wd,
            mom,
            centered,
            has_buf,
            gs,
            clip,
        )
        if want_stats:
            stats[k, 0], stats[k, 1] = _update_stats(p, old)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _multi_adam(
    table,
    tasks,
    chunk,
    likes,
    out_like,
    key,
    stats,
    want_stats,
    scratch,
    b1,
    one_m_b1,
    b2,
    one_m_b2,
    eps,
    wd_c,
    decay_mul,
    amsgrad,
    step_size,
    inv_bc2_sqrt,
    gs,
    clip,
):
    lp, lg, ls = likes
    for k in prange(tasks.shape[0]):
        t, lo = tasks[k, 0], tasks[k, 1]
        n = min(chunk, table[SIZE_ROW, t] - lo)
        p = entry(table, 0, t, lo, n, lp)
        old = _before(p, scratch, want_stats, lp)
        _apply_adam(
            p,
            entry(table, 1, t, lo, n, lg),
            entry(table, 2, t, lo, n, ls),
            entry(table, 3, t, lo, n, ls),
            entry(table, 4, t, lo, n, ls),
            entry_or_none(table, OUT_ROW, t, lo, n, out_like),
            _task_rnd(key, t, lo),
            b1,
            one_m_b1,
            b2,
            one_m_b2,
            eps,
            wd_c,
            decay_mul,
            amsgrad,
            step_size,
            inv_bc2_sqrt,
            gs,
            clip,
        )
        if want_stats:
            stats[k, 0], stats[k, 1] = _update_stats(p, old)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _multi_nadam(
    table,
    tasks,
    chunk,
    likes,
    out_like,
    key,
    stats,
    want_stats,
    scratch,
    b1,
    one_m_b1,
    b2,
    one_m_b2,
    eps,
    wd_c,
    decay_mul,
    c_g,
    c_m,
    inv_bc2,
    gs,
    clip,
):
    lp, lg, ls = likes
    for k in prange(tasks.shape[0]):
        t, lo = tasks[k, 0], tasks[k, 1]
        n = min(chunk, table[SIZE_ROW, t] - lo)
        p = entry(table, 0, t, lo, n, lp)
        old = _before(p, scratch, want_stats, lp)
        _apply_nadam(
            p,
            entry(table, 1, t, lo, n, lg),
            entry(table, 2, t, lo, n, ls),
            entry(table, 3, t, lo, n, ls),
            entry_or_none(table, OUT_ROW, t, lo, n, out_like),
            _task_rnd(key, t, lo),
            b1,
            one_m_b1,
            b2,
            one_m_b2,
            eps,
            wd_c,
            decay_mul,
            c_g,
            c_m,
            inv_bc2,
            gs,
            clip,
        )
        if want_stats:
            stats[k, 0], stats[k, 1] = _update_stats(p, old)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _multi_lion(
    table,
    tasks,
    chunk,
    likes,
    out_like,
    key,
    stats,
    want_stats,
    scratch,
    lr,
    b1,
    one_m_b1,
    b2,
    one_m_b2,
    decay_mul,
    gs,
    clip,
):
    lp, lg, ls = likes
    for k in prange(tasks.shape[0]):
        t, lo = tasks[k, 0], tasks[k, 1]
        n = min(chunk, table[SIZE_ROW, t] - lo)
        p = entry(table, 0, t, lo, n, lp)
        old = _before(p, scratch, want_stats, lp)
        _apply_lion(
            p,
            entry(table, 1, t, lo, n, lg),
            entry(table, 2, t, lo, n, ls),
            entry_or_none(table, OUT_ROW, t, lo, n, out_like),
            _task_rnd(key, t, lo),
            lr,
            b1,
            one_m_b1,
            b2,
            one_m_b2,
            decay_mul,
            gs,
            clip,
        )
        if want_stats:
            stats[k, 0], stats[k, 1] = _update_stats(p, old)


_NO_STATS = np.zeros((1, 2), np.float64)
STATS_CHUNK = 1 << 12  # task size when update statistics are taken (copy and sums in L1)

_DRIVERS = {
    "sgd": (_apply_sgd, _multi_sgd),
    "adagrad": (_apply_adagrad, _multi_adagrad),
    "rmsprop": (_apply_rmsprop, _multi_rmsprop),
    "adam": (_apply_adam, _multi_adam),
    "nadam": (_apply_nadam, _multi_nadam),
    "lion": (_apply_lion, _multi_lion),
}


@njit(cache=True)
def task_key(key, t):
    """The stochastic-rounding key of tensor ``t`` (what ``_task_rnd`` gives a task)."""
    return mix32(key, t)


@functools.lru_cache(maxsize=32)
def _one_tensor_tasks(n: int) -> np.ndarray:
    """The task list of one n-element tensor, memoized (shared: never written). Rebuilt on
    every call it cost ~250 µs once a step had evicted NumPy's code and data from the
    caches: 3% of a 2^24-element Adam step."""
    return layout.tasks([n], CHUNK)


@functools.lru_cache(maxsize=64)
def placeholder(dtype: np.dtype, ndim: int = 1) -> np.ndarray:
    """A one-element array of ``dtype`` (shared, never written): what the table kernels take
    to know a row's element type. Kept, because an allocation or a slice of the caller's
    array costs tens of µs once a step has evicted NumPy's code from the caches."""
    return np.zeros((1,) * ndim, dtype)


def run(
    rule: str,
    p: np.ndarray,
    g: np.ndarray,
    states: list,
    scalars: tuple,
    where: list[int],
    out: np.ndarray | None = None,
    key: np.uint32 | None = None,
) -> None:
    """Apply ``rule`` to one tensor: 1-D contiguous ``p``, ``g``, the rule's states (kernel
    slot order, None where unused) and ``out`` (the half-precision parameters beside a
    master ``p``), as the kernels take them (``precision.kernel_view``), with the scalars
    of its ``_apply_*`` signature; ``where``: the addresses of p, g, the states and out (0
    for None), as the caller's validation read them; ``key``: stochastic rounding. Small
    tensors run serially (a parallel region costs more than it saves), large ones as a
    one-tensor table."""
    serial, multi = _DRIVERS[rule]
    given = [s for s in states if s is not None]
    ls = placeholder((given[0] if given else p).dtype)  # stands in for unused states
    if p.size < PARALLEL_MIN:
        rnd = None if key is None else (task_key(key, 0), np.int64(0))
        serial(p, g, *(ls if s is None else s for s in states), out, rnd, *scalars)
        return
    *rows, out_at = where
    table = np.array([*rows, *[0] * (SIZE_ROW - len(rows)), p.size, out_at], np.int64)
    multi(
        table.reshape(-1, 1),
        _one_tensor_tasks(p.size),
        CHUNK,
        (placeholder(p.dtype), placeholder(g.dtype), ls),
        None if out is None else placeholder(out.dtype),
        key,
        _NO_STATS,
        False,
        placeholder(p.dtype, 2),
        *scalars,
    )


def run_table(
    rule: str,
    table: np.ndarray,
    tasks: np.ndarray,
    likes: tuple,
    *scalars,
    out_like: np.ndarray | None = None,
    key: np.uint32 | None = None,
    stats=None,
    chunk: int = CHUNK,
) -> None:
    """Apply ``rule`` to every tensor of a table (``gpugd._tensor_table``): one parallel
    region for all. ``likes``: 1-element arrays of the dtypes (bit views for half formats,
    ``precision.kernel_view``) of p, g and the states. ``out_like``: with fp32 master
    weights in row 0, a 1-element array of the half-precision parameters' view (row
    ``OUT_ROW``). ``key``: a uint32 seed for stochastic rounding of bfloat16 parameters,
    None for round-to-nearest-even. ``stats``: a float64 (n_tasks, 2) array to receive each
    task's Σ p_new² and Σ Δp² (for monitoring): each task first copies its p into a
    per-thread scratch row, so ``tasks`` should then be cut in ``STATS_CHUNK``-element
    pieces (``chunk``) that keep the copy and the sums in L1."""
    want = stats is not None
    out = stats if want else _NO_STATS
    lp = likes[0]
    scratch = np.empty((get_num_threads(), chunk), lp.dtype) if want else lp.reshape(1, 1)
    _DRIVERS[rule][1](table, tasks, chunk, likes, out_like, key, out, want, scratch, *scalars)
