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


def _per_channel(kernel: str, arrays: tuple, x3: Any, mode: int) -> tuple[Any, Any]:
    """Launch a tiled per-channel partial kernel (one block per channel × row tile) over
    ``arrays`` and the (A, C, B) shape of ``x3``, then fold the tiles per channel."""
    A, C, B = x3.shape
    if A * B == 0:
        return cupy.zeros(C), cupy.zeros(C)
    rows, tiles = _tiling(A, B)
    partial = cupy.empty((C * tiles, 3))
    name = f"gpugd_batchnorm_{kernel}_{_cuda.dtype_suffix(x3.dtype)}"
    dims = (np.int64(A), np.int64(C), np.int64(B), np.int64(rows), np.int64(tiles))
    _cuda.get_kernel("batchnorm", name)((C * tiles,), (THREADS,), (*arrays, *dims, partial))
    return _merge(partial, C, tiles, mode)


def stats(x3: Any) -> tuple[Any, Any]:
    """(mean, biased variance) per channel, float64 CuPy arrays."""
    return _per_channel("stats_partial", (x3,), x3, 0)


def grad_sums(dy3: Any, x3: Any, mean: Any) -> tuple[Any, Any]:
    """(Σ dy, Σ dy·(x − mean)) per channel, float64 CuPy arrays."""
    mean64 = cupy.ascontiguousarray(mean, cupy.float64)
    return _per_channel("sums_partial", (dy3, x3, mean64), x3, 1)


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
