"""Suite ``optim``: each fused update rule on one flat fp32 buffer, against the in-place
ceiling and its peers.

Fewest bytes per element (w = itemsize): read p, g and each state once, write p and each
state once: SGD-momentum, Adagrad, RMSprop 5w; Adam, AdamW, NAdam 7w; AMSGrad 9w.
Peers: NumPy composition of the same update (in-place ufuncs, several passes), and
torch.optim on the same memory with ``fused=True`` and ``foreach=True`` when importable
and supported for that rule on that device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpugd import ops

from .harness import Context, optional_torch, row

NAME = "optim"

# kernel label -> (op, hyperparameters, state count, torch class name, torch kwargs)
RULES: dict[str, tuple[str, dict, int, str, dict]] = {
    "sgd_ momentum": ("sgd_", dict(lr=1e-3, momentum=0.9), 1, "SGD", dict(lr=1e-3, momentum=0.9)),
    "adagrad_": ("adagrad_", dict(lr=1e-2), 1, "Adagrad", dict(lr=1e-2)),
    "rmsprop_": ("rmsprop_", dict(lr=1e-3), 1, "RMSprop", dict(lr=1e-3)),
    "adam_": ("adam_", dict(lr=1e-3), 2, "Adam", dict(lr=1e-3)),
    "adam_ amsgrad": ("adam_", dict(lr=1e-3, amsgrad=True), 3, "Adam", dict(lr=1e-3, amsgrad=True)),
    "adamw": (
        "adam_",
        dict(lr=1e-3, weight_decay=1e-2, decoupled=True),
        2,
        "AdamW",
        dict(lr=1e-3, weight_decay=1e-2),
    ),
    "nadam_": ("nadam_", dict(lr=2e-3), 2, "NAdam", dict(lr=2e-3)),
}


def default_numel(ctx: Context) -> int:
    if ctx.numel:
        return ctx.numel
    return 1 << 28 if ctx.backend.name == "cuda" else 1 << 24


def _numpy_adam(xp, p, g, m, v, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, step=10):
    """Adam as a user would write it with in-place array ops (several passes)."""
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    den = xp.sqrt(v)
    den /= np.sqrt(1 - b2**step)
    den += eps
    p -= (lr / (1 - b1**step)) * m / den


def _numpy_sgd(xp, p, g, buf, lr=1e-3, momentum=0.9):
    buf *= momentum
    buf += g
    p -= lr * buf


def _torch_peers(torch, p, g, cls: str, kw: dict, cuda: bool) -> dict[str, Any]:
    """{"torch-fused": step, "torch-foreach": step} for the variants torch supports."""
    peers = {}
    for label, flag in (("torch-fused", "fused"), ("torch-foreach", "foreach")):
        tp = _as_torch(torch, p.copy())
        tp.grad = _as_torch(torch, g)
        try:
            opt = getattr(torch.optim, cls)([tp], **kw, **{flag: True})
            opt.step()  # also creates the state outside the timing
        except (RuntimeError, TypeError, ValueError):
            continue  # e.g. no fused NAdam: that peer does not exist
        peers[label] = opt.step
    return peers


def _as_torch(torch, a):
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


def run(ctx: Context) -> list[dict[str, Any]]:
    xp = ctx.backend.xp
    torch = optional_torch()
    n = default_numel(ctx)
    peer = "cupy" if ctx.backend.name == "cuda" else "numpy"
    w = 4
    rng = xp.random
    p = rng.standard_normal(n).astype(xp.float32)
    g = rng.standard_normal(n).astype(xp.float32)
    states = [xp.zeros(n, xp.float32) for _ in range(3)]
    ctx.log(f"optim: float32 n={n}")
    rows = []
    for label, (op, hp, nstates, tcls, tkw) in RULES.items():
        fn = getattr(ops, op)
        s = states[:nstates]
        kw = dict(hp)
        if op != "rmsprop_":
            kw["step"] = 10

        def call(fn=fn, s=s, kw=kw):
            fn(p, g, *s, **kw)

        peers: dict[str, Any] = {}
        if label == "adam_":
            peers[peer] = lambda: _numpy_adam(xp, p, g, states[0], states[1])
        elif label == "sgd_ momentum":
            peers[peer] = lambda: _numpy_sgd(xp, p, g, states[0])
        if torch is not None:
            peers.update(_torch_peers(torch, p, g, tcls, tkw, ctx.backend.name == "cuda"))
        t, ceil = ctx.measure({"gpugd": call, **peers}, "inplace")
        nbytes = (3 + 2 * nstates) * w * n
        base = {k: t[k].median_s for k in peers}
        rows.append(row(ctx, label, np.float32, n, t["gpugd"], nbytes, "inplace", ceil, base))
        r = rows[-1]
        ctx.log(
            f"  {label:<15} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of inplace "
            f"({ceil:.1f} GB/s)"
        )
    return rows
