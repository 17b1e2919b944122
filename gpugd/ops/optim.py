"""Fused optimizer updates with torch.optim's semantics: ``sgd_``, ``adagrad_``,
``rmsprop_``, ``adam_`` (AdamW: ``decoupled=True``), ``nadam_``; ``lion_`` with
lion-pytorch's.

Each is one pass over memory: it reads p, g and the states once and writes p and the
states once. ``g`` is multiplied by ``grad_scale`` before use (how clipping and loss
scaling fuse in) and is never written. ``skip_if``: an int32 array of one element on the
arrays' device; when it is non-zero the step is skipped and nothing is written (on the GPU
the kernel reads the flag itself, so no host synchronization is needed). ``step`` counts
from 1, this step included. Arrays: same shape, same float dtype, C-contiguous, on one
backend, p and states pairwise disjoint.

Mixed precision: p and g may be float16 or bfloat16 (``ml_dtypes.bfloat16``) with the
states in float32 (the default policy) or bfloat16; the rule then runs in float32
registers and each result is rounded once, to nearest even. ``master=``: float32 master
weights (p's shape) that the rule updates instead, p receiving round(master) in the same
pass, so updates smaller than half an ulp of p still accumulate. ``rounding="stochastic"``
(bfloat16 p only) rounds p's stores up with probability (dropped part)/ulp from a
counter-based hash of ``seed`` and the element index: unbiased, reproducible per seed;
pass a new seed each step. Every argument is checked before any kernel
runs; a rejected call writes nothing. Per-element math: ``kernels/optim.cu`` (CUDA) and
``gpugd/_cpu/optim.py`` (Numba); the float64 specification: ``gpugd.reference``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import _validate as v
from ..reference import nadam_mu
from ._optim_tensors import CUDA_CHUNK as CUDA_CHUNK  # re-exported: graph, _grid use them
from ._optim_tensors import Tensors as Tensors

RULES = ("sgd", "adagrad", "rmsprop", "adam", "nadam", "lion")
MIXED_POLICIES = tuple(
    f"{p}p_{s}s{m}" for p in ("f16", "bf16") for s in ("f32", "bf16") for m in ("", "_master")
)
CUDA_KERNELS = (
    tuple(
        f"gpugd_optim_{rule}{multi}_{sfx}"
        for rule in RULES
        for multi in ("", "_multi")
        for sfx in ("f32", "f64")
    )
    + tuple(f"gpugd_optim_{rule}_multi_{pol}" for rule in RULES for pol in MIXED_POLICIES)
    + ("gpugd_optim_adam_prepare", "gpugd_optim_adam_graph_f32")
    + tuple(f"gpugd_optim_adam_graph_{pol}" for pol in MIXED_POLICIES)
    + ("gpugd_optim_step_decide",)
)


def _required(name: str, a: Any, why: str) -> None:
    if a is None:
        raise ValueError(f"{name}: required{why}")


def _hyper(
    name: str,
    value: Any,
    lo: float = 0.0,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = True,
) -> float:
    """A finite real hyperparameter in [lo, hi) (bounds open or closed as asked)."""
    x = v.real_scalar(name, value)
    below = x <= lo if lo_open else x < lo
    above = x >= hi if hi_open else x > hi
    if not math.isfinite(x) or below or above:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name}: expected a finite value in {lb}{lo}, {hi}{rb}, got {value!r}")
    return x


def _betas(betas: Any) -> tuple[float, float]:
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}") from None
    return _hyper("betas[0]", b1, 0.0, 1.0), _hyper("betas[1]", b2, 0.0, 1.0)


def _step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 1:
        raise ValueError(f"step: expected an integer ≥ 1 (this step included), got {step!r}")
    return int(step)


def _grad_scale(grad_scale: Any) -> float:
    x = v.real_scalar("grad_scale", grad_scale)
    if not math.isfinite(x):
        raise ValueError(f"grad_scale: expected a finite multiplier, got {grad_scale!r}")
    return x


def _clip_value(clip_value: Any) -> float:
    """``None`` (off: ∞) or a positive finite bound for |g·grad_scale|."""
    if clip_value is None:
        return math.inf
    x = v.real_scalar("clip_value", clip_value)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"clip_value: expected a finite value > 0 or None, got {clip_value!r}")
    return x


def _skip_flag(skip_if: Any, be: str) -> Any:
    if skip_if is None:
        return None
    if v.array_backend(skip_if=skip_if) != be:
        raise TypeError(f"skip_if: must live on the {be} backend like p")
    if skip_if.dtype != np.int32 or skip_if.size != 1:
        raise TypeError(
            f"skip_if: expected a one-element int32 array, got {skip_if.dtype} of size "
            f"{skip_if.size}"
        )
    return skip_if


def _moment_scalars(
    b1: float, b2: float, eps: float, lr: float, weight_decay: float, decoupled: bool
) -> tuple:
    """The leading scalars of the Adam/NAdam kernels of both backends: β1, 1−β1, β2, 1−β2,
    ε, then weight decay as (wd_c, decay_mul): coupled (wd, 1) or decoupled (0, 1 − lr·wd).
    Computed here in float64 and rounded once to the arrays' dtype, for both backends."""
    wd_c, decay_mul = (0.0, 1 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    return (b1, 1 - b1, b2, 1 - b2, eps, wd_c, decay_mul)


class Kernel(NamedTuple):
    """One configured update, validated: the rule, its states in kernel slot order (name →
    None when unused, else the reason it is required, for the error message), and the
    scalar arguments of its kernel, the same for the CUDA and the Numba one (floats are cast
    to the arrays' dtype, bools become flags). The arithmetic contract: the scalars are
    computed once here in float64 (1 − β, 1 − dampening, 1 − lr·wd, bias corrections) and
    rounded once, so both kernels see the same values and give the same bits. Built by
    ``sgd_kernel`` … ``nadam_kernel``; the optimizer classes build one per step and launch
    it on the ``Tensors`` they keep."""

    rule: str
    states: dict[str, str | None]
    scalars: tuple
    grad_scale: float = 1.0
    clip: float = math.inf
    key: int | None = None  # stochastic-rounding key (bfloat16 parameters), None: nearest

    def tensors(self, p: Any, g: Any, given: dict[str, Any], master: Any = None) -> Tensors:
        """Validate p, g, the states this configuration uses (others are ignored) and the
        optional fp32 master weights."""
        for name, why in self.states.items():
            if why is not None:
                _required(name, given.get(name), why)
        states = {n: given.get(n) if w is not None else None for n, w in self.states.items()}
        tensors = Tensors(p, g, states, master)
        bf16 = tensors.dtype is not None and v.dtype_name(tensors.dtype) == "bfloat16"
        if self.key is not None and not bf16:
            raise ValueError(
                f"rounding: stochastic rounding is for bfloat16 parameters, p is {tensors.dtype}"
            )
        return tensors

    def launch(
        self, tensors: Tensors, skip_if: Any = None, stats: bool = False, dev_scale: Any = None
    ) -> Any:
        """Run on ``tensors``; with ``stats`` return their per-tensor update statistics
        (``Tensors.launch``); ``dev_scale`` as there (the optimizers' device-decided step)."""
        skip_if = _skip_flag(skip_if, tensors.backend)
        tail = (self.grad_scale, self.clip)
        return tensors.launch(self.rule, self.scalars + tail, skip_if, stats, self.key, dev_scale)


ROUNDINGS = ("nearest", "stochastic")


def rounding_key(rounding: str, seed: Any) -> int | None:
    """The 32-bit key of stochastic rounding (None for round-to-nearest-even), validated."""
    rounding = v.choice("rounding", rounding, ROUNDINGS)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: expected an integer ≥ 0, got {seed!r}")
    if rounding == "nearest":
        return None
    z = (int(seed) * 0x9E3779B97F4A7C15 + 0xD1B54A32D192ED03) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (z ^ (z >> 31)) & 0xFFFFFFFF


def _apply(
    kernel: Kernel,
    p: Any,
    g: Any,
    given: dict[str, Any],
    skip_if: Any,
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
) -> Any:
    kernel = kernel._replace(key=rounding_key(rounding, seed))
    kernel.launch(kernel.tensors(p, g, given, master), skip_if)
    return p


def sgd_kernel(
    *,
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    step: int = 1,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
) -> Kernel:
    """The SGD update of ``sgd_`` for these hyperparameters (validated)."""
    lr = _hyper("lr", lr)
    momentum = _hyper("momentum", momentum)
    dampening = _hyper("dampening", dampening, 0.0, 1.0, hi_open=False)
    weight_decay = _hyper("weight_decay", weight_decay)
    step, gs = _step(step), _grad_scale(grad_scale)
    clip = _clip_value(clip_value)
    nesterov = v.flag("nesterov", nesterov)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov: requires momentum > 0 and dampening = 0 (as torch.optim.SGD)")
    has_buf, first = momentum != 0, step == 1
    return Kernel(
        "sgd",
        {"momentum_buffer": " when momentum != 0" if has_buf else None},
        (lr, weight_decay, momentum, 1 - dampening, nesterov, first, has_buf),
        gs,
        clip,
    )


def sgd_(
    p: Any,
    g: Any,
    momentum_buffer: Any = None,
    *,
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    step: int = 1,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
) -> Any:
    """torch.optim.SGD, fused: d = s·g + wd·p; with momentum μ: buf = d on step 1, else
    μ·buf + (1−τ)·d; d = d + μ·buf (Nesterov) or buf; p ← p − lr·d. Returns ``p``."""
    k = sgd_kernel(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        step=step,
        grad_scale=grad_scale,
        clip_value=clip_value,
    )
    return _apply(k, p, g, {"momentum_buffer": momentum_buffer}, skip_if, master, rounding, seed)


def adagrad_kernel(
    *,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    step: int = 1,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
) -> Kernel:
    """The Adagrad update of ``adagrad_`` for these hyperparameters (validated)."""
    lr = _hyper("lr", lr)
    lr_decay = _hyper("lr_decay", lr_decay)
    weight_decay = _hyper("weight_decay", weight_decay)
    eps = _hyper("eps", eps, lo_open=True)
    step, gs = _step(step), _grad_scale(grad_scale)
    clip = _clip_value(clip_value)
    sc = (lr / (1 + (step - 1) * lr_decay), weight_decay, eps)
    return Kernel("adagrad", {"state_sum": ""}, sc, gs, clip)


def adagrad_(
    p: Any,
    g: Any,
    state_sum: Any,
    *,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    step: int = 1,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
) -> Any:
    """torch.optim.Adagrad, fused: d = s·g + wd·p; sum += d²;
    p ← p − lr/(1 + (t−1)·lr_decay) · d/(√sum + ε). Returns ``p``."""
    k = adagrad_kernel(
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        eps=eps,
        step=step,
        grad_scale=grad_scale,
        clip_value=clip_value,
    )
    return _apply(k, p, g, {"state_sum": state_sum}, skip_if, master, rounding, seed)


def rmsprop_kernel(
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
) -> Kernel:
    """The RMSprop update of ``rmsprop_`` for these hyperparameters (validated)."""
    lr = _hyper("lr", lr)
    alpha = _hyper("alpha", alpha, 0.0, 1.0)
    eps = _hyper("eps", eps, lo_open=True)
    weight_decay = _hyper("weight_decay", weight_decay)
    momentum = _hyper("momentum", momentum)
    gs = _grad_scale(grad_scale)
    clip = _clip_value(clip_value)
    has_buf, centered = momentum > 0, v.flag("centered", centered)
    return Kernel(
        "rmsprop",
        {
            "square_avg": "",
            "grad_avg": " when centered=True" if centered else None,
            "momentum_buffer": " when momentum > 0" if has_buf else None,
        },
        (lr, alpha, 1 - alpha, eps, weight_decay, momentum, centered, has_buf),
        gs,
        clip,
    )


def rmsprop_(
    p: Any,
    g: Any,
    square_avg: Any,
    grad_avg: Any = None,
    momentum_buffer: Any = None,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
) -> Any:
    """torch.optim.RMSprop, fused: v = α·v + (1−α)·d²; centered: m̄ = α·m̄ + (1−α)·d and
    den = √(v − m̄²) + ε, else √v + ε; with momentum μ: b = μ·b + d/den, p ← p − lr·b;
    else p ← p − lr·d/den. Returns ``p``."""
    k = rmsprop_kernel(
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        grad_scale=grad_scale,
        clip_value=clip_value,
    )
    given = {"square_avg": square_avg, "grad_avg": grad_avg, "momentum_buffer": momentum_buffer}
    return _apply(k, p, g, given, skip_if, master, rounding, seed)


def adam_kernel(
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    decoupled: bool = False,
    step: int = 1,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
) -> Kernel:
    """The Adam/AdamW update of ``adam_`` for these hyperparameters (validated)."""
    lr = _hyper("lr", lr)
    b1, b2 = _betas(betas)
    eps = _hyper("eps", eps, lo_open=True)
    weight_decay = _hyper("weight_decay", weight_decay)
    step, gs = _step(step), _grad_scale(grad_scale)
    clip = _clip_value(clip_value)
    amsgrad, decoupled = v.flag("amsgrad", amsgrad), v.flag("decoupled", decoupled)
    step_size = lr / (1 - b1**step)
    inv_bc2_sqrt = 1 / math.sqrt(1 - b2**step)
    return Kernel(
        "adam",
        {
            "exp_avg": "",
            "exp_avg_sq": "",
            "max_exp_avg_sq": " when amsgrad=True" if amsgrad else None,
        },
        (
            *_moment_scalars(b1, b2, eps, lr, weight_decay, decoupled),
            amsgrad,
            step_size,
            inv_bc2_sqrt,
        ),
        gs,
        clip,
    )


def adam_(
    p: Any,
    g: Any,
    exp_avg: Any,
    exp_avg_sq: Any,
    max_exp_avg_sq: Any = None,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    decoupled: bool = False,
    step: int = 1,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
) -> Any:
    """torch.optim.Adam; AdamW with ``decoupled=True`` (p ← p·(1 − lr·wd) first, instead of
    d = d + wd·p). m = β1·m + (1−β1)·d; v = β2·v + (1−β2)·d²; v̂ = v or max(v̂, v);
    p ← p − lr/(1−β1^t) · m / (√v̂/√(1−β2^t) + ε). Returns ``p``."""
    k = adam_kernel(
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        decoupled=decoupled,
        step=step,
        grad_scale=grad_scale,
        clip_value=clip_value,
    )
    given = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "max_exp_avg_sq": max_exp_avg_sq}
    return _apply(k, p, g, given, skip_if, master, rounding, seed)


