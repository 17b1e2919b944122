"""Launchers of ``kernels/batchnorm.cu`` on (A, C, B) views of CuPy arrays (imported only
for CuPy input). Tiles of about ``TILE`` elements per (channel, row range) block."""

from __future__ import annotations

from typing import Any

import cupy
import numpy as np

from . import _cuda

TILE = 1 << 14
THREADS = 256  # must match BN_THREADS in kernels/batchnorm.cu


def _tiling(A: int, B: int) -> tuple[int, int]:
    rows = max(1, -(-TILE // max(B, 1)))
    return rows, max(1, -(-A // rows))


def _merge(partial: Any, C: int, tiles: int, mode: int) -> tuple[Any, Any]:
    out0, out1 = cupy.empty(C), cupy.empty(C)
    blocks = max(1, -(-C // THREADS))
    _cuda.get_kernel("batchnorm", "gpugd_batchnorm_merge")(
        (blocks,), (THREADS,), (partial, np.int64(C), np.int64(tiles), np.int32(mode), out0, out1)
    )
    return out0, out1


def stats(x3: Any) -> tuple[Any, Any]:
    """(mean, biased variance) per channel, float64 CuPy arrays."""
    A, C, B = x3.shape
    if A * B == 0:
        return cupy.zeros(C), cupy.zeros(C)
    rows, tiles = _tiling(A, B)
    partial = cupy.empty((C * tiles, 3))
    name = f"gpugd_batchnorm_stats_partial_{_cuda.dtype_suffix(x3.dtype)}"
    _cuda.get_kernel("batchnorm", name)(
        (C * tiles,),
        (THREADS,),
        (x3, np.int64(A), np.int64(C), np.int64(B), np.int64(rows), np.int64(tiles), partial),
    )
    return _merge(partial, C, tiles, 0)


def grad_sums(dy3: Any, x3: Any, mean: Any) -> tuple[Any, Any]:
    """(Σ dy, Σ dy·(x − mean)) per channel, float64 CuPy arrays."""
    A, C, B = x3.shape
    if A * B == 0:
        return cupy.zeros(C), cupy.zeros(C)
    rows, tiles = _tiling(A, B)
    partial = cupy.empty((C * tiles, 3))
    name = f"gpugd_batchnorm_sums_partial_{_cuda.dtype_suffix(x3.dtype)}"
    args = (dy3, x3, cupy.ascontiguousarray(mean, cupy.float64), np.int64(A), np.int64(C))
    args += (np.int64(B), np.int64(rows), np.int64(tiles), partial)
    _cuda.get_kernel("batchnorm", name)((C * tiles,), (THREADS,), args)
    return _merge(partial, C, tiles, 1)


def affine(u3: Any, w3: Any, out3: Any, p: Any, q: Any, m: Any, r: Any) -> None:
    """out = p[c]·u + q[c]·(w − m[c]) + r[c]."""
    A, C, B = u3.shape
    n = A * C * B
    if n == 0:
        return
    name = f"gpugd_batchnorm_affine_{_cuda.dtype_suffix(u3.dtype)}"
    args = (u3, w3, out3, np.int64(n), np.int64(C), np.int64(B))
    args += tuple(cupy.ascontiguousarray(a, u3.dtype) for a in (p, q, m, r))
    _cuda.launch("batchnorm", name, n, args)
