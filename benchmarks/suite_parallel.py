"""Suite ``parallel``: MPI allreduce and gradient averaging on this machine, 2 and 4 ranks.

Each measurement is a separate ``mpiexec -n R`` job (the mpich wheel's launcher; 4 ranks
oversubscribe a 2-core machine) running ``benchmarks.parallel_worker``. Rows follow
nccl-tests' definitions: algbw = S/t for a buffer of S bytes, busbw = algbw·2(R−1)/R (the
bytes each rank must move in a ring allreduce), and ``gbps`` is busbw, held against the
in-place ceiling (on one machine an allreduce is memory traffic). ``average_gradients`` is
counted as its allreduce's bus bytes plus the 8 B/element of its scaling pass.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np

from .harness import Context, Timing, row

NAME = "parallel"


def _mpiexec() -> str | None:
    """The launcher, when this Python can also run the MPI worker (mpi4py importable): an
    mpiexec found on PATH beside a Python without mpi4py is no use."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def run(ctx: Context) -> list[dict[str, Any]]:
    if ctx.backend.name != "cpu":
        ctx.log("parallel: CPU/MPI only for now (NCCL path unmeasured)")
        return []
    mpiexec = _mpiexec()
    if mpiexec is None:
        ctx.log("parallel: skipped, no mpiexec or mpi4py (pip install 'gpugd[mpi]')")
        return []
    rows = []
    for ranks in (2,) if ctx.quick else (2, 4):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "res.json")
            cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "benchmarks.parallel_worker"]
            cmd += [out] + (["--quick"] if ctx.quick else [])
            env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"parallel worker failed ({ranks} ranks):\n{r.stderr[-2000:]}")
            with open(out) as f:
                res = json.load(f)
        # the in-place class measured right after the job (the MPI ranks are other
        # processes, so their timings cannot be interleaved with this one's loops)
        _, ceiling = ctx.measure({"idle": lambda: None}, "inplace")
        bus = 2 * (ranks - 1) / ranks
        for m in res["allreduce"]:
            n, t = m["numel"], m["median_s"]
            timing = Timing(median_s=t, samples=[t])
            label = f"allreduce {ranks} ranks"
            rows.append(
                row(ctx, label, np.float32, n, timing, int(bus * 4 * n), "inplace", ceiling, {}, 1)
            )
            ctx.log(
                f"  {label} n={n:>9}: algbw {4 * n / t / 1e9:6.2f} GB/s, busbw "
                f"{bus * 4 * n / t / 1e9:6.2f} GB/s"
            )
        a = res["average"]
        n = a["numel"]
        nbytes = int(bus * 4 * n + 8 * n)
        rows.append(
            row(
                ctx,
                f"average_gradients {ranks} ranks",
                np.float32,
                n,
                Timing(median_s=a["median_s"], samples=[a["median_s"]]),
                nbytes,
                "inplace",
                ceiling,
                {},
                1,
            )
        )
    return rows
