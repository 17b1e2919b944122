"""Experiment: how fast can any loop with Adam's memory streams run on this CPU?

Adam moves 7 streams per element (reads p, g, m, v; writes p, m, v: 28 B in fp32). This
times, round-robin with caches swept before every call (``ceilings.cpu_flush``), a loop
with exactly those streams and almost no arithmetic (p += g; m += g; v += g), gpugd's
fused Adam, the in-place ceiling loop (``ceilings._inplace``), and torch's CPU fused Adam
when importable (fp32). If
the add loop is no faster than the Adam kernels, they sit at what the memory system gives
this stream mix, and no Adam kernel can be much faster on this machine.

``--policy bf16p-f32s``: p and g in bfloat16 (read and stored through
``gpugd._cpu.precision``, rounding to nearest even), m and v float32: 22 B/element, the
mixed-precision policy of ``gpugd bench --suite amp``.

``--alloc hostmem``: p, g, m and v from ``gpugd._hostmem.zeros`` (2 MiB-aligned, huge
pages requested: how gpugd allocates arenas and states) instead of NumPy. Either way a
fourth loop runs in place over exactly p, g, m and v (``ceilings.own_inplace``), so each
kernel is seen against the single-stream in-place loop on its own memory and on the
ceiling loop's separate array.

``--in-cache``: one thread, arrays that fit in L2 (``--numel`` 2^15 by default), best of
the rounds: the rate of gpugd's serial Adam loop, of the add loop with the same streams,
and of a loop that only divides by a square root (q = m / (√v·c + ε), Adam's two divider
operations). When Adam's rate is near the last, the divider, not memory or the other
arithmetic, bounds the kernel in cache.

    python -m benchmarks.experiments.streams [--numel N] [--rounds R] [--policy fp32|bf16p-f32s]
                                            [--alloc numpy|hostmem] [--in-cache]
"""

from __future__ import annotations

import argparse
import time

import ml_dtypes
import numpy as np
from numba import njit, prange

from gpugd import _hostmem as hostmem
from gpugd import ops
from gpugd._cpu.precision import kernel_view, ld, st
from gpugd._cpu.vector import CHUNK

from ..ceilings import _inplace, cpu_flush, own_inplace
from ..harness import optional_torch


@njit(cache=True, nogil=True)
def _seven_serial(p, g, m, v):
    for i in range(p.size):
        gi = ld(g, i)
        m[i] = m[i] + gi
        v[i] = v[i] + gi
        st(p, i, ld(p, i) + gi, None)


@njit(cache=True, nogil=True, error_model="numpy")
def _divide_by_root(m, v, q, c, eps):
    for i in range(m.size):
        q[i] = m[i] / (np.sqrt(v[i]) * c + eps)


