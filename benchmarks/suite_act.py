"""Suite ``act``: each activation's fused backward dx = dy·f'(·) on one fp32 buffer, and its
forward y = f(x).

Fewest bytes per element: read dy and x (or y), write dx: 12 (3 words). Two rows per
activation: ``<kind>_backward`` writes into a preallocated ``out`` (dy, x read, dx written
fresh), held against the loop with that traffic over the same buffers (``ceilings.traffic``:
``r2w1``; where the CPU write-allocates, loop and kernel both pay for it);
``<kind>_backward inplace`` writes dx over dy (``out=dy``, what ``gpugd.nn.Activation``
does in backprop): ``r1m1``. Each row also carries the kernel's compute bound
(``ceilings.act_math``: its own loop over L1-resident blocks, every core; ``math_ns_per_elem``)
and is held against the tighter of the two (``ceiling`` names it; the detail column gives
both). The in-place calls restore dy
from a pristine copy before each timed call, outside the timing (``harness.Prepared``), so
every call sees the same data and none drifts into subnormals. Peers, in the same form
(preallocated output, or in place): NumPy composition of the same derivative (several
passes), and torch's ATen backward kernels when importable (``sigmoid_backward``,
``threshold_backward``, ``gelu_backward``, … — what autograd runs) with ``grad_input=``.
The forward rows (``<kind> forward``, x read, y written into ``out``: 8 bytes per element,
``r1w1``) are held the same way against their own compute bound, beside NumPy's composition
where it has one and torch's ``.out`` kernels (``aten.sigmoid.out``, ``aten.gelu.out``, …).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpugd import ops

from .ceilings import act_math, against, traffic
from .harness import Context, Prepared, optional_torch, row
from .suite_optim import _as_torch

NAME = "act"
SELU = (1.6732632423543772848170429916717, 1.0507009873554804934193349852946)
# suite name -> (gpugd._cpu.activations kind id, a, b) of its CPU kernel (as ops passes them)
KERNEL = {
    "sigmoid": (0, 0.0, 0.0),
    "tanh": (1, 0.0, 0.0),
    "relu": (2, 0.0, 0.0),
    "leaky_relu": (3, 0.01, 0.0),
    "elu": (4, 1.0, 1.0),
    "selu": (4, *SELU),
    "gelu": (5, 0.0, 0.0),
    "gelu tanh": (6, 0.0, 0.0),
    "softplus": (7, 1.0, 20.0),
    "silu": (8, 0.0, 0.0),
}


def _numel(ctx: Context) -> int:
    if ctx.numel:
        return ctx.numel
    return 1 << 28 if ctx.backend.name == "cuda" else 1 << 24


def _numpy(xp, name: str, dy, v, out):
    """The derivative composed from array ops, as a user would write it."""
    if name == "sigmoid":
        return xp.multiply(dy * v, 1 - v, out=out)
    if name == "tanh":
        return xp.multiply(dy, 1 - v * v, out=out)
    if name == "relu":
        return xp.multiply(dy, v > 0, out=out)
    if name == "leaky_relu":
        return xp.multiply(dy, xp.where(v > 0, 1.0, 0.01).astype(v.dtype), out=out)
    if name == "silu":
        s = 1 / (1 + xp.exp(-v))
        return xp.multiply(dy * s, 1 + v * (1 - s), out=out)
    return None


def _torch_peer(torch, name: str, tdy, tv, tout):
    """torch's ATen backward writing into a preallocated output (``.grad_input``), as
    gpugd writes into ``out``: neither pays for allocating (and faulting in) a new array."""
    a = torch.ops.aten
    return {
        "sigmoid": lambda: a.sigmoid_backward.grad_input(tdy, tv, grad_input=tout),
        "tanh": lambda: a.tanh_backward.grad_input(tdy, tv, grad_input=tout),
        "relu": lambda: a.threshold_backward.grad_input(tdy, tv, 0.0, grad_input=tout),
        "leaky_relu": lambda: a.leaky_relu_backward.grad_input(
            tdy, tv, 0.01, False, grad_input=tout
        ),
        "elu": lambda: a.elu_backward.grad_input(tdy, 1.0, 1.0, 1.0, False, tv, grad_input=tout),
        "selu": lambda: a.elu_backward.grad_input(
            tdy, SELU[0], SELU[1], 1.0, False, tv, grad_input=tout
        ),
        "gelu": lambda: a.gelu_backward.grad_input(tdy, tv, grad_input=tout),
        "gelu tanh": lambda: a.gelu_backward.grad_input(
            tdy, tv, approximate="tanh", grad_input=tout
        ),
        "softplus": lambda: a.softplus_backward.grad_input(tdy, tv, 1.0, 20.0, grad_input=tout),
        "silu": lambda: a.silu_backward.grad_input(tdy, tv, grad_input=tout),
    }[name]


def _torch_forward(torch, name: str, tx, tout):
    """torch's ATen forward writing into a preallocated output (``.out``)."""
    a = torch.ops.aten
    return {
        "sigmoid": lambda: a.sigmoid.out(tx, out=tout),
        "tanh": lambda: a.tanh.out(tx, out=tout),
        "relu": lambda: a.threshold.out(tx, 0.0, 0.0, out=tout),
        "leaky_relu": lambda: a.leaky_relu.out(tx, 0.01, out=tout),
        "elu": lambda: a.elu.out(tx, 1.0, 1.0, 1.0, out=tout),
        "selu": lambda: a.elu.out(tx, SELU[0], SELU[1], 1.0, out=tout),
        "gelu": lambda: a.gelu.out(tx, out=tout),
        "gelu tanh": lambda: a.gelu.out(tx, approximate="tanh", out=tout),
        "softplus": lambda: a.softplus.out(tx, 1.0, 20.0, out=tout),
        "silu": lambda: a.silu.out(tx, out=tout),
    }[name]


