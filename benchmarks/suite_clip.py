"""Suite ``clip``: the global norm, clipped Adam steps and per-tensor norms of many small
tensors, against the ceilings and their peers; and what the monitor adds to a step.

Fewest bytes per element (fp32): global norm 4 (one read) against the read loop over the
same buffer(s) (``r1``, ``ceilings.traffic``); clipped Adam 32 (the norm pass reads g: 4,
the fused update reads g and rewrites p, m, v: 28) against ``r1+r1m3``, the sum of those
two loops' times over its own buffers — torch's clip_grad_norm_ + fused Adam moves 40
(norm 4, scale pass 8, update 28). Peers: NumPy (dot, or per-tensor loop), and when importable torch
(``linalg.vector_norm``; ``nn.utils.clip_grad_norm_(foreach=True)`` + ``Adam(fused=True)``;
``torch._foreach_norm``). The per-tensor norms of 1,000 small tensors also count each
tensor's zeros (torch's does not): that row is held against the tighter of its read loop
and its compute bound (``ceilings.reduce_math``: the kernel's per-chunk code over
L1-resident blocks, every core).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpugd import optim
from gpugd.ops import reduce

from .ceilings import against, reduce_math, traffic
from .harness import Context, Loop, optional_torch, row
from .suite_optim import _as_torch, _numpy_adam, resnet50_shapes

NAME = "clip"
MAX_NORM = 1.0


def _numel(ctx: Context) -> int:
    if ctx.numel:
        return ctx.numel
    return 1 << 28 if ctx.backend.name == "cuda" else 1 << 24


def _torch_clipped_adam(torch, ps, gs):
    """torch's usual clipped step on the same data: clip_grad_norm_ (foreach), fused Adam.
    The clip rewrites the gradients; re-clipping clipped gradients moves the same bytes."""
    tps = [_as_torch(torch, a.copy()) for a in ps]
    for tp, g in zip(tps, gs, strict=True):
        tp.grad = _as_torch(torch, g.copy())
    opt = torch.optim.Adam(tps, lr=1e-3, fused=True)

    def step():
        torch.nn.utils.clip_grad_norm_(tps, MAX_NORM, foreach=True)
        opt.step()

    step()
    return step


def _adam_passes(opt: Any, ps: list, gs: list, xp: Any, every: int = 1) -> dict[str, Loop]:
    """The clipped step's two passes over its own buffers, ``every`` times per call: the
    norm reads g (``r1``); the update reads g and rewrites p, m, v (``r1m3``)."""
    states = [opt.state[k][s] for k in opt.names for s in sorted(opt.state[k])]
    loops = {"r1": traffic(gs, xp=xp), "r1m3": traffic(gs, [*ps, *states], xp=xp)}

    def times(lp: Loop) -> Loop:
        if every == 1:
            return lp
        return Loop(lambda: [lp.fn() for _ in range(every)], every * lp.nbytes, lp.numel)

    return {k: times(lp) for k, lp in loops.items()}


def _clipped_adam_rows(ctx: Context, torch: Any, label: str, ps: list, gs: list) -> list:
    xp = ctx.backend.xp
    numel = sum(int(a.size) for a in ps)
    opt = optim.Adam(ps, grads=gs, lr=1e-3, max_grad_norm=MAX_NORM)
    opt.step()
    peers: dict[str, Any] = {}
    if torch is not None:
        try:
            peers["torch clip+fused"] = _torch_clipped_adam(torch, ps, gs)
        except (RuntimeError, TypeError, ValueError):
            pass
    if xp is np and len(ps) == 1:
        m, v = np.zeros_like(ps[0]), np.zeros_like(ps[0])
        g = gs[0].copy()

        def numpy_step():
            norm = np.sqrt(np.dot(g, g))
            np.multiply(g, min(1.0, MAX_NORM / (norm + 1e-6)), out=g)
            _numpy_adam(xp, ps[0], g, m, v)

        peers["numpy"] = numpy_step
    nbytes = 32 * numel
    t, ceil, cname, info = against(
        ctx, {"gpugd": opt.step, **peers}, _adam_passes(opt, ps, gs, xp), nbytes
    )
    base = {k: t[k].median_s for k in peers}
    r = row(ctx, label, np.float32, numel, t["gpugd"], nbytes, cname, ceil, base, len(ps))
    r.update(info)
    ctx.log(f"  {label:<30} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of {cname}")
    rows = [r]
    # What the monitor adds: the same clipped step with a GradientMonitor recording every
    # step, and one recording every 10th step.
    from gpugd.monitor import GradientMonitor

    for every in () if ctx.quick else (1, 10):
        watched = optim.Adam(ps, grads=gs, lr=1e-3, max_grad_norm=MAX_NORM)
        GradientMonitor(watched, every=every)
        watched.step()

        def steps(o=watched, k=every):  # a whole recording period per timed call
            for _ in range(k):
                o.step()

        def plain_steps(k=every):
            for _ in range(k):
                opt.step()

        fns = {"gpugd": steps, "without monitor": plain_steps}
        nbytes = 32 * numel * every
        passes = _adam_passes(watched, ps, gs, xp, every)
        t, ceil, cname, info = against(ctx, fns, passes, nbytes)
        base = {"without monitor": t["without monitor"].median_s}
        kernel = f"{label} +monitor/{every}"
        r = row(ctx, kernel, np.float32, numel, t["gpugd"], nbytes, cname, ceil, base, len(ps))
        r.update(info)
        ctx.log(f"  {kernel:<30} no-monitor/monitor time {r['baselines']['without monitor']:.3f}")
        rows.append(r)
    return rows


def run(ctx: Context) -> list[dict[str, Any]]:
    xp = ctx.backend.xp
    torch = optional_torch(ctx.backend.name)
    n = _numel(ctx)
    rows = []
    ctx.log(f"clip: float32 n={n}")

    # 1. global norm of one flat buffer (one read)
    x = xp.random.standard_normal(n).astype(xp.float32)
    red = reduce.Reduction(x)
    peers: dict[str, Any] = {("cupy" if xp is not np else "numpy"): lambda: xp.sqrt(xp.dot(x, x))}
    if torch is not None:
        tx = _as_torch(torch, x)
        peers["torch"] = lambda: torch.linalg.vector_norm(tx)
    t, ceil, cname, info = against(
        ctx, {"gpugd": red.run, **peers}, {"r1": traffic([x], xp=xp)}, 4 * n
    )
    base = {k: t[k].median_s for k in peers}
    rows.append(row(ctx, "global_norm", np.float32, n, t["gpugd"], 4 * n, cname, ceil, base))
    rows[-1].update(info)

    # 2. clipped Adam on the flat buffer and on the ResNet-50-like list
    p = xp.random.standard_normal(n).astype(xp.float32)
    g = (xp.random.standard_normal(n) * 1e-2).astype(xp.float32)
    rows += _clipped_adam_rows(ctx, torch, "Adam clipped flat", [p], [g])
    if ctx.quick:
        return rows
    full = 25_557_032
    shapes = resnet50_shapes(min(1.0, (ctx.numel / full) ** 0.5) if ctx.numel else 1.0)
    ps = [xp.random.standard_normal(s).astype(xp.float32) for s in shapes]
    gs = [(xp.random.standard_normal(s) * 1e-2).astype(xp.float32) for s in shapes]
    rows += _clipped_adam_rows(ctx, torch, "Adam clipped resnet50-list", ps, gs)

    # 3. per-tensor norms of 1,000 small tensors
    rng = np.random.default_rng(0)
    sizes = rng.integers(64, 8192 if not ctx.numel else 256, size=1000)
    small = [xp.random.standard_normal(int(k)).astype(xp.float32) for k in sizes]
    numel = int(sizes.sum())
    prepared = reduce.Reduction(small)
    peers = {
        "tensor_norms call": lambda: reduce.tensor_norms(small),
        ("cupy-loop" if xp is not np else "numpy-loop"): lambda: [xp.linalg.norm(a) for a in small],
    }
    if torch is not None:
        ts = [_as_torch(torch, a) for a in small]
        peers["torch _foreach_norm"] = lambda: torch._foreach_norm(ts)
    fns = {"gpugd": prepared.run, **peers}
    math = reduce_math(zeros=True) if xp is np else None  # the zero counts make it compute-bound
    t, ceil, cname, info = against(ctx, fns, {"r1": traffic(small, xp=xp)}, 4 * numel, math)
    base = {k: t[k].median_s for k in peers}
    rows.append(
        row(
            ctx,
            "tensor_norms 1000 tensors",
            np.float32,
            numel,
            t["gpugd"],
            4 * numel,
            cname,
            ceil,
            base,
            len(small),
        )
    )
    rows[-1].update(info)
    return rows