@njit(cache=True, parallel=True)
def _seven_streams(p, g, m, v):
    # Chunks of a prange, each a serial (vectorized) loop on slices: gpugd's own layout.
    n = p.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(c * CHUNK + CHUNK, n)
        _seven_serial(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1 << 24)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--policy", choices=("fp32", "bf16p-f32s"), default="fp32")
    ap.add_argument("--alloc", choices=("numpy", "hostmem"), default="numpy")
    ap.add_argument("--in-cache", action="store_true")
    args = ap.parse_args(argv)
    if args.in_cache:
        _in_cache(args.numel if args.numel != 1 << 24 else 1 << 15, args.rounds, args.policy)
        return
    n = args.numel
    rng = np.random.default_rng(0)
    half = args.policy != "fp32"
    pdt = np.dtype(ml_dtypes.bfloat16) if half else np.dtype(np.float32)
    zeros = hostmem.zeros if args.alloc == "hostmem" else np.zeros
    p, g = zeros(n, pdt), zeros(n, pdt)
    p[...] = rng.standard_normal(n, dtype=np.float32).astype(pdt)
    g[...] = (rng.standard_normal(n, dtype=np.float32) * 1e-3).astype(pdt)
    m, v = zeros(n, np.float32), zeros(n, np.float32)
    x = np.ones(n, np.float32)
    own = own_inplace([p, g, m, v])
    nbytes = n * (3 * p.itemsize + 16)
    s, u = np.float32(0.999), np.float32(1e-3)
    fns = {
        "in-place loop": lambda: _inplace(x, s, u),
        "in-place, own buffers": own.fn,
        "7-stream add loop": lambda: _seven_streams(kernel_view(p), kernel_view(g), m, v),
        "gpugd adam_": lambda: ops.adam_(p, g, m, v, lr=1e-3, step=5),
    }
    torch = optional_torch()
    if torch is not None and not half:
        tp = torch.from_numpy(p.copy())
        tp.grad = torch.from_numpy(g.copy())
        opt = torch.optim.Adam([tp], lr=1e-3, fused=True)
        fns["torch fused Adam"] = opt.step
    flush = cpu_flush()  # as the benchmark suites: reads twice the last-level cache
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, f in fns.items():
            flush()
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    moved = {"in-place loop": 8 * n, "in-place, own buffers": own.nbytes}
    gbps = {k: moved.get(k, nbytes) / float(np.median(t)) / 1e9 for k, t in times.items()}
    ceiling, mine = gbps["in-place loop"], gbps["in-place, own buffers"]
    print(
        f"policy {args.policy}: {nbytes // n} B/element; arrays from {args.alloc}; in-place "
        f"loop {ceiling:.1f} GB/s on its own array, {mine:.1f} GB/s over p, g, m and v"
    )
    print(f"{'':22s} {'ms':>8s}  {'GB/s':>6s}  {'% in-place':>10s}  {'% own buffers':>13s}")
    for k, t in times.items():
        r = gbps[k]
        print(
            f"{k:22s} {float(np.median(t)) * 1e3:8.2f}  {r:6.1f}  {100 * r / ceiling:10.1f}"
            f"  {100 * r / mine:13.1f}"
        )


def _in_cache(n: int, rounds: int, policy: str) -> None:
    """Per-core rates (G elements/s) with every array in L2: gpugd's serial Adam loop, the
    add loop with its streams, and the divider-only loop."""
    from gpugd._cpu import optim as cpu_optim
    from gpugd.ops.optim import adam_kernel

    rng = np.random.default_rng(0)
    pdt = np.dtype(ml_dtypes.bfloat16) if policy != "fp32" else np.dtype(np.float32)
    p = kernel_view(rng.standard_normal(n, dtype=np.float32).astype(pdt))
    g = kernel_view((rng.standard_normal(n, dtype=np.float32) * 1e-3).astype(pdt))
    m = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
    v = np.abs(rng.standard_normal(n, dtype=np.float32)) * np.float32(1e-6)
    q = np.empty(n, np.float32)
    k = adam_kernel(lr=1e-3, step=5)
    sc = tuple(x if isinstance(x, bool) else np.float32(x) for x in (*k.scalars, 1.0, np.inf))
    c, eps = np.float32(k.scalars[-1]), np.float32(1e-8)
    fns = {
        "gpugd Adam loop": lambda: cpu_optim._apply_adam(p, g, m, v, v[:1], None, None, *sc),
        "7-stream add loop": lambda: _seven_serial(p, g, m, v),
        "m / (sqrt(v)·c + eps)": lambda: _divide_by_root(m, v, q, c, eps),
    }
    reps = max(1, (1 << 24) // n)
    print(f"policy {policy}, {n} elements in L2, one thread, best of {rounds} x {reps} calls")
    for name, fn in fns.items():
        fn()
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            best = min(best, (time.perf_counter() - t) / reps)
        print(f"{name:22s} {n / best / 1e9:6.2f} G elements/s per core")


if __name__ == "__main__":
    main()
