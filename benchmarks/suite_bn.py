"""Suite ``bn``: batch-norm training forward and backward, fp32.

Shapes: (256, 64, 32, 32) in NCHW and the same tensor in NHWC, and (65536, 512) NC.
Fewest bytes per element: forward 12 (the statistics pass reads x; the normalizing pass
reads x and writes y), backward 20 (the reduction reads dy and x; the elementwise pass
reads dy and x and writes dx); against the ``inplace`` ceiling. Peers: NumPy composition
(mean, var, normalize) and torch when importable (``aten.native_batch_norm`` — what
``F.batch_norm`` runs — and ``native_batch_norm_backward``, their ``.out`` variants into
preallocated outputs, as gpugd's ``out=``).

Each row is held against its two passes' traffic over its own buffers
(``ceilings.traffic``, timed in the same rounds; the ceiling is the sum of the two loops'
times): forward ``r1+r1w1`` (the statistics pass reads x; the normalizing pass reads x and
writes y fresh), backward ``r2+r2w1`` (reads dy and x; then reads them and writes dx).
``pct_of_passes`` (with ``passes_ceiling_s``, ``passes_loops``: each loop's GB/s) is the
same figure, kept under its earlier name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpugd import ops

from .ceilings import against, traffic
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
    torch = optional_torch(ctx.backend.name)
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
        passes = {
            "forward": {"r1": traffic([x], xp=xp), "r1w1": traffic([x], [], [y], xp=xp)},
            "backward": {"r2": traffic([dy, x], xp=xp), "r2w1": traffic([dy, x], [], [dx], xp=xp)},
        }
        for direction, fn, peers, words in (
            ("forward", fwd, peers_f, 3),
            ("backward", bwd, peers_b, 5),
        ):
            nbytes = 4 * words * n
            t, ceil, cname, info = against(ctx, {"gpugd": fn, **peers}, passes[direction], nbytes)
            base = {k: t[k].median_s for k in peers}
            label = f"batch_norm {direction} {layout}"
            r = row(ctx, label, np.float32, n, t["gpugd"], nbytes, cname, ceil, base)
            r.update(info)
            r["passes_ceiling_s"] = nbytes / ceil / 1e9
            r["passes_loops"] = info["bounds"]["loops_gbps"]
            r["pct_of_passes"] = 100.0 * r["passes_ceiling_s"] / r["median_s"]
            rows.append(r)
            ctx.log(f"  {label:<26} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of {cname}")
    return rows
