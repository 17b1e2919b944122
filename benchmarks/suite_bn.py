"""Suite ``bn``: batch-norm training forward and backward, fp32.

Shapes: (256, 64, 32, 32) in NCHW and the same tensor in NHWC, and (65536, 512) NC.
Fewest bytes per element: forward 12 (the statistics pass reads x; the normalizing pass
reads x and writes y), backward 20 (the reduction reads dy and x; the elementwise pass
reads dy and x and writes dx); against the ``inplace`` ceiling. Peers: NumPy composition
(mean, var, normalize) and torch when importable (``aten.native_batch_norm`` — what
``F.batch_norm`` runs — and ``native_batch_norm_backward``, their ``.out`` variants into
preallocated outputs, as gpugd's ``out=``).

On the CPU each row also carries ``pct_of_passes``: the kernel against the time its two
passes take at the speed of plain loops of the same shape timed in the same rounds
(``passes_ceiling``), which is the ceiling the issue's "70% of the ceiling for its two
passes" means: a read-only pass runs at the ``read`` loop's speed, not the ``inplace``
loop's, and a pass into a separate output pays the write-allocate that ``copy`` and
``triad`` pay.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from gpugd import ops

from .harness import Context, optional_torch, row
from .suite_optim import _as_torch

NAME = "bn"


def _shapes(ctx: Context) -> list[tuple[str, tuple[int, ...]]]:
    if ctx.numel:  # scaled down (tests): keep the layouts
        shapes = [("NCHW", (4, 8, 8, 8)), ("NHWC", (4, 8, 8, 8)), ("NC", (256, 16))]
    else:
        shapes = [("NCHW", (256, 64, 32, 32)), ("NHWC", (256, 32, 32, 64)), ("NC", (65536, 512))]
    return shapes[:1] if ctx.quick else shapes


def _numpy_forward(xp, x, w, b, axes, shape, out):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    xp.multiply(x - mean, (w.reshape(shape) / xp.sqrt(var + 1e-5)), out=out)
    out += b.reshape(shape)


def run(ctx: Context) -> list[dict[str, Any]]:
    xp = ctx.backend.xp
    torch = optional_torch()
    rows = []
    for layout, shape in _shapes(ctx):
        n = int(np.prod(shape))
        C = shape[-1] if layout == "NHWC" else shape[1]
        axes = {"NC": (0,), "NCHW": (0, 2, 3), "NHWC": (0, 1, 2)}[layout]
        bshape = [1] * len(shape)
        bshape[-1 if layout == "NHWC" else 1] = C
        ctx.log(f"bn: {layout} {shape} float32")
        x = xp.random.standard_normal(shape).astype(xp.float32)
        dy = xp.random.standard_normal(shape).astype(xp.float32)
        w, b = xp.ones(C, xp.float32), xp.zeros(C, xp.float32)
        y, dx = xp.empty_like(x), xp.empty_like(x)
        saved = ops.batch_norm_forward(x, w, b, layout=layout, out=y)

        def fwd(x=x, w=w, b=b, layout=layout, y=y):
            ops.batch_norm_forward(x, w, b, layout=layout, out=y)

        def bwd(x=x, dy=dy, w=w, layout=layout, dx=dx, s=saved):
            ops.batch_norm_backward(dy, x, w, s.mean, s.invstd, layout=layout, out=dx)

        peers_f: dict[str, Any] = {
            "numpy" if xp is np else "cupy": lambda x=x, w=w, b=b, a=axes, s=bshape, y=y: (
                _numpy_forward(xp, x, w, b, a, s, y)
            )
        }
        peers_b: dict[str, Any] = {}
        if torch is not None:
            tx = _as_torch(torch, x)
            if layout == "NHWC":  # the same memory as a channels-last NCHW tensor
                tx = tx.permute(0, 3, 1, 2)
            tdy = _as_torch(torch, dy)
            if layout == "NHWC":
                tdy = tdy.permute(0, 3, 1, 2)
            tw, tb = _as_torch(torch, w), _as_torch(torch, b)

            ty, tdx = torch.empty_like(tx), torch.empty_like(tx)
            sm, si = torch.empty(C), torch.empty(C)
            gw, gb = torch.empty(C), torch.empty(C)
            # the .out variants: preallocated outputs, as gpugd's out= (no page faults)
            peers_f["torch"] = lambda tx=tx, tw=tw, tb=tb, ty=ty, sm=sm, si=si: (
                torch.ops.aten.native_batch_norm.out(
                    tx, tw, tb, None, None, True, 0.1, 1e-5, out=ty, save_mean=sm, save_invstd=si
                )
            )
            peers_f["torch"]()
            peers_b["torch"] = lambda tx=tx, tdy=tdy, tw=tw, sm=sm, si=si, o=(tdx, gw, gb): (
                torch.ops.aten.native_batch_norm_backward.out(
                    tdy,
                    tx,
                    tw,
                    None,
                    None,
                    sm,
                    si,
                    True,
                    1e-5,
                    [True, True, True],
                    out0=o[0],
                    out1=o[1],
                    out2=o[2],
                )
            )
        for direction, fn, peers, words in (
            ("forward", fwd, peers_f, 3),
            ("backward", bwd, peers_b, 5),
        ):
            extra = {"read loop": ctx.loops["read"].fn} if "read" in ctx.loops else {}
            t, ceil = ctx.measure({"gpugd": fn, **peers, **extra}, "inplace")
            base = {k: t[k].median_s for k in peers}
            label = f"batch_norm {direction} {layout}"
            rows.append(
                row(ctx, label, np.float32, n, t["gpugd"], 4 * words * n, "inplace", ceil, base)
            )
            r = rows[-1]
            if extra:
                r.update(passes_ceiling(ctx, direction, n, t["read loop"].median_s, r["median_s"]))
                r["detail"] = f"{r['pct_of_passes']:.1f}% of its two passes' ceiling"
            ctx.log(f"  {label:<26} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of inplace")
    return rows


def passes_ceiling(
    ctx: Context, direction: str, n: int, read_loop_s: float, median_s: float
) -> dict[str, Any]:
    """The time the forward's (backward's) two passes would take at the speed of the loops
    shaped like them, timed in the same rounds (CPU): the statistics pass reads x (dy and x)
    like the ``read`` loop; the elementwise pass reads x and writes y like ``copy`` (reads
    dy and x and writes dx like ``triad``), write-allocate included, as those loops count
    it. ``pct_of_passes`` = that time / the kernel's."""
    rounds = ctx.repeats
    read = ctx.loops["read"]
    read_gbps = read.nbytes / read_loop_s / 1e9
    shape = "copy" if direction == "forward" else "triad"
    loop = ctx.loops[shape]
    loop_gbps = loop.nbytes / statistics.median(loop.samples[-rounds:]) / 1e9
    reads = 1 if direction == "forward" else 2  # words per element of the statistics pass
    words = loop.nbytes // loop.numel // 4  # words the elementwise pass moves, as counted
    t = 4 * reads * n / read_gbps / 1e9 + 4 * words * n / loop_gbps / 1e9
    return {
        "passes_ceiling_s": t,
        "passes_loops": {"read": read_gbps, shape: loop_gbps},
        "pct_of_passes": 100.0 * t / median_s,
    }
