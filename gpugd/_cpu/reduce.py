"""CPU (Numba) mirror of ``kernels/reduce.cu``: gradient statistics of many tensors in one
read-only pass over a tensor table (``gpugd._tensor_table``, row 0).

Per chunk of at most ``CHUNK`` elements of one tensor (the CUDA chunk size too): Σ x² in
float64, the count of exact zeros when asked (the monitor's dead-unit fraction), and the
count of non-finite elements — taken only for a chunk whose Σ x² is not finite, so the hot
loop is the plain sum of squares. float16/bfloat16 tensors arrive as their integer bit
views (``precision.kernel_view``) and are widened on load. A chunk (a tensor's last, short
one too: a list of 161 ResNet-50 tensors is ~half short chunks) is read as four
interleaved sequential streams (more cache misses in flight per core), or as one on AMD
Zen 4, as ``vector.sum_of_squares`` does (``vector.FOUR_STREAMS``); the inner loops
vectorize (``{'reassoc', 'contract'}``: no flag that assumes away NaN/Inf). Then, in task
order, each tensor's chunks are summed and the tensors' sums are summed: deterministic for
any thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .precision import ld
from .tensor_table import SIZE_ROW, entry
from .vector import _REDUCE_MATH, FOUR_STREAMS, _ssq_four_streams, _ssq_stream

CHUNK = 1 << 16  # elements per task: the CUDA reduce chunk


# The zero counts are integer sums in the squares' loop (LLVM: a compare, a mask and a
# subtract per vector). They were float32 sums of 0/1 (two cores, Zen 4, 1,000 tensors of
# 64-8191 fp32, round-robin medians: 0.79 → 0.35 ms with the integer counts and one stream;
# the counts alone, four streams: 0.98 → 0.85). A separate 8-lane count loop after the
# squares (chunk then in L1/L2) was 2% faster over those tensors and 8% slower over
# ResNet-50's gradients on Zen 3 (3.5 → 3.8 ms: full chunks re-read from L2), so the counts
# stay in the squares' loop.


@njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _ssq_zeros_stream(x):
    ssq, z = 0.0, 0
    for i in range(x.size):
        e = ld(x, i)
        v = np.float64(e)
        ssq += v * v
        z += 1 if e == 0 else 0
    return ssq, np.float64(z)


@njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _ssq_zeros_four_streams(x0, x1, x2, x3):
    a0 = a1 = a2 = a3 = 0.0
    z0 = z1 = z2 = z3 = 0
    for i in range(x0.size):
        e0, e1, e2, e3 = ld(x0, i), ld(x1, i), ld(x2, i), ld(x3, i)
        v0, v1, v2, v3 = np.float64(e0), np.float64(e1), np.float64(e2), np.float64(e3)
        a0 += v0 * v0
        a1 += v1 * v1
        a2 += v2 * v2
        a3 += v3 * v3
        z0 += 1 if e0 == 0 else 0
        z1 += 1 if e1 == 0 else 0
        z2 += 1 if e2 == 0 else 0
        z3 += 1 if e3 == 0 else 0
    return (a0 + a1) + (a2 + a3), np.float64((z0 + z1) + (z2 + z3))


@njit(cache=True, nogil=True)
def _count_nonfinite(x):
    n = 0
    for i in range(x.size):
        n += not (abs(ld(x, i)) < np.inf)  # NaN compares False, so it counts too
    return n


@njit(cache=True, nogil=True)
def chunk_stats(x, zeros):
    """(Σ x², zero count or 0) of one chunk: the per-element work of every task (and of the
    benchmarks' compute bound, ``ceilings.reduce_math``)."""
    if not FOUR_STREAMS:
        return _ssq_zeros_stream(x) if zeros else (_ssq_stream(x), 0.0)
    # four equal streams and the < 4 elements left over
    q = x.size // 4
    q0, q1, q2, q3, rest = x[:q], x[q : 2 * q], x[2 * q : 3 * q], x[3 * q : 4 * q], x[4 * q :]
    if zeros:
        s, z = _ssq_zeros_four_streams(q0, q1, q2, q3)
        s_rest, z_rest = _ssq_zeros_stream(rest)
        return s + s_rest, z + z_rest
    return _ssq_four_streams(q0, q1, q2, q3) + _ssq_stream(rest), 0.0


@njit(cache=True, nogil=True)
def _task(table, tasks, k, like, out, zeros):
    t, lo = tasks[k, 0], tasks[k, 1]
    x = entry(table, 0, t, lo, min(CHUNK, table[SIZE_ROW, t] - lo), like)
    s, z = chunk_stats(x, zeros)
    out[k, 0], out[k, 1], out[k, 2] = s, 0.0, z
    # Σ x² is finite exactly when every element is (fp32 squares cannot overflow a double;
    # fp64 ones can, and then the norm is infinite too): count only then, off the hot loop.
    if not (abs(s) < np.inf):
        out[k, 1] = _count_nonfinite(x)


@njit(cache=True, nogil=True)
def _stats_serial(table, tasks, like, zeros):
    partial = np.empty((tasks.shape[0], 3), np.float64)
    for k in range(tasks.shape[0]):
        _task(table, tasks, k, like, partial, zeros)
    return _results(tasks, partial, table.shape[1])


@njit(cache=True, nogil=True, parallel=True)
def _stats_parallel(table, tasks, like, zeros):
    partial = np.empty((tasks.shape[0], 3), np.float64)
    for k in prange(tasks.shape[0]):
        _task(table, tasks, k, like, partial, zeros)
    return _results(tasks, partial, table.shape[1])


@njit(cache=True, nogil=True)
def _finish(tasks, partial, per_tensor, total):
    """per_tensor[t] = Σ of t's chunk partials in task order; total = Σ over tensors."""
    per_tensor[:] = 0.0
    for k in range(tasks.shape[0]):
        for j in range(partial.shape[1]):
            per_tensor[tasks[k, 0], j] += partial[k, j]
    total[:] = 0.0
    for t in range(per_tensor.shape[0]):
        for j in range(partial.shape[1]):
            total[j] += per_tensor[t, j]


def finish(tasks: np.ndarray, partial: np.ndarray, ntensors: int):
    """Fold per-task partials (n_tasks, k) into per-tensor sums (T, k) and totals (k,)."""
    per_tensor = np.empty((ntensors, partial.shape[1]), np.float64)
    total = np.empty(partial.shape[1], np.float64)
    _finish(tasks, partial, per_tensor, total)
    return per_tensor, total


@njit(cache=True, nogil=True)
def _results(tasks, partial, ntensors):
    """The fold in task order, straight into the arrays the caller hands on: ([‖x‖₂],
    per-tensor norms, [non-finite; zero] counts (2, T), flag [any non-finite] int32, and
    the flag as bool). The caller takes its scalars by indexing (one NumPy code path, warm
    after the first) instead of building them with np.float64/np.bool_/np.array: cold after
    a step, each such NumPy call cost 10-35 µs (two cores, Zen 4, 1,000 tensors: the call
    1.00 → 0.97 ms, cache swept before each, round-robin medians)."""
    norms = np.zeros(ntensors, np.float64)
    counts = np.zeros((2, ntensors), np.int64)
    for k in range(tasks.shape[0]):
        t = tasks[k, 0]
        norms[t] += partial[k, 0]
        counts[0, t] += np.int64(partial[k, 1])
        counts[1, t] += np.int64(partial[k, 2])
    total, bad = 0.0, 0
    for t in range(ntensors):
        total += norms[t]
        bad += counts[0, t]
        norms[t] = np.sqrt(norms[t])
    flag = np.array([np.int32(bad > 0)])
    return np.array([np.sqrt(total)]), norms, counts, flag, flag != 0


def stats(table: np.ndarray, tasks: np.ndarray, like: np.ndarray, parallel: bool, zeros: bool):
    """([‖x‖₂ over all], per-tensor norms (T,), counts (2, T): non-finite and zero (the
    zero row 0 unless ``zeros``), flag (1,) int32, [any non-finite] bool): the pass and its
    fold into the results in one Numba call (``_results``)."""
    return (_stats_parallel if parallel else _stats_serial)(table, tasks, like, zeros)


# ---- the mean of K same-shape buffers, one pass -------------------------------------------


@njit(cache=True, nogil=True, parallel=True)
def _average(table, out, inv, like):
    """out = (b₀ + … + b_{K−1})·inv, chunk by chunk: each output chunk stays in cache
    while the K inputs stream through once. ``table`` (K, 1) holds the inputs' addresses;
    an input that is ``out`` itself must come first (the caller orders them)."""
    n = out.size
    K = table.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo = c * CHUNK
        m = min(CHUNK, n - lo)
        o = out[lo : lo + m]
        first = entry(table, 0, 0, lo, m, like)
        for i in range(m):
            o[i] = first[i]
        for k in range(1, K):
            b = entry(table, k, 0, lo, m, like)
            for i in range(m):
                o[i] += b[i]
        for i in range(m):
            o[i] *= inv


def average(out: np.ndarray, buffers: list, address) -> None:
    """out ← mean of ``buffers`` (1-D, out's dtype and size; out may be one of them)."""
    table = np.array([[address(b)] for b in buffers], np.int64)
    _average(table, out, out.dtype.type(1.0 / len(buffers)), np.zeros(1, out.dtype))
