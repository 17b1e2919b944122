"""Fused updates with blockwise 8-bit states (Dettmers et al., arXiv 2110.02861):
``adam8bit_`` (Adam/AdamW), ``momentum8bit_`` (SGD with momentum), ``lion8bit_``,
``rmsprop8bit_`` (plain) and ``adagrad8bit_``; float32, float16 or bfloat16 parameters.

Each state is a ``State8``: uint8 ``codes`` (one per element) and float32 ``absmax`` (one per
block of ``block_size`` elements, 2048 by default; 256 supported), made by ``state8`` or
``gpugd.quant8.quantize``; Adam's m uses the signed dynamic map, v the unsigned one, the
momentum buffer the signed one (``gpugd.quant8``). One pass: each block is dequantized into
registers, updated in float32, requantized with its new absmax; p, g and each state are read
once and p and each state written once (Adam over fp32 p: 4 + 4 + 2·(1 + 4/B) ≈ 10 B read,
≈ 6 B written). The arithmetic is ``gpugd.reference8``'s, bit for bit on both backends.
``grad_scale``, ``clip_value`` and ``skip_if`` as in ``gpugd.ops.optim``; every argument is
checked before any kernel runs.

Half-precision parameters (p and g float16 or bfloat16; the rule in float32): the rule
updates p, rounded once to its format, or, with ``master=`` (float32, p's shape), the fp32
master weights, p receiving round(master) in the same pass (Adam over bf16 p with masters:
2 + 8 + 2 + 2·(2 + 4/B) B per element). ``rounding="stochastic"`` (bfloat16 p) rounds with
16 random bits of a hash of (``seed``'s key mixed with ``stream``, element index), as
``gpugd.ops.adam_``; ``stream`` tells the tensors of one step apart (the optimizers pass
each tensor's index).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from .. import _validate as v
from .. import quant8
from .._lazy import cpu
from .optim import (
    _betas,
    _clip_value,
    _grad_scale,
    _hyper,
    _moment_scalars,
    _skip_flag,
    _step,
    rounding_key,
)

# kernel suffix: the parameters' format, "_master" with fp32 master weights
POLICIES = ("f32", "f16p", "f16p_master", "bf16p", "bf16p_master")
CUDA_KERNELS = tuple(
    f"gpugd_optim8_{rule}_b{bs}_{sfx}"
    for rule in ("adam", "momentum", "lion", "rmsprop", "adagrad")
    for bs in (2048, 256)
    for sfx in POLICIES
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


def mix32(key: int, index: int) -> int:
    """kernels/precision.cuh's mix32 of (32-bit key, index), in Python integers: the key
    of one stream of stochastic rounding."""
    lo, hi, m = index & 0xFFFFFFFF, (index >> 32) & 0xFFFFFFFF, 0xFFFFFFFF
    z = ((lo * 0x9E3779B9) & m) ^ key ^ ((hi * 0x85EBCA6B) & m)
    z ^= z >> 16
    z = (z * 0x7FEB352D) & m
    z ^= z >> 15
    z = (z * 0x846CA68B) & m
    return z ^ (z >> 16)


def _stream_key(p: Any, rounding: str, seed: Any, stream: Any) -> int | None:
    """The key of this tensor's stochastic rounding (None: to nearest even), validated."""
    key = rounding_key(rounding, seed)
    if isinstance(stream, bool) or not isinstance(stream, int | np.integer) or stream < 0:
        raise ValueError(f"stream: expected an integer ≥ 0, got {stream!r}")
    if key is None:
        return None
    if v.dtype_name(p.dtype) != "bfloat16":
        raise ValueError(
            f"rounding: stochastic rounding is for bfloat16 parameters, p is {p.dtype}"
        )
    return mix32(key, int(stream))


