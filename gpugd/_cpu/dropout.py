"""CPU (Numba) mirror of ``kernels/dropout.cu``: inverted dropout whose mask is a pure
function of (seed, offset, index) — the SplitMix64 finalizer of key + (offset + i)·φ, kept
when its high 32 bits are below ⌊(1 − p)·2^32⌋ — so the backward regenerates it and both
backends (and both float types) draw the same mask. All arithmetic is uint64 (constants
typed, so nothing is promoted to float), which vectorizes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .vector import CHUNK, PARALLEL_MIN

_PHI = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)


@njit(inline="always")
def mix64(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def key_of(seed: int) -> np.uint64:
    """The stream key of a seed (the finalizer of the seed, as on the GPU)."""
    z = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        return z ^ (z >> _S31)


@njit(inline="always")
def _keep(key, counter, threshold):
    return (mix64(key + counter * _PHI) >> _S32) < threshold


@njit(cache=True, nogil=True)
def _apply_serial(x, y, key, offset, threshold, scale, base):
    zero = scale * 0  # typed like scale (the arrays' dtype)
    for i in range(x.size):
        c = offset + np.uint64(base + i)
        y[i] = x[i] * scale if _keep(key, c, threshold) else zero


@njit(cache=True, nogil=True, parallel=True)
def _apply_parallel(x, y, key, offset, threshold, scale):
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(c * CHUNK + CHUNK, n)
        _apply_serial(x[lo:hi], y[lo:hi], key, offset, threshold, scale, lo)


@njit(cache=True, nogil=True)
def _mask_serial(m, key, offset, threshold):
    for i in range(m.size):
        m[i] = _keep(key, offset + np.uint64(i), threshold)


def apply(x: np.ndarray, y: np.ndarray, key, offset, threshold, scale) -> None:
    """y = x·keep·scale (1-D contiguous; y may be x)."""
    if x.size >= PARALLEL_MIN:
        _apply_parallel(x, y, key, offset, threshold, scale)
    else:
        _apply_serial(x, y, key, offset, threshold, scale, 0)


def mask(n: int, key, offset, threshold) -> np.ndarray:
    m = np.empty(n, np.bool_)
    _mask_serial(m, key, offset, threshold)
    return m
