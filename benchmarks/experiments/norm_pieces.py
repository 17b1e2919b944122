"""Experiment: where does the CPU norm pass over many small tensors (``tensor_norms``,
``Reduction.run``) spend the time its read loop does not?

Over 1,000 float32 tensors of 64-8191 elements, round-robin, every call after a cache sweep
(``ceilings.cpu_flush``), medians of ``--rounds`` in ms:

* ``loop``: the read loop over the same buffers (``ceilings.traffic``: the row's ceiling);
* ``bare``: the kernel's per-chunk code (``reduce.chunk_stats``) in a bare ``prange`` driver
  that stores each chunk's sums and returns: without the zero counts (``bare no zeros``)
  and with them;
* ``kernel``: ``reduce._stats_parallel``, the pass and its fold into the results;
* ``run``: ``Reduction.run`` (zero counts on, as ``tensor_norms``), the call a user makes;
* with ``--torch``: torch's ``_foreach_norm`` in the same rounds (its threads beside gpugd's).

    python -m benchmarks.experiments.norm_pieces [--rounds R] [--torch]
"""

from __future__ import annotations

import argparse

import numpy as np
from numba import njit, prange

from gpugd._cpu import reduce as R
from gpugd._cpu.tensor_table import SIZE_ROW, entry
from gpugd.ops.reduce import Reduction

from ..ceilings import traffic
from . import round_robin_ms


@njit(parallel=True)
def _bare(table, tasks, like, out, zeros):
    for k in prange(tasks.shape[0]):
        t, lo = tasks[k, 0], tasks[k, 1]
        x = entry(table, 0, t, lo, min(R.CHUNK, table[SIZE_ROW, t] - lo), like)
        out[k, 0], out[k, 2] = R.chunk_stats(x, zeros)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--torch", action="store_true", help="torch._foreach_norm in the rounds")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    small = [rng.standard_normal(int(k)).astype(np.float32) for k in rng.integers(64, 8192, 1000)]
    red = Reduction(small)
    red.run()
    table, tasks, like, _ = red._prepared
    out = np.zeros((tasks.shape[0], 3))
    fns = {
        "loop": traffic(small).fn,
        "bare no zeros": lambda: _bare(table, tasks, like, out, False),
        "bare": lambda: _bare(table, tasks, like, out, True),
        "kernel": lambda: R._stats_parallel(table, tasks, like, True),
        "run": red.run,
    }
    if a.torch:
        import torch

        ts = [torch.from_numpy(x) for x in small]
        fns["torch _foreach_norm"] = lambda: torch._foreach_norm(ts)
    med = round_robin_ms(fns, a.rounds)
    print(" ".join(f"{k} {v:.3f}" for k, v in med.items()))


if __name__ == "__main__":
    main()
