"""Float64 NumPy implementations: the executable specification every kernel is tested against.

Each function takes NumPy arrays of any float dtype, computes in float64 and returns
float64 results; it never modifies its inputs.
"""

from __future__ import annotations

import math

import numpy as np


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def axpy(x, a: float, y) -> np.ndarray:
    """x + a·y."""
    return _f64(x) + float(a) * _f64(y)


def scale(x, a: float) -> np.ndarray:
    """a·x."""
    return float(a) * _f64(x)


def sum_of_squares(x) -> float:
    """Σ x_i² (math.fsum over float64 squares: correctly rounded)."""
    import math

    v = _f64(x).ravel()
    return math.fsum((v * v).tolist()) if v.size < (1 << 22) else float(np.dot(v, v))


# ---------------------------------------------------------------- optimizer updates
# One step of each torch.optim rule (single-tensor semantics), in float64. ``g`` is the
# gradient before ``grad_scale``; states are dicts of float64 arrays, updated in place;
# the new parameters are returned. ``step`` counts from 1 (this step included).


def _grad_in(g, grad_scale, clip_value):
    """The gradient the rules see: g·grad_scale, clamped to ±clip_value when given."""
    d = _f64(g) * grad_scale
    return d if clip_value is None else np.clip(d, -clip_value, clip_value)


def sgd(
    p,
    g,
    state,
    *,
    lr,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    step=1,
    grad_scale=1.0,
    clip_value=None,
):
    """torch.optim.SGD: d = g + wd·p; buf = d (first step) or μ·buf + (1−τ)·d;
    d = d + μ·buf (Nesterov) or buf; p ← p − lr·d."""
    p = _f64(p)
    d = _grad_in(g, grad_scale, clip_value) + weight_decay * p
    if momentum != 0:
        buf = d.copy() if step == 1 else momentum * state["momentum_buffer"] + (1 - dampening) * d
        state["momentum_buffer"] = buf
        d = d + momentum * buf if nesterov else buf
    return p - lr * d


def adagrad(
    p,
    g,
    state,
    *,
    lr,
    lr_decay=0.0,
    weight_decay=0.0,
    eps=1e-10,
    step=1,
    grad_scale=1.0,
    clip_value=None,
):
    """torch.optim.Adagrad: d = g + wd·p; s += d²; p ← p − lr/(1+(t−1)·decay) · d/(√s+ε)."""
    p = _f64(p)
    d = _grad_in(g, grad_scale, clip_value) + weight_decay * p
    clr = lr / (1 + (step - 1) * lr_decay)
    state["sum"] = state["sum"] + d * d
    return p - clr * d / (np.sqrt(state["sum"]) + eps)


def rmsprop(
    p,
    g,
    state,
    *,
    lr,
    alpha=0.99,
    eps=1e-8,
    weight_decay=0.0,
    momentum=0.0,
    centered=False,
    grad_scale=1.0,
    clip_value=None,
):
    """torch.optim.RMSprop: v = α·v + (1−α)·d²; centered: m̄ = α·m̄ + (1−α)·d, den = √(v−m̄²)+ε,
    else √v+ε; momentum: b = μ·b + d/den, p ← p − lr·b; else p ← p − lr·d/den."""
    p = _f64(p)
    d = _grad_in(g, grad_scale, clip_value) + weight_decay * p
    state["square_avg"] = alpha * state["square_avg"] + (1 - alpha) * d * d
    if centered:
        state["grad_avg"] = alpha * state["grad_avg"] + (1 - alpha) * d
        den = np.sqrt(state["square_avg"] - state["grad_avg"] ** 2) + eps
    else:
        den = np.sqrt(state["square_avg"]) + eps
    if momentum > 0:
        state["momentum_buffer"] = momentum * state["momentum_buffer"] + d / den
        return p - lr * state["momentum_buffer"]
    return p - lr * d / den


