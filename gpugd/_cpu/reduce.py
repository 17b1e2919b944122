"""CPU (Numba) mirror of ``kernels/reduce.cu``: gradient statistics of many tensors in one
read-only pass over a tensor table (``gpugd._tensor_table``, row 0).

Per chunk of at most ``CHUNK`` elements of one tensor (the CUDA chunk size too): Σ x² in
float64, the count of non-finite elements, the count of exact zeros. A full chunk is read
as four interleaved sequential streams (more cache misses in flight per core, as in
``vector.sum_of_squares``), the inner loops vectorize (``{'reassoc', 'contract'}``: no
flag that assumes away NaN/Inf, which must be counted). Then, in task order, each tensor's
chunks are summed and the tensors' sums are summed: deterministic for any thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .tensor_table import SIZE_ROW, entry
from .vector import _REDUCE_MATH

CHUNK = 1 << 16  # elements per task: the CUDA reduce chunk
STREAM = CHUNK // 4


@njit(inline="always")
def _nonfinite(v):
    return np.int64(not (abs(v) < np.inf))  # NaN compares False, so it counts too


@njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _stats_stream(x):
    ssq, nf, z = 0.0, 0, 0
    for i in range(x.size):
        v = np.float64(x[i])
        ssq += v * v
        nf += _nonfinite(v)
        z += np.int64(v == 0.0)
    return ssq, nf, z


@njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _stats_four_streams(x0, x1, x2, x3):
    a0 = a1 = a2 = a3 = 0.0
    nf = z = 0
    for i in range(x0.size):
        v0 = np.float64(x0[i])
        v1 = np.float64(x1[i])
        v2 = np.float64(x2[i])
        v3 = np.float64(x3[i])
        a0 += v0 * v0
        a1 += v1 * v1
        a2 += v2 * v2
        a3 += v3 * v3
        nf += _nonfinite(v0) + _nonfinite(v1) + _nonfinite(v2) + _nonfinite(v3)
        z += np.int64(v0 == 0.0) + np.int64(v1 == 0.0) + np.int64(v2 == 0.0)
        z += np.int64(v3 == 0.0)
    return (a0 + a1) + (a2 + a3), nf, z


@njit(cache=True, nogil=True)
def _task(table, tasks, k, like, out):
    t, lo = tasks[k, 0], tasks[k, 1]
    n = min(CHUNK, table[SIZE_ROW, t] - lo)
    x = entry(table, 0, t, lo, n, like)
    if n == CHUNK:
        s = _stats_four_streams(
            x[:STREAM], x[STREAM : 2 * STREAM], x[2 * STREAM : 3 * STREAM], x[3 * STREAM :]
        )
    else:
        s = _stats_stream(x)
    out[k, 0], out[k, 1], out[k, 2] = s[0], s[1], s[2]


@njit(cache=True, nogil=True)
def _partials_serial(table, tasks, like, out):
    for k in range(tasks.shape[0]):
        _task(table, tasks, k, like, out)


@njit(cache=True, nogil=True, parallel=True)
def _partials_parallel(table, tasks, like, out):
    for k in prange(tasks.shape[0]):
        _task(table, tasks, k, like, out)


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


def stats(table: np.ndarray, tasks: np.ndarray, like: np.ndarray, parallel: bool):
    """(per-tensor (T, 3), totals (3,)) float64: Σ x², non-finite count, zero count."""
    partial = np.empty((tasks.shape[0], 3), np.float64)
    (_partials_parallel if parallel else _partials_serial)(table, tasks, like, partial)
    return finish(tasks, partial, table.shape[1])
