"""Activations with torch's definitions and defaults: forward ``f(x, out=None)`` and fused
backward ``f_backward(grad_out, x_or_y, out=None)`` = grad_out · f'(·) in one pass.

sigmoid and tanh take their *output* in the backward (as torch's sigmoid_backward and
tanh_backward do), every other activation its input. ``out`` may be the input itself (in
place) or, in the backward, ``grad_out``; otherwise a new array is returned. Stable for
every finite input (no Inf or NaN from exp overflow; expm1 where 1 − e^x would cancel).
Kernels: ``kernels/activations.cu`` and ``gpugd/_cpu/activations.py``; the float64
specification: ``gpugd.reference.act_forward`` / ``act_backward``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _validate as v
from .._lazy import cpu

CUDA_KERNELS = tuple(
    f"gpugd_activations_{d}_{sfx}" for d in ("forward", "backward") for sfx in ("f32", "f64")
)
KIND_IDS = {
    "sigmoid": 0,
    "tanh": 1,
    "relu": 2,
    "leaky_relu": 3,
    "elu": 4,
    "gelu": 5,
    "gelu_tanh": 6,
    "softplus": 7,
    "silu": 8,
}
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _launch(kind: str, direction: str, arrays: list, a: float, b: float) -> None:
    n = arrays[0].size
    if n == 0:
        return
    dtype = arrays[0].dtype
    t = dtype.type
    kid = KIND_IDS[kind]
    if isinstance(arrays[0], np.ndarray):
        k = cpu("activations")
        # The Numba kernels are typed for writable arrays (their in-place variants write an
        # input): a read-only input, never the output, is passed as a copy.
        flat = [x.reshape(-1) if x.flags.writeable else x.ravel().copy() for x in arrays]
        getattr(k, direction)(kid, *flat, t(a), t(b))
        return
    from .. import _cuda

    name = f"gpugd_activations_{direction}_{_cuda.dtype_suffix(dtype)}"
    _cuda.launch("activations", name, n, (*arrays, np.int64(n), np.int32(kid), t(a), t(b)))


def _forward(kind: str, x: Any, out: Any, a: float = 0.0, b: float = 0.0) -> Any:
    v.array_backend(x=x)  # names a non-array argument
    v.float_array("x", x)
    y = v.output(out, "x", x, {"x": x})
    _launch(kind, "forward", [x, y], a, b)
    return y


def _backward(
    kind: str, grad_out: Any, xy: Any, xy_name: str, out: Any, a: float = 0.0, b: float = 0.0
) -> Any:
    v.array_backend(grad_out=grad_out, **{xy_name: xy})  # TypeError on mixed backends
    v.float_array("grad_out", grad_out)
    v.float_array(xy_name, xy)
    v.same_layout("grad_out", grad_out, xy_name, xy)
    dx = v.output(out, "grad_out", grad_out, {"grad_out": grad_out, xy_name: xy})
    _launch(kind, "backward", [grad_out, xy, dx], a, b)
    return dx


def _finite(name: str, x: Any, *, positive: bool = False) -> float:
    f = v.real_scalar(name, x)
    if not math.isfinite(f) or (positive and f <= 0):
        want = "a finite value > 0" if positive else "a finite value"
        raise ValueError(f"{name}: expected {want}, got {x!r}")
    return f


# ---- the activations ---------------------------------------------------------------------


def sigmoid(x: Any, *, out: Any = None) -> Any:
    """σ(x) = 1/(1 + e^−x), written as e^−|x| forms (no overflow)."""
    return _forward("sigmoid", x, out)


def sigmoid_backward(grad_out: Any, y: Any, *, out: Any = None) -> Any:
    """dx = dy·y·(1 − y), from the output y = σ(x)."""
    return _backward("sigmoid", grad_out, y, "y", out)


def tanh(x: Any, *, out: Any = None) -> Any:
    """tanh x = −m/(2 + m)·sign x, m = expm1(−2|x|)."""
    return _forward("tanh", x, out)


def tanh_backward(grad_out: Any, y: Any, *, out: Any = None) -> Any:
    """dx = dy·(1 − y²), from the output y = tanh x."""
    return _backward("tanh", grad_out, y, "y", out)


def relu(x: Any, *, out: Any = None) -> Any:
    """max(x, 0)."""
    return _forward("relu", x, out)


def relu_backward(grad_out: Any, x: Any, *, out: Any = None) -> Any:
    """dx = dy where x > 0, else 0 (torch's threshold_backward)."""
    return _backward("relu", grad_out, x, "x", out)


def leaky_relu(x: Any, negative_slope: float = 0.01, *, out: Any = None) -> Any:
    """x for x > 0, negative_slope·x otherwise."""
    return _forward("leaky_relu", x, out, _finite("negative_slope", negative_slope))


def leaky_relu_backward(
    grad_out: Any, x: Any, negative_slope: float = 0.01, *, out: Any = None
) -> Any:
    """dx = dy for x > 0, negative_slope·dy otherwise."""
    slope = _finite("negative_slope", negative_slope)
    return _backward("leaky_relu", grad_out, x, "x", out, slope)


def elu(x: Any, alpha: float = 1.0, *, out: Any = None) -> Any:
    """x for x > 0, α·expm1(x) otherwise."""
    return _forward("elu", x, out, _finite("alpha", alpha), 1.0)


def elu_backward(grad_out: Any, x: Any, alpha: float = 1.0, *, out: Any = None) -> Any:
    """dx = dy for x > 0, dy·α·e^x otherwise."""
    return _backward("elu", grad_out, x, "x", out, _finite("alpha", alpha), 1.0)


def selu(x: Any, *, out: Any = None) -> Any:
    """scale·elu(x, α) with torch's constants α ≈ 1.6733, scale ≈ 1.0507."""
    return _forward("elu", x, out, SELU_ALPHA, SELU_SCALE)


def selu_backward(grad_out: Any, x: Any, *, out: Any = None) -> Any:
    """dx = scale·dy for x > 0, scale·α·dy·e^x otherwise."""
    return _backward("elu", grad_out, x, "x", out, SELU_ALPHA, SELU_SCALE)


def _gelu_kind(approximate: str) -> str:
    if not isinstance(approximate, str) or approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    return "gelu" if approximate == "none" else "gelu_tanh"


def gelu(x: Any, *, approximate: str = "none", out: Any = None) -> Any:
    """x·Φ(x) = ½x(1 + erf(x/√2)); ``approximate="tanh"``: ½x(1 + tanh(√(2/π)(x + 0.044715x³)))."""
    return _forward(_gelu_kind(approximate), x, out)


def gelu_backward(grad_out: Any, x: Any, *, approximate: str = "none", out: Any = None) -> Any:
    """dx = dy·(Φ(x) + x·φ(x)), or the derivative of the tanh form."""
    return _backward(_gelu_kind(approximate), grad_out, x, "x", out)


def _softplus_args(beta: Any, threshold: Any) -> tuple[float, float]:
    return _finite("beta", beta, positive=True), _finite("threshold", threshold)


def softplus(x: Any, *, beta: float = 1.0, threshold: float = 20.0, out: Any = None) -> Any:
    """log(1 + e^(βx))/β, and x where βx > threshold (torch's)."""
    return _forward("softplus", x, out, *_softplus_args(beta, threshold))


def softplus_backward(
    grad_out: Any, x: Any, *, beta: float = 1.0, threshold: float = 20.0, out: Any = None
) -> Any:
    """dx = dy·σ(βx), and dy where βx > threshold."""
    return _backward("softplus", grad_out, x, "x", out, *_softplus_args(beta, threshold))


def silu(x: Any, *, out: Any = None) -> Any:
    """x·σ(x)."""
    return _forward("silu", x, out)


def silu_backward(grad_out: Any, x: Any, *, out: Any = None) -> Any:
    """dx = dy·σ(x)·(1 + x(1 − σ(x)))."""
    return _backward("silu", grad_out, x, "x", out)


__all__ = [
    "elu",
    "elu_backward",
    "gelu",
    "gelu_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "relu",
    "relu_backward",
    "selu",
    "selu_backward",
    "sigmoid",
    "sigmoid_backward",
    "silu",
    "silu_backward",
    "softplus",
    "softplus_backward",
    "tanh",
    "tanh_backward",
]
