"""Experiment: how the rows a batch-norm statistics step reads are spread changes its speed.

The B = 1 statistics (``gpugd._cpu.batchnorm._stats_rows``) sum several rows a step in
registers. Until 2026-12-07 those were neighbouring rows: at C = 512, eight pieces of 2 KB
side by side, then the next eight, which the hardware prefetchers did not follow. Now a
step's rows are R = tile rows // 8 apart, so each of the eight is one long stream down its
own stretch of the tile. This times one loop in both forms (``apart`` False / True, the
same code otherwise, the same sums), the library's kernel, and the plain read loop over
the same array, round-robin, caches swept before every call, and prints medians and the
share of the read loop.

    python -m benchmarks.experiments.bn_streams [--shapes 65536x512,55000x300] [--rounds R]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit, prange

from gpugd._cpu import batchnorm as bn
from gpugd._cpu.vector import _REDUCE_MATH

from ..ceilings import cpu_flush, traffic


@njit(cache=True, nogil=True, parallel=True, fastmath=_REDUCE_MATH)
def _eight_rows(x, s1t, s2t, rows, apart):
    """Per tile of ``rows`` rows, Σ(x − K) and Σ(x − K)² per channel (K the tile's first
    row), eight rows a step: neighbours (a, a + 1, …) or R apart (a, a + R, …)."""
    A, C = x.shape
    for t in prange(s1t.shape[0]):
        lo, hi = t * rows, min(t * rows + rows, A)
        s1, s2 = s1t[t], s2t[t]
        kd = np.empty(C)
        for c in range(C):
            kd[c] = np.float64(x[lo, c])
            s1[c] = 0.0
            s2[c] = 0.0
        R = (hi - lo) // 8
        d = R if apart else 1
        for j in range(R):
            a = lo + j if apart else lo + 8 * j
            r0, r1, r2, r3 = x[a], x[a + d], x[a + 2 * d], x[a + 3 * d]
            r4, r5, r6, r7 = x[a + 4 * d], x[a + 5 * d], x[a + 6 * d], x[a + 7 * d]
            for c in range(C):
                kc = kd[c]
                d0, d1 = np.float64(r0[c]) - kc, np.float64(r1[c]) - kc
                d2, d3 = np.float64(r2[c]) - kc, np.float64(r3[c]) - kc
                d4, d5 = np.float64(r4[c]) - kc, np.float64(r5[c]) - kc
                d6, d7 = np.float64(r6[c]) - kc, np.float64(r7[c]) - kc
                s1[c] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
                q = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                s2[c] += q + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7))
        for a in range(lo + 8 * R, hi):
            for c in range(C):
                e = np.float64(x[a, c]) - kd[c]
                s1[c] += e
                s2[c] += e * e


def _one_shape(A: int, C: int, rounds: int, flush, rng) -> None:
    x = (rng.standard_normal((A, C)) * 0.1 + 3).astype(np.float32)
    rows = bn.tile_rows(C)
    near, apart = (bn._two_tables(-(-A // rows), C) for _ in range(2))
    fns = {
        "neighbours": lambda: _eight_rows(x, *near, rows, False),
        "R apart": lambda: _eight_rows(x, *apart, rows, True),
        "bn.stats": lambda: bn.stats(x.reshape(A, C, 1)),
        "read loop": traffic([x]).fn,
    }
    for f in fns.values():
        f()
    same = all(np.array_equal(u, w) for u, w in zip(near, apart, strict=True))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            flush()
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"({A}, {C}) fp32, tiles of {rows} rows; neighbours and R apart equal: {same}")
    for k, m in med.items():
        share = 100 * med["read loop"] / m
        print(f"  {k:11s} {m * 1e3:7.3f} ms  {share:5.1f}% of the read loop")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="65536x512,55000x300,16384x2048")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    flush = cpu_flush()
    rng = np.random.default_rng(0)
    for spec in args.shapes.split(","):
        A, C = (int(v) for v in spec.split("x"))
        _one_shape(A, C, args.rounds, flush, rng)


if __name__ == "__main__":
    main()