def nadam_kernel(
    *,
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled: bool = False,
    step: int = 1,
    mu_product: float = 1.0,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
) -> Kernel:
    """The NAdam update of ``nadam_`` for these hyperparameters (validated)."""
    lr = _hyper("lr", lr)
    b1, b2 = _betas(betas)
    eps = _hyper("eps", eps, lo_open=True)
    weight_decay = _hyper("weight_decay", weight_decay)
    momentum_decay = _hyper("momentum_decay", momentum_decay)
    mu_product = _hyper("mu_product", mu_product, 0.0, 1.0, lo_open=True, hi_open=False)
    step, gs = _step(step), _grad_scale(grad_scale)
    clip = _clip_value(clip_value)
    decoupled = v.flag("decoupled", decoupled)
    mu, mu_next = nadam_mu(step, b1, momentum_decay), nadam_mu(step + 1, b1, momentum_decay)
    prod = mu_product * mu
    c_g = lr * (1 - mu) / (1 - prod)
    c_m = lr * mu_next / (1 - prod * mu_next)
    inv_bc2 = 1 / (1 - b2**step)
    return Kernel(
        "nadam",
        {"exp_avg": "", "exp_avg_sq": ""},
        (*_moment_scalars(b1, b2, eps, lr, weight_decay, decoupled), c_g, c_m, inv_bc2),
        gs,
        clip,
    )


