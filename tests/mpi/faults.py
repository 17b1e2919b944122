"""Worker for the fault tests of tests/test_parallel.py, run as ``mpiexec -n 2 python
[-m mpi4py] faults.py MODE`` with a short ``GPUGD_COLLECTIVE_TIMEOUT``. Every rank fills
the gradients with rank + 1 and averages them STEPS times through DataParallel; MODE plants
one fault on rank 1:

fewer   rank 1 makes one fewer ``average`` call (then exits normally)
skip    rank 1 skips the averaging of step 2 but keeps counting steps (``step=t``)
raise   rank 1 raises at step 2
exit    rank 1 calls sys.exit(3) at step 2 (no exception: only the deadline catches it)
thread  a thread of rank 1 raises at step 2
reorder rank 1's layout holds the same sizes in another order
micro   rank 0 accumulates 2 micro-batches per step, rank 1 three
ok      no fault
"""

from __future__ import annotations

import sys
import threading

import numpy as np

import gpugd
from gpugd import parallel

STEPS = 6
mode = sys.argv[1]
comm = parallel.init()
assert comm.size == 2, "the faults are written for 2 ranks"
faulty = comm.rank == 1
shapes = {"w": (3, 4), "b": (4,), "v": (5,)}
if mode == "reorder" and faulty:
    shapes = dict(reversed(shapes.items()))
flat = gpugd.FlatParams(shapes, np.float64)
dp = parallel.DataParallel(comm, flat, bucket_bytes=64, first_bucket_bytes=32)


def fail() -> None:
    raise RuntimeError(f"rank {comm.rank} fails on purpose in a thread")


for t in range(STEPS - 1 if mode == "fewer" and faulty else STEPS):
    if faulty and t == 2:
        if mode == "raise":
            raise RuntimeError("rank 1 fails on purpose at step 2")
        if mode == "exit":
            sys.exit(3)
        if mode == "thread":
            worker = threading.Thread(target=fail, name="loader")
            worker.start()
            worker.join()
        if mode == "skip":
            continue
    k = comm.rank + 2 if mode == "micro" else 1
    flat.zero_grad()
    for _ in range(k):
        with dp.no_sync():
            flat.grad_data[...] += (comm.rank + 1.0) / k
    dp.average(step=t)
    assert np.all(flat.grad_data == 1.5), "the mean of 1 and 2"
print(f"rank {comm.rank}: {mode}: done", flush=True)
