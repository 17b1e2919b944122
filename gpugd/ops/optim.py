"""Fused optimizer updates with torch.optim's semantics: ``sgd_``, ``adagrad_``,
``rmsprop_``, ``adam_`` (AdamW: ``decoupled=True``), ``nadam_``.

Each is one pass over memory: it reads p, g and the states once and writes p and the
states once. ``g`` is multiplied by ``grad_scale`` before use (how clipping and loss
scaling fuse in) and is never written. ``skip_if``: an int32 array of one element on the
arrays' device; when it is non-zero the step is skipped and nothing is written (on the GPU
the kernel reads the flag itself, so no host synchronization is needed). ``step`` counts
from 1, this step included. Arrays: same shape, same float dtype, C-contiguous, on one
backend, p and states pairwise disjoint. Every argument is checked before any kernel
runs; a rejected call writes nothing. Per-element math: ``kernels/optim.cu`` (CUDA) and
``gpugd/_cpu/optim.py`` (Numba); the float64 specification: ``gpugd.reference``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _validate as v
from ..reference import nadam_mu

CUDA_KERNELS = tuple(
    f"gpugd_optim_{rule}_{sfx}"
    for rule in ("sgd", "adagrad", "rmsprop", "adam", "nadam")
    for sfx in ("f32", "f64")
)


def _arrays(p: Any, g: Any, states: dict[str, Any]) -> str:
    """Validate p, g and the given states; return the backend name."""
    given = {k: a for k, a in states.items() if a is not None}
    be = v.array_backend(p=p, g=g, **given)
    v.float_array("p", p, writable=True)
    v.float_array("g", g)
    v.same_layout("p", p, "g", g)
    for name, a in given.items():
        v.float_array(name, a, writable=True)
        v.same_layout("p", p, name, a)
    if be == "cpu":
        xp = np
    else:
        import cupy as xp
    arrays = [("p", p), ("g", g), *given.items()]
    for i, (na, a) in enumerate(arrays):
        for nb, b in arrays[i + 1 :]:
            if a.size and xp.may_share_memory(a, b):
                raise ValueError(f"{nb} shares memory with {na}; pass separate arrays")
    return be


def _required(name: str, a: Any, why: str) -> None:
    if a is None:
        raise ValueError(f"{name}: required when {why}")


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


def _cpu_moment_scalars(
    t, b1: float, b2: float, eps: float, lr: float, weight_decay: float, decoupled: bool
) -> tuple:
    """The leading scalars of the CPU Adam/NAdam kernels: β1, 1−β1, β2, 1−β2, ε, then weight
    decay as (wd_c, decay_mul): coupled (wd, 1) or decoupled (0, 1 − lr·wd)."""
    wd_c, decay_mul = (0.0, 1 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    return tuple(t(x) for x in (b1, 1 - b1, b2, 1 - b2, eps, wd_c, decay_mul))


def _run(
    rule: str, be: str, p, g, states: list, scalars: tuple, cpu_scalars: tuple, skip_if
) -> None:
    """Launch ``rule``. ``states``: arrays or None (unused); ``scalars``: the CUDA kernel's
    scalar arguments after ``n``; ``cpu_scalars``: the Numba driver's after the states."""
    if p.size == 0:
        return
    if be == "cpu":
        if skip_if is not None and int(skip_if.reshape(-1)[0]) != 0:
            return
        from .._cpu import optim as k

        dummy = np.zeros(1, p.dtype)
        flat = [s.reshape(-1) if s is not None else dummy for s in states]
        k.run(rule, p.reshape(-1), g.reshape(-1), *flat, *cpu_scalars)
        return
    from .. import _cuda

    null = np.uint64(0)
    args = (
        p,
        g,
        *(s if s is not None else null for s in states),
        np.int64(p.size),
        *scalars,
        skip_if if skip_if is not None else null,
    )
    _cuda.launch("optim", f"gpugd_optim_{rule}_{_cuda.dtype_suffix(p.dtype)}", p.size, args)


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
    skip_if: Any = None,
) -> Any:
    """torch.optim.SGD, fused: d = s·g + wd·p; with momentum μ: buf = d on step 1, else
    μ·buf + (1−τ)·d; d = d + μ·buf (Nesterov) or buf; p ← p − lr·d. Returns ``p``."""
    lr = _hyper("lr", lr)
    momentum = _hyper("momentum", momentum)
    dampening = _hyper("dampening", dampening, 0.0, 1.0, hi_open=False)
    weight_decay = _hyper("weight_decay", weight_decay)
    step, gs = _step(step), _grad_scale(grad_scale)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov: requires momentum > 0 and dampening = 0 (as torch.optim.SGD)")
    has_buf = momentum != 0
    if has_buf:
        _required("momentum_buffer", momentum_buffer, "momentum != 0")
    be = _arrays(p, g, {"momentum_buffer": momentum_buffer if has_buf else None})
    skip_if = _skip_flag(skip_if, be)
    t = p.dtype.type
    first = int(step == 1)
    _run(
        "sgd",
        be,
        p,
        g,
        [momentum_buffer if has_buf else None],
        (
            t(lr),
            t(weight_decay),
            t(momentum),
            t(dampening),
            np.int32(nesterov),
            np.int32(first),
            t(gs),
        ),
        (
            t(lr),
            t(weight_decay),
            t(momentum),
            t(1 - dampening),
            bool(nesterov),
            bool(first),
            has_buf,
            t(gs),
        ),
        skip_if,
    )
    return p


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
    skip_if: Any = None,
) -> Any:
    """torch.optim.Adagrad, fused: d = s·g + wd·p; sum += d²;
    p ← p − lr/(1 + (t−1)·lr_decay) · d/(√sum + ε). Returns ``p``."""
    lr = _hyper("lr", lr)
    lr_decay = _hyper("lr_decay", lr_decay)
    weight_decay = _hyper("weight_decay", weight_decay)
    eps = _hyper("eps", eps, lo_open=True)
    step, gs = _step(step), _grad_scale(grad_scale)
    be = _arrays(p, g, {"state_sum": state_sum})
    skip_if = _skip_flag(skip_if, be)
    t = p.dtype.type
    clr = lr / (1 + (step - 1) * lr_decay)
    sc = (t(clr), t(weight_decay), t(eps), t(gs))
    _run("adagrad", be, p, g, [state_sum], sc, sc, skip_if)
    return p


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
    skip_if: Any = None,
) -> Any:
    """torch.optim.RMSprop, fused: v = α·v + (1−α)·d²; centered: m̄ = α·m̄ + (1−α)·d and
    den = √(v − m̄²) + ε, else √v + ε; with momentum μ: b = μ·b + d/den, p ← p − lr·b;
    else p ← p − lr·d/den. Returns ``p``."""
    lr = _hyper("lr", lr)
    alpha = _hyper("alpha", alpha, 0.0, 1.0)
    eps = _hyper("eps", eps, lo_open=True)
    weight_decay = _hyper("weight_decay", weight_decay)
    momentum = _hyper("momentum", momentum)
    gs = _grad_scale(grad_scale)
    has_buf = momentum > 0
    if centered:
        _required("grad_avg", grad_avg, "centered=True")
    if has_buf:
        _required("momentum_buffer", momentum_buffer, "momentum > 0")
    states = {
        "square_avg": square_avg,
        "grad_avg": grad_avg if centered else None,
        "momentum_buffer": momentum_buffer if has_buf else None,
    }
    be = _arrays(p, g, states)
    skip_if = _skip_flag(skip_if, be)
    t = p.dtype.type
    _run(
        "rmsprop",
        be,
        p,
        g,
        list(states.values()),
        (t(lr), t(alpha), t(eps), t(weight_decay), t(momentum), t(gs)),
        (
            t(lr),
            t(alpha),
            t(1 - alpha),
            t(eps),
            t(weight_decay),
            t(momentum),
            bool(centered),
            has_buf,
            t(gs),
        ),
        skip_if,
    )
    return p


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
    skip_if: Any = None,
) -> Any:
    """torch.optim.Adam; AdamW with ``decoupled=True`` (p ← p·(1 − lr·wd) first, instead of
    d = d + wd·p). m = β1·m + (1−β1)·d; v = β2·v + (1−β2)·d²; v̂ = v or max(v̂, v);
    p ← p − lr/(1−β1^t) · m / (√v̂/√(1−β2^t) + ε). Returns ``p``."""
    lr = _hyper("lr", lr)
    b1, b2 = _betas(betas)
    eps = _hyper("eps", eps, lo_open=True)
    weight_decay = _hyper("weight_decay", weight_decay)
    step, gs = _step(step), _grad_scale(grad_scale)
    if amsgrad:
        _required("max_exp_avg_sq", max_exp_avg_sq, "amsgrad=True")
    states = {
        "exp_avg": exp_avg,
        "exp_avg_sq": exp_avg_sq,
        "max_exp_avg_sq": max_exp_avg_sq if amsgrad else None,
    }
    be = _arrays(p, g, states)
    skip_if = _skip_flag(skip_if, be)
    t = p.dtype.type
    step_size = lr / (1 - b1**step)
    bc2_sqrt = math.sqrt(1 - b2**step)
    _run(
        "adam",
        be,
        p,
        g,
        list(states.values()),
        (
            t(lr),
            t(b1),
            t(b2),
            t(eps),
            t(weight_decay),
            np.int32(decoupled),
            t(step_size),
            t(bc2_sqrt),
            t(gs),
        ),
        (
            *_cpu_moment_scalars(t, b1, b2, eps, lr, weight_decay, decoupled),
            bool(amsgrad),
            t(step_size),
            t(bc2_sqrt),
            t(gs),
        ),
        skip_if,
    )
    return p


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
    skip_if: Any = None,
) -> Any:
    """torch.optim.NAdam. ``mu_product``: Π μ_s over the steps *before* this one (1.0 at
    step 1); multiply it by ``gpugd.reference.nadam_mu(step, β1, ψ)`` after each step.
    μ_t = β1·(1 − ½·0.96^(t·ψ)); den = √(v/(1−β2^t)) + ε;
    p ← p − lr·(1−μ_t)/(1−Π_t)·d/den − lr·μ_{t+1}/(1−Π_t·μ_{t+1})·m/den. Returns ``p``."""
    lr = _hyper("lr", lr)
    b1, b2 = _betas(betas)
    eps = _hyper("eps", eps, lo_open=True)
    weight_decay = _hyper("weight_decay", weight_decay)
    momentum_decay = _hyper("momentum_decay", momentum_decay)
    mu_product = _hyper("mu_product", mu_product, 0.0, 1.0, lo_open=True, hi_open=False)
    step, gs = _step(step), _grad_scale(grad_scale)
    be = _arrays(p, g, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq})
    skip_if = _skip_flag(skip_if, be)
    t = p.dtype.type
    mu, mu_next = nadam_mu(step, b1, momentum_decay), nadam_mu(step + 1, b1, momentum_decay)
    prod = mu_product * mu
    c_g = lr * (1 - mu) / (1 - prod)
    c_m = lr * mu_next / (1 - prod * mu_next)
    bc2 = 1 - b2**step
    _run(
        "nadam",
        be,
        p,
        g,
        [exp_avg, exp_avg_sq],
        (
            t(lr),
            t(b1),
            t(b2),
            t(eps),
            t(weight_decay),
            np.int32(decoupled),
            t(c_g),
            t(c_m),
            t(bc2),
            t(gs),
        ),
        (
            *_cpu_moment_scalars(t, b1, b2, eps, lr, weight_decay, decoupled),
            t(c_g),
            t(c_m),
            t(bc2),
            t(gs),
        ),
        skip_if,
    )
    return p