def _arrays(p: Any, g: Any, states: dict[str, Any], block_size: int, master: Any = None) -> str:
    """Validate p, g, the State8s and the optional master weights; return the backend."""
    for name, s in states.items():
        if not isinstance(s, State8 | tuple) or len(s) != 2:
            raise TypeError(f"{name}: expected a State8 (codes, absmax), got {type(s).__name__}")
    labelled = {"p": p, "g": g}
    for name, (c, a) in states.items():
        labelled |= {f"{name}.codes": c, f"{name}.absmax": a}
    if master is not None:
        labelled["master"] = master
    be = v.array_backend(**labelled)
    v.float_array("p", p, writable=True, half=True)
    if p.dtype == np.float64:
        raise TypeError("p: 8-bit states take float32, float16 or bfloat16 parameters, got float64")
    v.float_array("g", g, half=True)
    v.same_layout("p", p, "g", g)
    if master is not None:
        if p.dtype == np.float32:
            raise TypeError("master: fp32 master weights go with float16 or bfloat16 parameters")
        v.float_array("master", master, writable=True)
        if master.dtype != np.float32 or master.shape != p.shape:
            raise TypeError(
                f"master: expected float32 of p's shape {p.shape}, got "
                f"{master.dtype}{list(master.shape)}"
            )
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


class _Policy(NamedTuple):
    """How p is stored and rounded: fp32 master weights (or None), the stream's
    stochastic-rounding key (None: nearest)."""

    master: Any = None
    key: int | None = None


def _policy(p: Any, kw: dict[str, Any]) -> _Policy:
    return _Policy(kw["master"], _stream_key(p, kw["rounding"], kw["seed"], kw["stream"]))


def _suffix(p: Any, master: Any) -> str:
    name = v.dtype_name(p.dtype)
    if name == "float32":
        return "f32"
    return ("f16p" if name == "float16" else "bf16p") + ("_master" if master is not None else "")


def _launch(rule: str, p, g, states: list, scalars: tuple, gs, clip, block_size, skip_if, be,
            pol: _Policy):  # fmt: skip
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
        w = (p.reshape(-1), g.reshape(-1), _flat(pol.master), pol.key)
        (k.adam if rule == "adam" else k.one_state)(*kind, *w, *flat, *maps, bs, *f32, *tail)
        return
    import cupy

    from .. import _cuda, _grid

    null = np.uint64(0)
    w, out = (pol.master, p) if pol.master is not None else (p, null)
    args = [w, g, out, *[a for s in states for a in s], _device_maps(cupy.cuda.Device().id)]
    cu = tuple(np.int32(x) if isinstance(x, bool) else np.float32(x) for x in scalars)
    args += [np.int64(p.size), *cu, np.float32(gs), np.float32(clip)]
    args += [np.uint32(pol.key or 0), np.int32(pol.key is not None)]
    args.append(skip_if if skip_if is not None else null)
    name = f"gpugd_optim8_{rule}_b{block_size}_{_suffix(p, pol.master)}"
    blocks = _grid.kernel_blocks(name, p.size, _cuda.max_blocks("optim8", name))
    _cuda.get_kernel("optim8", name)((blocks,), (_cuda.THREADS,), tuple(args))


def _flat(a: Any) -> Any:
    return None if a is None else a.reshape(-1)


def _run(rule: str, p: Any, g: Any, states: dict[str, Any], sc: tuple, kw: dict) -> Any:
    """Validate the arrays and the precision policy, then launch; ``kw``: the keywords every
    8-bit op shares (``_shared``) as the caller got them."""
    block_size = quant8.check_block_size(kw["block_size"])
    gs, clip = _grad_scale(kw["grad_scale"]), _clip_value(kw["clip_value"])
    be = _arrays(p, g, states, block_size, kw["master"])
    pol = _policy(p, kw)
    skip_if = _skip_flag(kw["skip_if"], be)
    _launch(rule, p, g, list(states.values()), sc, gs, clip, block_size, skip_if, be, pol)
    return p


