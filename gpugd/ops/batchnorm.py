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
    from .._cuda_batchnorm import stats

    return stats(x3)


def _affine(u3: Any, w3: Any, out3: Any, p: Any, q: Any, m: Any, r: Any, be: str) -> None:
    """out = p[c]·u + q[c]·(w − m[c]) + r[c] (per-channel values cast to the arrays' dtype)."""
    t = u3.dtype
    p, q, m, r = (a.astype(t) for a in (p, q, m, r))
    if be == "cpu":
        k = cpu("batchnorm")
        k.affine(u3, w3, out3, p, q, m, r)
        return
    from .._cuda_batchnorm import affine

    affine(u3, w3, out3, p, q, m, r)


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
        from .._cuda_batchnorm import grad_sums

        s1, s2 = grad_sums(dy3, x3, mean64)
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


__all__ = ["BatchNormOutput", "batch_norm_backward", "batch_norm_forward", "batch_norm_stats"]
