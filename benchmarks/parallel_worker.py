"""Run under ``mpiexec -n R python -m benchmarks.parallel_worker OUT.json [--quick]``:
times an in-place MPI allreduce (sum) of fp32 buffers of several sizes, and
``gpugd.parallel.average_gradients`` of the largest, barrier-aligned, median of repeats
(the slowest rank's time each repeat, as nccl-tests reports). Rank 0 writes JSON."""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    from mpi4py import MPI

    from gpugd import parallel

    out, quick = sys.argv[1], "--quick" in sys.argv
    comm = parallel.init()
    sizes = [1 << 12, 1 << 16, 1 << 20, 1 << 24]
    repeats = 5 if quick else 15
    res = {"ranks": comm.size, "allreduce": [], "average": None}

    def timed(fn) -> float:
        samples = []
        fn()
        for _ in range(repeats):
            comm.barrier()
            t = time.perf_counter()
            fn()
            dt = comm.mpi.allreduce(time.perf_counter() - t, op=MPI.MAX)
            samples.append(dt)
        return float(np.median(samples))

    for n in sizes:
        buf = np.ones(n, np.float32)
        res["allreduce"].append({"numel": n, "median_s": timed(lambda b=buf: comm.allreduce_(b))})
    g = np.ones(sizes[-1], np.float32)
    res["average"] = {
        "numel": sizes[-1],
        "median_s": timed(lambda: parallel.average_gradients(comm, g)),
    }
    if comm.rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)


if __name__ == "__main__":
    main()