def _adam_moments(p, g, state, lr, b1, b2, weight_decay, decoupled, grad_scale, clip_value):
    """The shared head of Adam and NAdam: weight decay (coupled into d, or decoupled on p),
    then m = β1·m + (1−β1)·d and v = β2·v + (1−β2)·d², in place in ``state``. → (p, d)."""
    p = _f64(p)
    d = _grad_in(g, grad_scale, clip_value)
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        d = d + weight_decay * p
    state["exp_avg"] = b1 * state["exp_avg"] + (1 - b1) * d
    state["exp_avg_sq"] = b2 * state["exp_avg_sq"] + (1 - b2) * d * d
    return p, d


def adam(
    p,
    g,
    state,
    *,
    lr,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
    decoupled=False,
    step=1,
    grad_scale=1.0,
    clip_value=None,
):
    """torch.optim.Adam / AdamW (decoupled): m = β1·m + (1−β1)·d; v = β2·v + (1−β2)·d²;
    p ← p − lr/(1−β1^t) · m / (√v̂/√(1−β2^t) + ε), v̂ = v or max(v̂, v) (AMSGrad)."""
    b1, b2 = betas
    p, _ = _adam_moments(p, g, state, lr, b1, b2, weight_decay, decoupled, grad_scale, clip_value)
    v = state["exp_avg_sq"]
    if amsgrad:
        state["max_exp_avg_sq"] = np.maximum(state["max_exp_avg_sq"], v)
        v = state["max_exp_avg_sq"]
    den = np.sqrt(v) / np.sqrt(1 - b2**step) + eps
    return p - lr / (1 - b1**step) * state["exp_avg"] / den


