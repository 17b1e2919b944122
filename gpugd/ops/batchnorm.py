"""Batch normalization: ``batch_norm_stats``, ``batch_norm_forward``, ``batch_norm_backward``
for layouts "NC" (N, C), "NCHW" (N, C, H, W) and channels-last "NHWC" (N, H, W, C).

Training forward: one statistics pass (per tile, sums of x − K and (x − K)² about one
value K of the tile, merged with Chan's formula: stable when |mean| ≫ std), then one
elementwise pass y = p[c]·(x − mean[c]) + β[c] with
p = γ/√(var + ε); the running statistics are updated with torch's
convention (r ← (1 − m)·r + m·batch, unbiased variance) or Keras' (r ← m·r + (1 − m)·batch,
biased variance). Inference uses the running statistics. Backward: one reduction pass
(Σ dy, Σ dy·(x − mean)) and one elementwise pass dx = p·dy + q·(x − mean) + r. Kernels:
``gpugd/_cpu/batchnorm.py`` and ``kernels/batchnorm.cu``; float64 specification:
``gpugd.reference.batch_norm_*``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import _validate as v
from .._lazy import cpu

LAYOUTS = {"NC": 2, "NCHW": 4, "NHWC": 4}
CONVENTIONS = ("torch", "keras")
CUDA_KERNELS = (
    "gpugd_batchnorm_stats_partial_f32",
    "gpugd_batchnorm_stats_partial_f64",
    "gpugd_batchnorm_sums_partial_f32",
    "gpugd_batchnorm_sums_partial_f64",
    "gpugd_batchnorm_merge",
    "gpugd_batchnorm_affine_f32",
    "gpugd_batchnorm_affine_f64",
)


class BatchNormOutput(NamedTuple):
    """The forward's output and what its backward needs (per channel, the arrays' dtype)."""

    y: Any
    mean: Any
    invstd: Any


def _layout(layout: Any, x: Any, name: str = "x") -> tuple[int, int, int]:
    """(A, C, B) of the canonical view; element (a, c, b) at (a·C + c)·B + b."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {sorted(LAYOUTS)}, got {layout!r}")
    if x.ndim != LAYOUTS[layout]:
        raise ValueError(
            f"{name}: layout {layout!r} needs a {LAYOUTS[layout]}-D array, got shape {x.shape}"
        )
    if layout == "NC":
        n, c = x.shape
        return n, c, 1
    if layout == "NCHW":
        n, c, h, w = x.shape
        return n, c, h * w
    n, h, w, c = x.shape
    return n * h * w, c, 1


def _xp(be: str) -> Any:
    if be == "cpu":
        return np
    import cupy

    return cupy


def _channel_array(name: str, a: Any, c: int, x: Any, be: str, *, writable: bool = False):
    if a is None:
        return None
    if v.array_backend(x=x, **{name: a}) != be:
        raise TypeError(f"{name}: must be on the same backend as x")
    v.float_array(name, a, writable=writable)
    if a.shape != (c,):
        raise ValueError(f"{name}: expected shape ({c},) — one value per channel — got {a.shape}")
    if a.dtype != x.dtype:
        raise TypeError(f"{name}: dtype {a.dtype} does not match x's {x.dtype}")
    return a


def _others(args: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: a for k, a in args.items() if k != name}


def _eps(eps: Any) -> float:
    f = v.real_scalar("eps", eps)
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"eps: expected a finite value > 0, got {eps!r}")
    return f


def _stats64(x3: Any, be: str) -> tuple[Any, Any]:
    """(mean, biased var) per channel in float64 on the arrays' backend."""
    if be == "cpu":
        k = cpu("batchnorm")
        return k.stats(x3)
    return cuda_stats(x3)


def _affine(u3: Any, w3: Any, out3: Any, p: Any, q: Any, m: Any, r: Any, be: str) -> None:
    """out = p[c]·u + q[c]·(w − m[c]) + r[c] (per-channel values cast to the arrays' dtype)."""
    t = u3.dtype
    p, q, m, r = (a.astype(t) for a in (p, q, m, r))
    if be == "cpu":
        k = cpu("batchnorm")
        k.affine(u3, w3, out3, p, q, m, r)
        return
    cuda_affine(u3, w3, out3, p, q, m, r)


