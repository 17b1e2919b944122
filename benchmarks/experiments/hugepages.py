"""Experiment: does a bfloat16-parameter Adam step run faster on huge-page buffers?

Allocates ``--pairs`` pairs of array sets (p and g bfloat16, m and v float32, ``--numel``
elements each), one set of each pair from ``gpugd._hostmem.zeros`` (2 MiB-aligned,
``MADV_HUGEPAGE``: how gpugd allocates arenas and optimizer states) and one from
``np.empty``, and times ``ops.adam_`` on every set and the in-place loop over every set's
own buffers (``ceilings.own_inplace``), round-robin in shuffled order, caches swept before
every call. Prints each set's huge-page share (AnonHugePages of the mappings holding its
arrays, from /proc/self/smaps: exact when each array has a mapping of its own, as large
ones do), GB/s of Adam's 22 bytes per element and of the in-place loop.

    python -m benchmarks.experiments.hugepages [--numel N] [--pairs K] [--rounds R]
"""

from __future__ import annotations

import argparse
import time

import ml_dtypes
import numpy as np

from gpugd import _hostmem as hostmem
from gpugd import ops

from ..ceilings import cpu_flush, own_inplace

BF16 = np.dtype(ml_dtypes.bfloat16)


def huge_kib(a: np.ndarray) -> int:
    """AnonHugePages (KiB) of the mapping that holds ``a`` (0 where unknown)."""
    return int(hostmem.mapping_of(a).get("AnonHugePages", "0 kB").split()[0])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1 << 24)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    n = args.numel
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n, dtype=np.float32).astype(BF16)
    g0 = (rng.standard_normal(n, dtype=np.float32) * 1e-2).astype(BF16)
    sets: dict[str, tuple[np.ndarray, ...]] = {}
    for i in range(args.pairs):
        for kind, alloc in (("huge", hostmem.zeros), ("np.empty", np.empty)):
            p, g = alloc(n, BF16), alloc(n, BF16)
            m, v = alloc(n, np.float32), alloc(n, np.float32)
            p[...], g[...], m[...], v[...] = p0, g0, 0, 0
            sets[f"{kind} {i}"] = (p, g, m, v)
    fns = {}
    for name, (p, g, m, v) in sets.items():
        fns[f"adam {name}"] = lambda p=p, g=g, m=m, v=v: ops.adam_(p, g, m, v, lr=1e-3, step=10)
        fns[f"own {name}"] = own_inplace([p, g, m, v]).fn
    flush = cpu_flush()
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(args.rounds):
        order = list(fns.items())
        np.random.default_rng(r).shuffle(order)
        for k, fn in order:
            flush()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    print(f"bf16p-f32s Adam on {n} elements (22 B/element), {args.rounds} rounds, medians")
    for name, arrays in sets.items():
        huge = [huge_kib(a) for a in arrays]
        share = sum(huge) * 1024 / sum(a.nbytes for a in arrays)
        adam = 22 * n / float(np.median(times[f"adam {name}"])) / 1e9
        own = 24 * n / float(np.median(times[f"own {name}"])) / 1e9
        print(
            f"  {name:<11} huge pages {min(share, 1.0):4.0%}  adam_ {adam:5.1f} GB/s  "
            f"in-place over its buffers {own:5.1f} GB/s  ({100 * adam / own:5.1f}%)"
        )


if __name__ == "__main__":
    main()