def _numpy_forward(xp, name: str, x, out):
    """The forward from array ops, where NumPy/CuPy has one."""
    if name == "tanh":
        return xp.tanh(x, out=out)
    if name == "relu":
        return xp.maximum(x, 0, out=out)
    if name == "sigmoid":
        xp.negative(x, out=out)
        xp.exp(out, out=out)
        out += 1
        return xp.reciprocal(out, out=out)
    return None


def _forward_row(ctx: Context, name: str, x, out, torch, tx, tout) -> dict[str, Any]:
    xp = ctx.backend.xp
    n = x.size
    kw = {"approximate": "tanh"} if name == "gelu tanh" else {}
    op = getattr(ops, name.split()[0])
    peers: dict[str, Any] = {}
    if _numpy_forward(xp, name, x[:8], out[:8]) is not None:
        peers["cupy" if xp is not np else "numpy"] = lambda: _numpy_forward(xp, name, x, out)
    if torch is not None:
        peers["torch"] = _torch_forward(torch, name, tx, tout)
    math = act_math(*KERNEL[name], bytes_per_elem=8, forward=True) if xp is np else None
    fns = {"gpugd": lambda: op(x, out=out, **kw), **peers}
    t, ceil, cname, info = against(ctx, fns, {"r1w1": traffic([x], [], [out], xp=xp)}, 8 * n, math)
    base = {k: t[k].median_s for k in peers}
    label = f"{name.replace(' ', '_')} forward"
    r = row(ctx, label, np.float32, n, t["gpugd"], 8 * n, cname, ceil, base)
    r.update(info)
    ctx.log(f"  {label:<32} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of {cname}")
    return r


def run(ctx: Context) -> list[dict[str, Any]]:
    xp = ctx.backend.xp
    torch = optional_torch(ctx.backend.name)
    n = _numel(ctx)
    ctx.log(f"act: float32 n={n}")
    dy0 = xp.random.standard_normal(n).astype(xp.float32)
    dy = dy0.copy()
    x = (xp.random.standard_normal(n) * 3).astype(xp.float32)
    y_sig = ops.sigmoid(x)
    y_tanh = ops.tanh(x)
    out = xp.empty_like(x)
    peer = "cupy" if xp is not np else "numpy"
    names = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "gelu tanh"]
    names += ["softplus", "silu"]
    if ctx.quick:
        names = ["relu", "silu"]

    def restore() -> None:  # untimed: every in-place call starts from the same dy
        dy[...] = dy0

    tdy = None if torch is None else _as_torch(torch, dy)
    tout = None if torch is None else _as_torch(torch, xp.empty_like(out))
    rows = []
    for name in names:
        v = y_sig if name == "sigmoid" else (y_tanh if name == "tanh" else x)
        op = getattr(ops, name.split()[0] + "_backward")
        kw = {"approximate": "tanh"} if name == "gelu tanh" else {}
        math = act_math(*KERNEL[name]) if xp is np else None
        for inplace in (False, True):
            dst = dy if inplace else out

            def call(op=op, v=v, kw=kw, dst=dst):
                op(dy, v, out=dst, **kw)

            def timed(fn: Any, inplace: bool = inplace) -> Any:
                return Prepared(restore, fn) if inplace else fn

            peers: dict[str, Any] = {}
            if _numpy(xp, name, dy[:8], v[:8], out[:8]) is not None:
                peers[peer] = timed(lambda name=name, v=v, dst=dst: _numpy(xp, name, dy, v, dst))
            if torch is not None:
                peers["torch"] = timed(
                    _torch_peer(torch, name, tdy, _as_torch(torch, v), tdy if inplace else tout)
                )
            if inplace:  # dy rewritten in place (restored before the kernel's calls anyway)
                loop, mix = traffic([v], [dy], xp=xp), "r1m1"
            else:
                loop, mix = traffic([dy, v], [], [out], xp=xp), "r2w1"
            fns = {"gpugd": timed(call), **peers}
            t, ceil, cname, info = against(ctx, fns, {mix: loop}, 12 * n, math)
            base = {k: t[k].median_s for k in peers}
            label = f"{name.replace(' ', '_')}_backward" + (" inplace" if inplace else "")
            r = row(ctx, label, np.float32, n, t["gpugd"], 12 * n, cname, ceil, base)
            r.update(info)
            rows.append(r)
            ctx.log(f"  {label:<32} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of {cname}")
        restore()
    tx = None if torch is None else _as_torch(torch, x)
    for name in names:
        rows.append(_forward_row(ctx, name, x, out, torch, tx, tout))
    return rows