def batch_norm_stats(x: Any, *, layout: str = "NCHW") -> tuple[Any, Any]:
    """Per-channel mean and biased variance (one read pass; float64 accumulation,
    returned in x's dtype)."""
    be = v.array_backend(x=x)
    v.float_array("x", x)
    a, c, b = _layout(layout, x)
    mean, var = _stats64(x.reshape(a, c, b), be)
    return mean.astype(x.dtype), var.astype(x.dtype)


def batch_norm_forward(
    x: Any,
    weight: Any = None,
    bias: Any = None,
    running_mean: Any = None,
    running_var: Any = None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    layout: str = "NCHW",
    momentum_convention: str = "torch",
    out: Any = None,
) -> BatchNormOutput:
    """y = (x − mean)/√(var + ε)·γ + β per channel. Training: batch statistics, and the
    running ones updated in place when given; inference: the running statistics."""
    be = v.array_backend(x=x)
    v.float_array("x", x)
    A, C, B = _layout(layout, x)
    weight = _channel_array("weight", weight, C, x, be)
    bias = _channel_array("bias", bias, C, x, be)
    running_mean = _channel_array("running_mean", running_mean, C, x, be, writable=True)
    running_var = _channel_array("running_var", running_var, C, x, be, writable=True)
    eps = _eps(eps)
    training = v.flag("training", training)
    m = v.real_scalar("momentum", momentum)
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum: expected a value in [0, 1], got {momentum!r}")
    if not isinstance(momentum_convention, str) or momentum_convention not in CONVENTIONS:
        raise ValueError(
            f"momentum_convention: expected one of {CONVENTIONS}, got {momentum_convention!r}"
        )
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean, running_var: give both or neither")
    if not training and running_mean is None:
        raise ValueError("running_mean, running_var: required when training=False")
    if training and A * B < 2:
        raise ValueError(
            f"x: training needs more than one value per channel, got {A * B} (shape {x.shape})"
        )
    xp = _xp(be)
    out = v.output(out, "x", x, {"x": x})
    # the arrays written (out, the running statistics) share no byte with another argument
    # (out may still be x itself: the statistics are read before it is written)
    args = {"x": x, "weight": weight, "bias": bias}
    args |= {"running_mean": running_mean, "running_var": running_var}
    for name in ("running_mean", "running_var"):
        v.disjoint_from(name, args[name], {**_others(args, name), "out": out})
    v.disjoint_from("out", out, _others(args, "x"))
    x3 = x.reshape(A, C, B)
    if training:
        mean, var = _stats64(x3, be)
        if running_mean is not None:
            n = A * B
            if momentum_convention == "torch":
                running_mean[...] = (1 - m) * running_mean + m * mean
                running_var[...] = (1 - m) * running_var + m * var * (n / (n - 1))
            else:
                running_mean[...] = m * running_mean + (1 - m) * mean
                running_var[...] = m * running_var + (1 - m) * var
    else:
        mean, var = running_mean.astype(xp.float64), running_var.astype(xp.float64)
    invstd = 1.0 / xp.sqrt(var + eps)
    g = weight.astype(xp.float64) if weight is not None else xp.ones(C)
    beta = bias.astype(xp.float64) if bias is not None else xp.zeros(C)
    p = g * invstd
    # y = p·(x − mean) + β: the u term is off (0·x)
    _affine(x3, x3, out.reshape(A, C, B), xp.zeros(C), p, mean, beta, be)
    return BatchNormOutput(out, mean.astype(x.dtype), invstd.astype(x.dtype))


