"""Experiment: does the in-place loop run at the same speed on every array of this machine?

Allocates ``--arrays`` arrays of ``--mib`` MiB one after another and times the in-place
ceiling loop (``ceilings._inplace``) on each, round-robin, caches swept before every call.
On a machine with uniform memory every array gives the same GB/s within noise; on the
CPU VMs this project has run on, arrays have streamed at 46 to 57 GB/s depending on where
they landed, each steady across the run's rounds (the two half-run columns agree), and
within 5–9% of each other in runs minutes later. That is why the amp suite holds
each kernel also against the in-place loop over its own buffers (``ceilings.own_inplace``).

    python -m benchmarks.experiments.placement [--arrays K] [--mib M] [--rounds R]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..ceilings import _inplace, cpu_flush


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arrays", type=int, default=12)
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    n = args.mib * (1 << 20) // 4
    xs = [np.ones(n, np.float32) for _ in range(args.arrays)]
    s, t = np.float32(0.999), np.float32(1e-3)
    flush = cpu_flush()
    for x in xs:
        _inplace(x, s, t)
    times: list[list[float]] = [[] for _ in xs]
    for _ in range(args.rounds):
        for i, x in enumerate(xs):
            flush()
            t0 = time.perf_counter()
            _inplace(x, s, t)
            times[i].append(time.perf_counter() - t0)

    def rate(ts: list[float]) -> float:
        return 8 * n / float(np.median(ts)) / 1e9

    half = args.rounds // 2
    gbps = [rate(ts) for ts in times]
    print(f"in-place loop on {args.arrays} arrays of {args.mib} MiB, allocated in this order")
    print(f"(GB/s: median of all {args.rounds} rounds; of the first {half}; of the rest)")
    for i, ts in enumerate(times):
        print(f"  array {i:2d}  {gbps[i]:6.1f}   {rate(ts[:half]):6.1f}   {rate(ts[half:]):6.1f}")
    print(f"slowest/fastest: {min(gbps):.1f}/{max(gbps):.1f} GB/s = {min(gbps) / max(gbps):.2f}")


if __name__ == "__main__":
    main()
