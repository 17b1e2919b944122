"""CPU (Numba) mirror of ``kernels/vector.cu``: axpy_, scale_, sum_of_squares.

Each op has a serial path for small arrays (a thread team costs more than it saves below
``PARALLEL_MIN`` elements) and a parallel path over fixed ``CHUNK``-element chunks whose
inner loop is the serial kernel applied to a slice: a unit-stride loop over a contiguous
view, which LLVM vectorizes (an index loop written inline in a ``prange`` body is not
vectorized by Numba 0.68 and runs at half the bandwidth). Chunk boundaries do not depend
on the thread count, so ``sum_of_squares`` is bitwise deterministic on any machine.
Arguments are 1-D contiguous arrays of one float dtype, already validated by ``gpugd.ops``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .host import AMD_ZEN, AVX512
from .precision import ld

CHUNK = 1 << 14  # elements per parallel work item (64 KiB of fp32): fits L2 per pass
# Read a sum of squares as four interleaved sequential streams per thread (more cache
# misses in flight: ~1.3x a single stream on the 2-core Intel VMs), except on AMD Zen 4
# (Zen with AVX-512), where one stream is faster (2-core, round-robin medians, one stream
# against four: this module's 2^24 fp32 sum 2.31 → 2.14 ms, the read loop 2.00; the tensor
# table's (``gpugd._cpu.reduce``, which follows this) 2^24 1.63 → 1.53, ResNet-50's 161
# gradients 2.94 → 2.79, 1,000 tensors of 64-8191 elements 0.40 → 0.27). Zen 5 (2-core VM,
# one stream / four, two runs: ``python -m benchmarks.experiments.codegen_choices --choice
# streams``, ``benchmarks/results/cpu-codegen-choices-2026-12-08-zen5.txt``): the table's
# 2^24 1.50, 1.47 / 1.56, 1.58 ms; 1,000 tensors 0.63, 0.63 / 0.72, 0.74.
FOUR_STREAMS = not (AMD_ZEN and AVX512)
PARALLEL_MIN = 1 << 17  # below this the serial path is faster on every machine we measured
# Reassociation lets LLVM vectorize the reductions; no 'nnan'/'ninf', so NaN and Inf survive.
_REDUCE_MATH = {"reassoc", "contract"}


@njit(cache=True, nogil=True)
def _axpy_serial(x, a, y):
    for i in range(x.size):
        x[i] += a * y[i]


@njit(cache=True, nogil=True)
def _axpy_two_streams(x0, y0, x1, y1, a):
    # Two sub-chunks at once: four read streams per thread keep more misses in flight
    # (measured ~4% faster than one sub-chunk on the 2-core CI machine).
    for i in range(x0.size):
        x0[i] += a * y0[i]
        x1[i] += a * y1[i]


@njit(cache=True, nogil=True, parallel=True)
def _axpy_parallel(x, a, y):
    n = x.size
    ntasks = (n + 2 * CHUNK - 1) // (2 * CHUNK)
    for t in prange(ntasks):
        lo = t * 2 * CHUNK
        mid = lo + CHUNK
        if lo + 2 * CHUNK <= n:
            _axpy_two_streams(x[lo:mid], y[lo:mid], x[mid : mid + CHUNK], y[mid : mid + CHUNK], a)
        else:
            _axpy_serial(x[lo:], a, y[lo:])


@njit(cache=True, nogil=True)
def _scale_serial(x, a):
    for i in range(x.size):
        x[i] *= a


@njit(cache=True, nogil=True, parallel=True)
def _scale_parallel(x, a):
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        _scale_serial(x[lo:hi], a)


@njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _ssq_stream(x):
    acc = 0.0
    for i in range(x.size):
        v = np.float64(ld(x, i))  # half formats: their bit views
        acc += v * v
    return acc


@njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _ssq_four_streams(x0, x1, x2, x3):
    # Four independent sequential streams per thread keep more cache misses in flight than
    # one: on the 2-core CI machine this reads ~1.3x faster than a single stream.
    a0 = a1 = a2 = a3 = 0.0
    for i in range(x0.size):
        v0 = np.float64(ld(x0, i))
        v1 = np.float64(ld(x1, i))
        v2 = np.float64(ld(x2, i))
        v3 = np.float64(ld(x3, i))
        a0 += v0 * v0
        a1 += v1 * v1
        a2 += v2 * v2
        a3 += v3 * v3
    return (a0 + a1) + (a2 + a3)


@njit(cache=True, nogil=True)
def _ssq_task(x, t):
    """Sum of squares of task t: elements [t·4·CHUNK, (t+1)·4·CHUNK), as four streams
    where ``FOUR_STREAMS``."""
    lo = t * 4 * CHUNK
    if FOUR_STREAMS and lo + 4 * CHUNK <= x.size:
        return _ssq_four_streams(
            x[lo : lo + CHUNK],
            x[lo + CHUNK : lo + 2 * CHUNK],
            x[lo + 2 * CHUNK : lo + 3 * CHUNK],
            x[lo + 3 * CHUNK : lo + 4 * CHUNK],
        )
    return _ssq_stream(x[lo : lo + 4 * CHUNK])


@njit(cache=True, nogil=True)
def _sum_of_squares_serial(x):
    total = 0.0
    for t in range((x.size + 4 * CHUNK - 1) // (4 * CHUNK)):
        total += _ssq_task(x, t)
    return total


@njit(cache=True, nogil=True, parallel=True)
def _sum_of_squares_parallel(x):
    ntasks = (x.size + 4 * CHUNK - 1) // (4 * CHUNK)
    partial = np.empty(ntasks, np.float64)
    for t in prange(ntasks):
        partial[t] = _ssq_task(x, t)
    total = 0.0
    for t in range(ntasks):  # same tasks, same order as the serial path: same bits
        total += partial[t]
    return total


@njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _scale_ssq_serial(x, a):
    acc = 0.0
    for i in range(x.size):
        v = x[i] * a
        x[i] = v
        w = np.float64(v)
        acc += w * w
    return acc


@njit(cache=True, nogil=True, parallel=True)
def _scale_ssq_parallel(x, a):
    n = x.size
    ntasks = (n + CHUNK - 1) // CHUNK
    partial = np.empty(ntasks, np.float64)
    for c in prange(ntasks):
        lo = c * CHUNK
        partial[c] = _scale_ssq_serial(x[lo : min(lo + CHUNK, n)], a)
    total = 0.0
    for c in range(ntasks):  # task order: the same bits for any thread count
        total += partial[c]
    return total


def axpy(x: np.ndarray, a, y: np.ndarray) -> None:
    """x ← x + a·y in place (x, y 1-D contiguous, same dtype; a of that dtype)."""
    if x.size >= PARALLEL_MIN:
        _axpy_parallel(x, a, y)
    else:
        _axpy_serial(x, a, y)


def scale(x: np.ndarray, a) -> None:
    """x ← a·x in place."""
    if x.size >= PARALLEL_MIN:
        _scale_parallel(x, a)
    else:
        _scale_serial(x, a)


def scale_sum_of_squares(x: np.ndarray, a) -> float:
    """x ← a·x in place, returning Σ (a·x_i)² in float64 from the same pass."""
    if x.size >= PARALLEL_MIN:
        return _scale_ssq_parallel(x, a)
    return _scale_ssq_serial(x, a)


def sum_of_squares(x: np.ndarray) -> float:
    """Σ x_i² accumulated in float64."""
    if x.size >= PARALLEL_MIN:
        return _sum_of_squares_parallel(x)
    return _sum_of_squares_serial(x)