def batch_norm_backward(
    grad_out: Any,
    x: Any,
    weight: Any,
    mean: Any,
    invstd: Any,
    *,
    training: bool = True,
    layout: str = "NCHW",
    out: Any = None,
) -> tuple[Any, Any, Any]:
    """(dx, dweight, dbias) of the forward with these mean and invstd. Training (batch
    statistics): dx = γ·invstd·(dy − Σdy/M − x̂·Σ(dy·x̂)/M), x̂ = (x − mean)·invstd;
    inference: dx = γ·invstd·dy. dweight = Σ dy·x̂, dbias = Σ dy."""
    be = v.array_backend(grad_out=grad_out, x=x)
    v.float_array("grad_out", grad_out)
    v.float_array("x", x)
    v.same_layout("x", x, "grad_out", grad_out)
    A, C, B = _layout(layout, x)
    weight = _channel_array("weight", weight, C, x, be)
    mean = _channel_array("mean", mean, C, x, be)
    invstd = _channel_array("invstd", invstd, C, x, be)
    if mean is None or invstd is None:
        raise ValueError("mean, invstd: required (the forward returns them)")
    training = v.flag("training", training)
    xp = _xp(be)
    out = v.output(out, "x", x, {"x": x, "grad_out": grad_out})
    v.disjoint_from("out", out, {"weight": weight, "mean": mean, "invstd": invstd})
    x3, dy3 = x.reshape(A, C, B), grad_out.reshape(A, C, B)
    mean64, inv64 = mean.astype(xp.float64), invstd.astype(xp.float64)
    if be == "cpu":
        k = cpu("batchnorm")
        s1, s2 = k.grad_sums(dy3, x3, mean64)
    else:
        s1, s2 = cuda_grad_sums(dy3, x3, mean64)
    g = weight.astype(xp.float64) if weight is not None else xp.ones(C)
    M = A * B
    p = g * inv64
    if training:  # dx = p·dy + q·(x − mean) + r
        q = -g * inv64**3 * s2 / M
        r = -p * s1 / M
    else:
        q, r = xp.zeros(C), xp.zeros(C)
    _affine(dy3, x3, out.reshape(A, C, B), p, q, mean64, r, be)
    return out, (s2 * inv64).astype(x.dtype), s1.astype(x.dtype)


# ---- CUDA launchers: kernels/batchnorm.cu on (A, C, B) views of CuPy arrays (CuPy is
# imported only when they run)
#
# Launchers of ``kernels/batchnorm.cu`` on (A, C, B) views of CuPy arrays (imported only
# for CuPy input).
#
# The statistics and the backward's sums run one block per tile and write two doubles per
# (channel, tile); ``gpugd_batchnorm_merge`` folds them per channel. The tiling (``plan``) is
# a function of the shape and of the arrays' alignment only, never of the device, so a
# result's bits are the same on every GPU:
#
# - B > 1 (NCHW): a tile is one channel × ``rows`` planes of B elements;
# - B = 1 (NC, NHWC: channels contiguous): a tile is ``tx`` channel vectors × ``rows`` rows,
#   thread (ty, tx) of the block on vector tx of rows ty, ty + 256/tx, …, so a warp reads
#   adjacent addresses.
#
# Vectors are 16 bytes (``w = 16 / itemsize`` elements) when every array starts 16-byte
# aligned and the contiguous run (B, or C when B = 1) is a multiple of w; else w = 1.

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
    import cupy

    from .. import _cuda

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
    import cupy

    from .. import _cuda

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


def cuda_stats(x3: Any) -> tuple[Any, Any]:
    """(mean, biased variance) per channel, float64 CuPy arrays."""
    return _per_channel("stats_partial", (x3,), (), x3, 0)


def cuda_grad_sums(dy3: Any, x3: Any, mean: Any) -> tuple[Any, Any]:
    """(Σ dy, Σ dy·(x − mean)) per channel, float64 CuPy arrays."""
    import cupy

    mean64 = cupy.ascontiguousarray(mean, cupy.float64)
    return _per_channel("sums_partial", (dy3, x3), (mean64,), x3, 1)


def cuda_affine(u3: Any, w3: Any, out3: Any, p: Any, q: Any, m: Any, r: Any) -> None:
    """out = p[c]·u + q[c]·(w − m[c]) + r[c] (the four per-channel values of u3's dtype,
    passed interleaved: row c of a (C, 4) array)."""
    import cupy

    from .. import _cuda

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


__all__ = ["BatchNormOutput", "batch_norm_backward", "batch_norm_forward", "batch_norm_stats"]
