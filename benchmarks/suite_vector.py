"""Suite ``vector``: axpy_, scale_, sum_of_squares against the ceilings and their peers.

Fewest bytes per element (w = itemsize): axpy_ 3w (read x, y; write x) against the
``inplace`` ceiling; scale_ 2w against ``inplace``; sum_of_squares 1w against ``read``.
Peers: NumPy composition always (``x += a*y``, ``x *= a``, ``np.dot(x, x)``; CuPy's on
the GPU), torch when importable (``add_(alpha=)``, ``mul_``, ``dot``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpugd import ops

from .ceilings import default_numel
from .harness import Context, optional_torch, row

NAME = "vector"


def _cases(ctx: Context) -> list[tuple[Any, int]]:
    n = default_numel(ctx)
    if ctx.quick:
        return [(np.float32, n)]
    return [(np.float32, n), (np.float64, n // 2)]


def _calls(x, y, a: float, s: float, xp, torch, peer: str, w: int, n: int) -> list:
    """(kernel, gpugd call, bytes, ceiling class, {peer: call}) for one dtype's arrays."""
    tx = ty = None
    if torch is not None:
        tx, ty = _as_torch(torch, x), _as_torch(torch, y)

    def peer_axpy():
        xp.add(x, a * y, out=x)  # the composition `x += a * y`

    def peer_scale():
        xp.multiply(x, s, out=x)  # `x *= s`

    cases = [
        ("axpy_", lambda: ops.axpy_(x, a, y), 3 * w * n, "inplace", {peer: peer_axpy}),
        ("scale_", lambda: ops.scale_(x, s), 2 * w * n, "inplace", {peer: peer_scale}),
        (
            "sum_of_squares",
            lambda: ops.sum_of_squares(x),
            w * n,
            "read",
            {peer: lambda: xp.dot(x, x)},
        ),
    ]
    if tx is not None:
        cases[0][4]["torch"] = lambda: tx.add_(ty, alpha=a)
        cases[1][4]["torch"] = lambda: tx.mul_(s)
        cases[2][4]["torch"] = lambda: torch.dot(tx, tx)
    return cases


def run(ctx: Context) -> list[dict[str, Any]]:
    xp = ctx.backend.xp
    torch = optional_torch(ctx.backend.name)
    peer = "cupy" if ctx.backend.name == "cuda" else "numpy"
    rows = []
    for dtype, n in _cases(ctx):
        w = np.dtype(dtype).itemsize
        x = xp.random.standard_normal(n).astype(dtype)
        y = xp.random.standard_normal(n).astype(dtype)
        ctx.log(f"vector: {np.dtype(dtype).name} n={n}")
        for kernel, call, nbytes, ceiling, peers in _calls(
            x, y, 1e-3, 0.999, xp, torch, peer, w, n
        ):
            t, ceil = ctx.measure({"gpugd": call, **peers}, ceiling)
            base = {k: t[k].median_s for k in peers}
            rows.append(row(ctx, kernel, dtype, n, t["gpugd"], nbytes, ceiling, ceil, base))
            r = rows[-1]
            ctx.log(
                f"  {kernel:<15} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of "
                f"{ceiling} ({ceil:.1f} GB/s)"
            )
    return rows


def _as_torch(torch, a):
    """A torch tensor sharing ``a``'s memory (NumPy directly, CuPy through DLPack)."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)
