"""Launchers of ``kernels/batchnorm.cu`` on (A, C, B) views of CuPy arrays (imported only
for CuPy input).

The statistics and the backward's sums run one block per tile and write two doubles per
(channel, tile); ``gpugd_batchnorm_merge`` folds them per channel. The tiling (``plan``) is
a function of the shape and of the arrays' alignment only, never of the device, so a
result's bits are the same on every GPU:

- B > 1 (NCHW): a tile is one channel × ``rows`` planes of B elements;
- B = 1 (NC, NHWC: channels contiguous): a tile is ``tx`` channel vectors × ``rows`` rows,
  thread (ty, tx) of the block on vector tx of rows ty, ty + 256/tx, …, so a warp reads
  adjacent addresses.

Vectors are 16 bytes (``w = 16 / itemsize`` elements) when every array starts 16-byte
aligned and the contiguous run (B, or C when B = 1) is a multiple of w; else w = 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cupy
import numpy as np

from . import _cuda

THREADS = 256  # must match BN_THREADS in kernels/batchnorm.cu
MIN_TILE, MAX_TILE = 1 << 14, 1 << 16  # elements per block of the partial kernels
TARGET_BLOCKS = 1024  # tiles shrink towards MIN_TILE until a launch has about this many
MAX_TX = 32  # channel vectors per rows tile: a warp's row reads 32 × 16 B
MAX_GRID = 2**31 - 1  # blocks of one launch (gridDim.x)


class Plan(NamedTuple):
    """How a (A, C, B) partial or elementwise launch is cut: ``w`` elements per access,
    ``tx`` channel vectors per rows tile (B = 1), ``rows`` per tile, ``tiles`` row tiles
    per channel, ``blocks`` of the partial kernels."""

    w: int
    tx: int
    rows: int
    tiles: int
    blocks: int


def vector_width(arrays: tuple, run: int, itemsize: int) -> int:
    """16 / itemsize where every array's data starts 16-byte aligned and ``run`` (the
    contiguous stretch: B, or C when B = 1) is a multiple of it, else 1."""
    w = 16 // itemsize
    if run % w or any(a.data.ptr % 16 for a in arrays):
        return 1
    return w


def channel_tiles(C: int, w: int) -> tuple[int, int]:
    """(tx, ctiles) for B = 1: ``ctiles`` tiles of ``tx`` ≤ MAX_TX channel vectors, as even
    as they go (C = 33 vectors: 2 tiles of 17, not 32 + 1)."""
    cvs = C // w
    ctiles = -(-cvs // MAX_TX)
    return -(-cvs // ctiles), ctiles


def plan(A: int, C: int, B: int, w: int) -> Plan:
    """The tiling of the partial kernels for an (A, C, B) view with ``w`` elements per
    access (A·B > 0, C > 0)."""
    tile = min(MAX_TILE, max(MIN_TILE, A * C * B // TARGET_BLOCKS))
    if B > 1:
        rows = max(1, -(-tile // B))
        tiles = -(-A // rows)
        return Plan(w, 1, rows, tiles, C * tiles)
    tx, ctiles = channel_tiles(C, w)
    rows = max(THREADS // tx, -(-tile // (tx * w)))
    tiles = -(-A // rows)
    return Plan(w, tx, rows, tiles, ctiles * tiles)


def _merge(partial: Any, shape: tuple, pl: Plan, mode: int) -> tuple[Any, Any]:
    A, C, B = shape
    out0, out1 = cupy.empty(C), cupy.empty(C)
    blocks = max(1, -(-C // (THREADS // 32)))  # a warp per channel
    args = (partial, np.int64(C), np.int64(pl.tiles), np.int64(A), np.int64(B))
    args += (np.int64(pl.rows), np.int32(mode), out0, out1)
    _cuda.get_kernel("batchnorm", "gpugd_batchnorm_merge")((blocks,), (THREADS,), args)
    return out0, out1


def _per_channel(kernel: str, arrays: tuple, extra: tuple, x3: Any, mode: int):
    """Launch a tiled per-channel partial kernel over ``arrays`` (then ``extra``) and the
    (A, C, B) shape of ``x3``, then fold the tiles per channel."""
    A, C, B = x3.shape
    if C == 0:
        return cupy.zeros(0), cupy.zeros(0)
    if A * B == 0:
        return cupy.zeros(C), cupy.zeros(C)
    w = vector_width(arrays, B if B > 1 else C, x3.dtype.itemsize)
    pl = plan(A, C, B, w)
    if pl.blocks > MAX_GRID:
        raise ValueError(f"x: {pl.blocks} tiles for shape (A, C, B) = {(A, C, B)}, over {MAX_GRID}")
    partial = cupy.empty((C * pl.tiles, 2))
    name = f"gpugd_batchnorm_{kernel}_{_cuda.dtype_suffix(x3.dtype)}"
    dims = (np.int64(A), np.int64(C), np.int64(B), np.int64(pl.rows), np.int64(pl.tiles))
    args = (*arrays, *extra, *dims, np.int32(pl.w), np.int32(pl.tx), partial)
    _cuda.get_kernel("batchnorm", name)((pl.blocks,), (THREADS,), args)
    return _merge(partial, (A, C, B), pl, mode)


def stats(x3: Any) -> tuple[Any, Any]:
    """(mean, biased variance) per channel, float64 CuPy arrays."""
    return _per_channel("stats_partial", (x3,), (), x3, 0)


def grad_sums(dy3: Any, x3: Any, mean: Any) -> tuple[Any, Any]:
    """(Σ dy, Σ dy·(x − mean)) per channel, float64 CuPy arrays."""
    mean64 = cupy.ascontiguousarray(mean, cupy.float64)
    return _per_channel("sums_partial", (dy3, x3), (mean64,), x3, 1)


def affine(u3: Any, w3: Any, out3: Any, p: Any, q: Any, m: Any, r: Any) -> None:
    """out = p[c]·u + q[c]·(w − m[c]) + r[c] (the four per-channel values of u3's dtype,
    passed interleaved: row c of a (C, 4) array)."""
    A, C, B = u3.shape
    n = A * C * B
    if n == 0:
        return
    arrays = (u3, w3, out3)
    w = vector_width(arrays, B if B > 1 else C, u3.dtype.itemsize)
    tx = channel_tiles(C, w)[0] if B == 1 else 1
    name = f"gpugd_batchnorm_affine_{_cuda.dtype_suffix(u3.dtype)}"
    # row c: p, q, m, r of channel c (one 16-byte load for float32)
    pqmr = cupy.ascontiguousarray(cupy.stack((p, q, m, r), axis=1), u3.dtype)
    args = (*arrays, np.int64(n), np.int64(C), np.int64(B), np.int32(w), np.int32(tx), pqmr)
    _cuda.launch("batchnorm", name, n // w, args)