def _shared(grad_scale, clip_value, skip_if, block_size, master, rounding, seed, stream):
    """The keywords every 8-bit op takes, as ``_run`` reads them."""
    return dict(
        grad_scale=grad_scale,
        clip_value=clip_value,
        skip_if=skip_if,
        block_size=block_size,
        master=master,
        rounding=rounding,
        seed=seed,
        stream=stream,
    )


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
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
    stream: int = 0,
) -> Any:
    """Adam (AdamW with ``decoupled=True``) with 8-bit m (signed map) and v (unsigned map):
    per block, m, v = dequantize; d = s·g (+ wd·p); m = β1·m + (1−β1)·d;
    v = β2·v + (1−β2)·d²; p ← p − lr/(1−β1^t) · m/(√v/√(1−β2^t) + ε); m, v = requantize.
    ``master``, ``rounding``, ``seed``, ``stream``: half-precision p (module text).
    Returns ``p``."""
    lr = _hyper("lr", lr)
    b1, b2 = _betas(betas)
    eps = _hyper("eps", eps, lo_open=True)
    weight_decay = _hyper("weight_decay", weight_decay)
    step = _step(step)
    decoupled = v.flag("decoupled", decoupled)
    sc = (
        *_moment_scalars(b1, b2, eps, lr, weight_decay, decoupled),
        lr / (1 - b1**step),
        1 / math.sqrt(1 - b2**step),
    )
    kw = _shared(grad_scale, clip_value, skip_if, block_size, master, rounding, seed, stream)
    return _run("adam", p, g, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}, sc, kw)


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
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
    stream: int = 0,
) -> Any:
    """SGD with momentum (torch.optim.SGD's) and an 8-bit buffer (signed map): d = s·g + wd·p;
    buf = d on step 1, else μ·buf + (1−τ)·d; d = d + μ·buf (Nesterov) or buf; p ← p − lr·d.
    Returns ``p``."""
    lr = _hyper("lr", lr)
    momentum = _hyper("momentum", momentum, lo_open=True)
    dampening = _hyper("dampening", dampening, 0.0, 1.0, hi_open=False)
    weight_decay = _hyper("weight_decay", weight_decay)
    step = _step(step)
    nesterov = v.flag("nesterov", nesterov)
    if nesterov and dampening != 0:
        raise ValueError("nesterov: requires dampening = 0 (as torch.optim.SGD)")
    sc = (lr, weight_decay, momentum, 1 - dampening, nesterov, step == 1)
    kw = _shared(grad_scale, clip_value, skip_if, block_size, master, rounding, seed, stream)
    return _run("momentum", p, g, {"momentum_buffer": momentum_buffer}, sc, kw)


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
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
    stream: int = 0,
) -> Any:
    """Lion (``gpugd.ops.lion_``) with an 8-bit m (signed map): p ← p·(1 − lr·wd) −
    lr·sign(β1·m + (1−β1)·d); m = β2·m + (1−β2)·d. Returns ``p``."""
    lr = _hyper("lr", lr)
    b1, b2 = _betas(betas)
    wd = _hyper("weight_decay", weight_decay)
    sc = (lr, b1, 1 - b1, b2, 1 - b2, 1 - lr * wd)
    kw = _shared(grad_scale, clip_value, skip_if, block_size, master, rounding, seed, stream)
    return _run("lion", p, g, {"exp_avg": exp_avg}, sc, kw)


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
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
    stream: int = 0,
) -> Any:
    """torch.optim.RMSprop (not centered, no momentum) with an 8-bit v (unsigned map):
    d = s·g + wd·p; v = α·v + (1−α)·d²; p ← p − lr·d/(√v + ε). Returns ``p``."""
    lr, alpha = _hyper("lr", lr), _hyper("alpha", alpha, 0.0, 1.0)
    eps, wd = _hyper("eps", eps, lo_open=True), _hyper("weight_decay", weight_decay)
    sc = (lr, wd, alpha, 1 - alpha, eps)
    kw = _shared(grad_scale, clip_value, skip_if, block_size, master, rounding, seed, stream)
    return _run("rmsprop", p, g, {"square_avg": square_avg}, sc, kw)


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
    master: Any = None,
    rounding: str = "nearest",
    seed: int = 0,
    stream: int = 0,
) -> Any:
    """torch.optim.Adagrad with an 8-bit sum (unsigned map): d = s·g + wd·p; sum += d²;
    p ← p − lr/(1 + (t−1)·lr_decay) · d/(√sum + ε). Returns ``p``."""
    lr, lr_decay = _hyper("lr", lr), _hyper("lr_decay", lr_decay)
    wd, eps = _hyper("weight_decay", weight_decay), _hyper("eps", eps, lo_open=True)
    sc = (lr / (1 + (_step(step) - 1) * lr_decay), wd, eps)
    kw = _shared(grad_scale, clip_value, skip_if, block_size, master, rounding, seed, stream)
    return _run("adagrad", p, g, {"state_sum": state_sum}, sc, kw)
