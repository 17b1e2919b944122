"""Experiment: what a CPU Adam call costs beyond its kernel, warm and after a cache sweep.

Times, on one bfloat16-parameter/float32-state array set of ``--numel`` elements (the
``amp`` suite's headline policy), round-robin:

* ``ops``: ``gpugd.ops.adam_`` (validates every argument on every call);
* ``optim``: ``gpugd.optim.Adam.step`` (arrays validated and tensor table built once);
* ``kernel``: the Numba multi-tensor kernel called directly with a prebuilt table (the
  floor: Numba's dispatch, the parallel region and the memory traffic);
* ``region``: an empty parallel region (Numba's dispatch and waking the worker threads).

``cold``: each call after a sweep of twice the last-level cache, as the benchmark suites
time kernels (the interpreter's code and data are evicted too, as after a large forward
and backward pass); ``warm``: back to back. Prints medians in µs and each path's
overhead over ``kernel``. Small ``--numel`` (the default 2^17, the smallest array that
takes the parallel path) shows the fixed cost; 2^24 shows its share of a large step.

    python -m benchmarks.experiments.overhead [--numel N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import ml_dtypes
import numpy as np
from numba import njit, prange

from gpugd import _hostmem as hostmem
from gpugd import ops, optim
from gpugd._cpu import optim as kernels
from gpugd.ops._optim_tensors import _cpu_value

from ..ceilings import cpu_flush

BF16 = np.dtype(ml_dtypes.bfloat16)


@njit(parallel=True, cache=True)
def _empty_region(x):
    for i in prange(2):
        x[i] = i


def _kernel_call(opt: optim.Adam) -> Callable[[], None]:
    """The optimizer's kernel call with everything prebuilt: its group's tensor table (made
    at its first step) and the float32 scalars of step 10, straight to ``run_table``."""
    k = opt._kernel(opt.param_groups[0], 10, 1.0, opt._groups[0])
    table, tasks, likes, out_like = opt._tensors(0, k)._prepared
    scalars = tuple(_cpu_value(x, np.float32) for x in (*k.scalars, k.grad_scale, k.clip))
    return lambda: kernels.run_table(k.rule, table, tasks, likes, *scalars, out_like=out_like)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1 << 17)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    n = args.numel
    rng = np.random.default_rng(0)
    p = hostmem.copy_of(rng.standard_normal(n, dtype=np.float32).astype(BF16))
    g = hostmem.copy_of((rng.standard_normal(n, dtype=np.float32) * 1e-2).astype(BF16))
    m, v = hostmem.zeros(n, np.float32), hostmem.zeros(n, np.float32)
    opt = optim.Adam([hostmem.copy_of(p)], grads=[g], lr=1e-3)
    opt.step()
    x = np.zeros(2)
    fns = {
        "ops": lambda: ops.adam_(p, g, m, v, lr=1e-3, step=10),
        "optim": opt.step,
        "kernel": _kernel_call(opt),
        "region": lambda: _empty_region(x),
    }
    flush = cpu_flush()
    for fn in fns.values():
        fn()
    times: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
    for mode in times:
        times[mode] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                if mode == "cold":
                    flush()
                else:
                    fn()
                t0 = time.perf_counter()
                fn()
                times[mode][name].append(time.perf_counter() - t0)
    print(f"Adam, bfloat16 p and g, float32 m and v, {n} elements; medians of {args.rounds}")
    print(f"{'':8}" + "".join(f"{k:>12}" for k in fns) + f"{'ops−kernel':>14}{'optim−kernel':>14}")
    for mode, samples in times.items():
        med = {k: statistics.median(s) * 1e6 for k, s in samples.items()}
        cells = "".join(f"{med[k]:>10.1f}µs" for k in fns)
        print(
            f"{mode:8}{cells}{med['ops'] - med['kernel']:>12.1f}µs"
            f"{med['optim'] - med['kernel']:>12.1f}µs"
        )


if __name__ == "__main__":
    main()