def nadam_(
    p: Any,
    g: Any,
    exp_avg: Any,
    exp_avg_sq: Any,
    *,
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled: bool = False,
    step: int = 1,
    mu_product: float = 1.0,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
) -> Any:
    """torch.optim.NAdam. ``mu_product``: Π μ_s over the steps *before* this one (1.0 at
    step 1); multiply it by ``gpugd.reference.nadam_mu(step, β1, ψ)`` after each step.
    μ_t = β1·(1 − ½·0.96^(t·ψ)); den = √(v/(1−β2^t)) + ε;
    p ← p − lr·(1−μ_t)/(1−Π_t)·d/den − lr·μ_{t+1}/(1−Π_t·μ_{t+1})·m/den. Returns ``p``."""
    k = nadam_kernel(
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        momentum_decay=momentum_decay,
        decoupled=decoupled,
        step=step,
        mu_product=mu_product,
        grad_scale=grad_scale,
        clip_value=clip_value,
    )
    return _apply(
        k, p, g, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}, skip_if, master, rounding, seed
    )


def lion_kernel(
    *,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
) -> Kernel:
    """The Lion update of ``lion_`` for these hyperparameters (validated)."""
    lr = _hyper("lr", lr)
    b1, b2 = _betas(betas)
    weight_decay = _hyper("weight_decay", weight_decay)
    gs, clip = _grad_scale(grad_scale), _clip_value(clip_value)
    sc = (lr, b1, 1 - b1, b2, 1 - b2, 1 - lr * weight_decay)
    return Kernel("lion", {"exp_avg": ""}, sc, gs, clip)


def lion_(
    p: Any,
    g: Any,
    exp_avg: Any,
    *,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
) -> Any:
    """Lion (Chen et al. 2023) as lion-pytorch's ``Lion``: p ← p·(1 − lr·wd);
    p ← p − lr·sign(β1·m + (1−β1)·d); m = β2·m + (1−β2)·d, d = s·g (clamped to ±clip_value).
    sign(0) = 0. One state; 20 bytes per fp32 element. Returns ``p``."""
    k = lion_kernel(
        lr=lr, betas=betas, weight_decay=weight_decay, grad_scale=grad_scale, clip_value=clip_value
    )
    return _apply(k, p, g, {"exp_avg": exp_avg}, skip_if, master, rounding, seed)