def nadam_mu(step: int, beta1: float, momentum_decay: float) -> float:
    """NAdam's momentum schedule μ_t = β1·(1 − ½·0.96^(t·ψ))."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def nadam(
    p,
    g,
    state,
    *,
    lr,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    momentum_decay=4e-3,
    decoupled=False,
    step=1,
    mu_product=1.0,
    grad_scale=1.0,
    clip_value=None,
):
    """torch.optim.NAdam; ``mu_product`` = Π μ_s over the steps before this one.
    p ← p − lr·(1−μ_t)/(1−Π_t) · d/den − lr·μ_{t+1}/(1−Π_t·μ_{t+1}) · m/den,
    den = √(v/(1−β2^t)) + ε."""
    b1, b2 = betas
    p, d = _adam_moments(p, g, state, lr, b1, b2, weight_decay, decoupled, grad_scale, clip_value)
    mu, mu_next = nadam_mu(step, b1, momentum_decay), nadam_mu(step + 1, b1, momentum_decay)
    prod = mu_product * mu
    den = np.sqrt(state["exp_avg_sq"] / (1 - b2**step)) + eps
    p = p - lr * (1 - mu) / (1 - prod) * d / den
    return p - lr * mu_next / (1 - prod * mu_next) * state["exp_avg"] / den


def lion(
    p,
    g,
    state,
    *,
    lr=1e-4,
    betas=(0.9, 0.99),
    weight_decay=0.0,
    grad_scale=1.0,
    clip_value=None,
):
    """Lion (Chen et al. 2023, arXiv 2302.06675) with lion-pytorch's decoupled weight decay:
    p ← p·(1 − lr·wd); p ← p − lr·sign(β1·m + (1−β1)·d); m = β2·m + (1−β2)·d
    (sign(0) = 0)."""
    b1, b2 = betas
    p = _f64(p) * (1 - lr * weight_decay)
    d = _grad_in(g, grad_scale, clip_value)
    m = state["exp_avg"]
    p = p - lr * np.sign(b1 * m + (1 - b1) * d)
    state["exp_avg"] = b2 * m + (1 - b2) * d
    return p


# ---------------------------------------------------------------- activations
# torch's definitions and defaults, in float64. ``act_forward(kind, x, a, b)`` and
# ``act_backward(kind, dy, v, a, b)`` where v is the output y for sigmoid and tanh (their
# backward is written from the output) and the input x for the others; a, b: the
# activation's parameters (leaky_relu: negative_slope; elu: alpha; softplus: beta,
# threshold), ignored by the others.

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
_erfc = np.frompyfunc(math.erfc, 1, 1)


def _phi64(x):
    """Φ(x) = ½·erfc(−x/√2): no cancellation in the lower tail."""
    return 0.5 * _erfc(-x / math.sqrt(2.0)).astype(np.float64)


def _sigmoid64(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def act_forward(kind: str, x, a: float = 0.0, b: float = 0.0) -> np.ndarray:
    x = _f64(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "sigmoid":
            return _sigmoid64(x)
        if kind == "tanh":
            return np.tanh(x)
        if kind == "relu":
            return np.where(x > 0, x, 0.0)
        if kind == "leaky_relu":
            return np.where(x > 0, x, a * x)
        if kind == "elu":
            return np.where(x > 0, x, a * np.expm1(np.minimum(x, 0)))
        if kind == "selu":
            return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))
        if kind == "gelu":
            return x * _phi64(x)
        if kind == "gelu_tanh":
            return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x**3)))
        if kind == "softplus":
            bx = a * x
            soft = (np.maximum(bx, 0) + np.log1p(np.exp(-np.abs(bx)))) / a
            return np.where(bx > b, x, soft)
        if kind == "silu":
            return x * _sigmoid64(x)
    raise ValueError(f"unknown activation {kind!r}")


def act_backward(kind: str, dy, v, a: float = 0.0, b: float = 0.0) -> np.ndarray:
    dy, v = _f64(dy), _f64(v)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "sigmoid":
            return dy * v * (1.0 - v)
        if kind == "tanh":
            return dy * (1.0 - v * v)
        if kind == "relu":
            return np.where(v > 0, dy, 0.0)
        if kind == "leaky_relu":
            return np.where(v > 0, dy, a * dy)
        if kind == "elu":
            return np.where(v > 0, dy, dy * a * np.exp(np.minimum(v, 0)))
        if kind == "selu":
            return SELU_SCALE * np.where(v > 0, dy, dy * SELU_ALPHA * np.exp(np.minimum(v, 0)))
        if kind == "gelu":
            cdf = _phi64(v)
            pdf = np.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)
            return dy * (cdf + v * pdf)
        if kind == "gelu_tanh":
            t = np.tanh(_SQRT_2_OVER_PI * (v + _GELU_C * v**3))
            dt = (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * v * v)
            return dy * (0.5 * (1.0 + t) + 0.5 * v * dt)
        if kind == "softplus":
            bx = a * v
            return np.where(bx > b, dy, dy * _sigmoid64(bx))
        if kind == "silu":
            s = _sigmoid64(v)
            return dy * s * (1.0 + v * (1.0 - s))
    raise ValueError(f"unknown activation {kind!r}")


# ---------------------------------------------------------------- batch normalization
# float64, written with NumPy reductions over the non-channel axes of each layout.

_BN_AXES = {"NC": ((0,), 1), "NCHW": ((0, 2, 3), 1), "NHWC": ((0, 1, 2), 3)}


def _bn_shape(layout, x):
    axes, ch = _BN_AXES[layout]
    shape = [1] * x.ndim
    shape[ch] = x.shape[ch]
    return axes, shape


def batch_norm_stats(x, layout):
    """Per-channel mean and biased variance (two-pass, float64)."""
    x = _f64(x)
    axes, _ = _bn_shape(layout, x)
    return x.mean(axis=axes), x.var(axis=axes)


def batch_norm_forward(x, weight, bias, mean, var, eps, layout):
    x = _f64(x)
    _, shape = _bn_shape(layout, x)
    xhat = (x - _f64(mean).reshape(shape)) / np.sqrt(_f64(var).reshape(shape) + eps)
    return xhat * _f64(weight).reshape(shape) + _f64(bias).reshape(shape)


def batch_norm_backward(dy, x, weight, eps, layout):
    """Training-mode (dx, dweight, dbias) with the batch's own statistics."""
    dy, x = _f64(dy), _f64(x)
    axes, shape = _bn_shape(layout, x)
    mean, var = batch_norm_stats(x, layout)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    m = x.size // x.shape[_BN_AXES[layout][1]]
    s1 = dy.sum(axis=axes)
    s2 = (dy * xhat).sum(axis=axes)
    dx = (_f64(weight) * invstd).reshape(shape) * (
        dy - s1.reshape(shape) / m - xhat * s2.reshape(shape) / m
    )
    return dx, s2, s1
