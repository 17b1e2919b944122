"""Fused updates with blockwise 8-bit states (Dettmers et al., arXiv 2110.02861):
``adam8bit_`` (Adam/AdamW), ``momentum8bit_`` (SGD with momentum), ``lion8bit_``,
``rmsprop8bit_`` (plain) and ``adagrad8bit_``, float32 parameters.

Each state is a ``State8``: uint8 ``codes`` (one per element) and float32 ``absmax`` (one per
block of ``block_size`` elements, 2048 by default; 256 supported), made by ``state8`` or
``gpugd.quant8.quantize``; Adam's m uses the signed dynamic map, v the unsigned one, the
momentum buffer the signed one (``gpugd.quant8``). One pass: each block is dequantized into
registers, updated in float32, requantized with its new absmax; p, g and each state are read
once and p and each state written once (Adam over fp32 p: 4 + 4 + 2·(1 + 4/B) ≈ 10 B read,
≈ 6 B written). The arithmetic is ``gpugd.reference8``'s, bit for bit on both backends.
``grad_scale``, ``clip_value`` and ``skip_if`` as in ``gpugd.ops.optim``; every argument is
checked before any kernel runs.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from .. import _validate as v
from .. import quant8
from .._lazy import cpu
from .optim import _betas, _clip_value, _grad_scale, _hyper, _moment_scalars, _skip_flag, _step

CUDA_KERNELS = tuple(
    f"gpugd_optim8_{rule}_b{bs}_f32"
    for rule in ("adam", "momentum", "lion", "rmsprop", "adagrad")
    for bs in (2048, 256)
)
# the one-state rules: Numba kind (gpugd._cpu.optim8) and whether the state's map is signed
ONE_STATE = {"momentum": (0, True), "lion": (1, True), "rmsprop": (2, False), "adagrad": (3, False)}


class State8(NamedTuple):
    """One 8-bit state: uint8 codes (the state's shape) and float32 absmax per block."""

    codes: Any
    absmax: Any


def state8(shape: Any, signed: bool, block_size: int = quant8.BLOCK, xp: Any = np) -> State8:
    """An all-zero 8-bit state for an array of ``shape``."""
    n = int(np.prod(shape))
    codes, absmax = quant8.zeros(n, signed, quant8.check_block_size(block_size), xp)
    return State8(codes.reshape(shape), absmax)


@functools.lru_cache(maxsize=8)
def _device_maps(device: int) -> Any:
    import cupy

    return cupy.asarray(np.concatenate([quant8.code_map(True), quant8.code_map(False)]))


@functools.lru_cache(maxsize=2)
def _padded(signed: bool) -> np.ndarray:
    """The float32 map with +inf appended (the Numba search's sentinel at [256])."""
    return np.append(quant8.code_map(signed), np.float32(np.inf))


def _arrays(p: Any, g: Any, states: dict[str, Any], block_size: int) -> str:
    """Validate p, g and the State8s; return the backend."""
    for name, s in states.items():
        if not isinstance(s, State8 | tuple) or len(s) != 2:
            raise TypeError(f"{name}: expected a State8 (codes, absmax), got {type(s).__name__}")
    labelled = {"p": p, "g": g}
    for name, (c, a) in states.items():
        labelled |= {f"{name}.codes": c, f"{name}.absmax": a}
    be = v.array_backend(**labelled)
    v.float_array("p", p, writable=True)
    if p.dtype != np.float32:
        raise TypeError(f"p: 8-bit states take float32 parameters, got {p.dtype}")
    v.float_array("g", g)
    v.same_layout("p", p, "g", g)
    nb = quant8.blocks(p.size, block_size)
    for name, (c, a) in states.items():
        if c.dtype != np.uint8 or c.shape != p.shape or not c.flags.c_contiguous:
            raise TypeError(
                f"{name}.codes: expected C-contiguous uint8 of p's shape {p.shape}, got "
                f"{c.dtype}{list(c.shape)}"
            )
        v.float_array(f"{name}.absmax", a, writable=True)
        if a.dtype != np.float32 or a.shape != (nb,):
            raise TypeError(
                f"{name}.absmax: expected float32 of shape ({nb},) (one per block of "
                f"{block_size}), got {a.dtype}{list(a.shape)}"
            )
        if not getattr(c.flags, "writeable", True):
            raise ValueError(f"{name}.codes: the array is read-only but the op writes into it")
    v.disjoint(labelled)
    return be


def _launch(rule: str, p, g, states: list, scalars: tuple, gs, clip, block_size, skip_if, be):
    if not p.size:
        return
    if be == "cpu":
        if skip_if is not None and int(skip_if.reshape(-1)[0]) != 0:
            return
        k = cpu("optim8")
        flat = [a.reshape(-1) for s in states for a in s]
        f32 = tuple(np.float32(x) for x in scalars)  # flags as 0/1
        tail = (np.float32(gs), np.float32(clip))
        if rule == "adam":
            maps, kind = (_padded(True), _padded(False)), ()
        else:
            kind, signed = ONE_STATE[rule]
            maps, f32 = (_padded(signed),), f32 + (np.float32(0),) * (6 - len(f32))
            kind = (np.int64(kind),)
        bs = np.int64(block_size)
        (k.adam if rule == "adam" else k.one_state)(
            *kind, p.reshape(-1), g.reshape(-1), *flat, *maps, bs, *f32, *tail
        )
        return
    import cupy

    from .. import _cuda, _grid

    null = np.uint64(0)
    args = [p, g, *[a for s in states for a in s], _device_maps(cupy.cuda.Device().id)]
    cu = tuple(np.int32(x) if isinstance(x, bool) else np.float32(x) for x in scalars)
    args += [np.int64(p.size), *cu, np.float32(gs), np.float32(clip)]
    args.append(skip_if if skip_if is not None else null)
    name = f"gpugd_optim8_{rule}_b{block_size}_f32"
    blocks = _grid.kernel_blocks(name, p.size, _cuda.max_blocks("optim8", name))
    _cuda.get_kernel("optim8", name)((blocks,), (_cuda.THREADS,), tuple(args))


def adam8bit_(
    p: Any,
    g: Any,
    exp_avg: State8,
    exp_avg_sq: State8,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    step: int = 1,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    block_size: int = quant8.BLOCK,
) -> Any:
    """Adam (AdamW with ``decoupled=True``) with 8-bit m (signed map) and v (unsigned map):
    per block, m, v = dequantize; d = s·g (+ wd·p); m = β1·m + (1−β1)·d;
    v = β2·v + (1−β2)·d²; p ← p − lr/(1−β1^t) · m/(√v/√(1−β2^t) + ε); m, v = requantize.
    Returns ``p``."""
    block_size = quant8.check_block_size(block_size)
    lr = _hyper("lr", lr)
    b1, b2 = _betas(betas)
    eps = _hyper("eps", eps, lo_open=True)
    weight_decay = _hyper("weight_decay", weight_decay)
    step, gs, clip = _step(step), _grad_scale(grad_scale), _clip_value(clip_value)
    decoupled = v.flag("decoupled", decoupled)
    states = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    be = _arrays(p, g, states, block_size)
    skip_if = _skip_flag(skip_if, be)
    sc = (
        *_moment_scalars(b1, b2, eps, lr, weight_decay, decoupled),
        lr / (1 - b1**step),
        1 / math.sqrt(1 - b2**step),
    )
    _launch("adam", p, g, [exp_avg, exp_avg_sq], sc, gs, clip, block_size, skip_if, be)
    return p


def momentum8bit_(
    p: Any,
    g: Any,
    momentum_buffer: State8,
    *,
    lr: float = 1e-3,
    momentum: float = 0.9,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    step: int = 1,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    block_size: int = quant8.BLOCK,
) -> Any:
    """SGD with momentum (torch.optim.SGD's) and an 8-bit buffer (signed map): d = s·g + wd·p;
    buf = d on step 1, else μ·buf + (1−τ)·d; d = d + μ·buf (Nesterov) or buf; p ← p − lr·d.
    Returns ``p``."""
    block_size = quant8.check_block_size(block_size)
    lr = _hyper("lr", lr)
    momentum = _hyper("momentum", momentum, lo_open=True)
    dampening = _hyper("dampening", dampening, 0.0, 1.0, hi_open=False)
    weight_decay = _hyper("weight_decay", weight_decay)
    step, gs, clip = _step(step), _grad_scale(grad_scale), _clip_value(clip_value)
    nesterov = v.flag("nesterov", nesterov)
    if nesterov and dampening != 0:
        raise ValueError("nesterov: requires dampening = 0 (as torch.optim.SGD)")
    be = _arrays(p, g, {"momentum_buffer": momentum_buffer}, block_size)
    skip_if = _skip_flag(skip_if, be)
    sc = (lr, weight_decay, momentum, 1 - dampening, nesterov, step == 1)
    _launch("momentum", p, g, [momentum_buffer], sc, gs, clip, block_size, skip_if, be)
    return p


def _one_state(rule: str, p: Any, g: Any, name: str, state: Any, sc: tuple, kw: dict) -> Any:
    """Validate the arrays and launch a one-state rule; ``kw``: grad_scale, clip_value,
    skip_if, block_size as the caller got them."""
    block_size = quant8.check_block_size(kw["block_size"])
    gs, clip = _grad_scale(kw["grad_scale"]), _clip_value(kw["clip_value"])
    be = _arrays(p, g, {name: state}, block_size)
    skip_if = _skip_flag(kw["skip_if"], be)
    _launch(rule, p, g, [state], sc, gs, clip, block_size, skip_if, be)
    return p


def lion8bit_(
    p: Any,
    g: Any,
    exp_avg: State8,
    *,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    block_size: int = quant8.BLOCK,
) -> Any:
    """Lion (``gpugd.ops.lion_``) with an 8-bit m (signed map): p ← p·(1 − lr·wd) −
    lr·sign(β1·m + (1−β1)·d); m = β2·m + (1−β2)·d. Returns ``p``."""
    lr = _hyper("lr", lr)
    b1, b2 = _betas(betas)
    wd = _hyper("weight_decay", weight_decay)
    sc = (lr, b1, 1 - b1, b2, 1 - b2, 1 - lr * wd)
    kw = dict(grad_scale=grad_scale, clip_value=clip_value, skip_if=skip_if, block_size=block_size)
    return _one_state("lion", p, g, "exp_avg", exp_avg, sc, kw)


def rmsprop8bit_(
    p: Any,
    g: Any,
    square_avg: State8,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    block_size: int = quant8.BLOCK,
) -> Any:
    """torch.optim.RMSprop (not centered, no momentum) with an 8-bit v (unsigned map):
    d = s·g + wd·p; v = α·v + (1−α)·d²; p ← p − lr·d/(√v + ε). Returns ``p``."""
    lr, alpha = _hyper("lr", lr), _hyper("alpha", alpha, 0.0, 1.0)
    eps, wd = _hyper("eps", eps, lo_open=True), _hyper("weight_decay", weight_decay)
    kw = dict(grad_scale=grad_scale, clip_value=clip_value, skip_if=skip_if, block_size=block_size)
    return _one_state(
        "rmsprop", p, g, "square_avg", square_avg, (lr, wd, alpha, 1 - alpha, eps), kw
    )


def adagrad8bit_(
    p: Any,
    g: Any,
    state_sum: State8,
    *,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    step: int = 1,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    skip_if: Any = None,
    block_size: int = quant8.BLOCK,
) -> Any:
    """torch.optim.Adagrad with an 8-bit sum (unsigned map): d = s·g + wd·p; sum += d²;
    p ← p − lr/(1 + (t−1)·lr_decay) · d/(√sum + ε). Returns ``p``."""
    lr, lr_decay = _hyper("lr", lr), _hyper("lr_decay", lr_decay)
    wd, eps = _hyper("weight_decay", weight_decay), _hyper("eps", eps, lo_open=True)
    clr = lr / (1 + (_step(step) - 1) * lr_decay)
    kw = dict(grad_scale=grad_scale, clip_value=clip_value, skip_if=skip_if, block_size=block_size)
    return _one_state("adagrad", p, g, "state_sum", state_sum, (clr, wd, eps), kw)
