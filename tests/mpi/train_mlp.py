"""Worker for tests/test_parallel.py, run under ``mpiexec -n R python -m mpi4py``.

mode "train": a 2-layer tanh MLP, MSE loss, trained STEPS steps with SGD-momentum; each
rank takes its shard of every mini-batch and averages gradients with gpugd.parallel;
rank 0 writes the final parameters to OUT. With R = 1 it is single-process training on
the whole mini-batch. mode "accum K PREDIVIDE": the same, but each rank splits its shard
into K equal micro-batches, adds their mean gradients up inside DataParallel.no_sync() and
averages once per step. mode "mismatch": rank 1 builds a different layout. mode "fault":
rank 1 raises after the first step.
"""

from __future__ import annotations

import sys

import numpy as np

import gpugd
from gpugd import optim, parallel

mode, out, dtype_name = sys.argv[1], sys.argv[2], sys.argv[3]
dtype = np.dtype(dtype_name)
K = int(sys.argv[4]) if mode == "accum" else 1
PREDIVIDE = mode == "accum" and sys.argv[5] == "predivide"
STEPS, BATCH, D_IN, D_H = 20, 48, 5, 16

comm = parallel.init()
shapes = {"w1": (D_IN, D_H), "b1": (D_H,), "w2": (D_H, 1), "b2": (1,)}
if mode == "mismatch" and comm.rank == 1:
    shapes["w2"] = (D_H, 2)
flat = gpugd.FlatParams(shapes, dtype)
rng = np.random.default_rng(comm.rank + 100)  # different on every rank: the broadcast fixes it
for n in flat:
    flat[n][...] = rng.standard_normal(flat[n].shape) * 0.5
opt = optim.SGD(flat, lr=0.05, momentum=0.9)
parallel.broadcast_parameters(comm, flat, optimizer=opt)  # raises MismatchError on all ranks

data = np.random.default_rng(0)  # the same data stream on every rank
X = data.standard_normal((STEPS, BATCH, D_IN)).astype(dtype)
Y = np.sin(X.sum(axis=2, keepdims=True)).astype(dtype)
shard = slice(comm.rank * BATCH // comm.size, (comm.rank + 1) * BATCH // comm.size)


def add_mean_gradient(x, y):
    """flat.grads += the gradient of the mean squared error over the rows of x."""
    h = np.tanh(x @ flat["w1"] + flat["b1"])
    pred = h @ flat["w2"] + flat["b2"]
    d = 2 * (pred - y) / len(x)  # d(mean squared error)/d pred on these rows
    flat.grads["w2"][...] += h.T @ d
    flat.grads["b2"][...] += d.sum(axis=0)
    dh = (d @ flat["w2"].T) * (1 - h * h)
    flat.grads["w1"][...] += x.T @ dh
    flat.grads["b1"][...] += dh.sum(axis=0)


dp = parallel.DataParallel(comm, flat, bucket_bytes=256, first_bucket_bytes=64, predivide=PREDIVIDE)
for t in range(STEPS):
    x, y = X[t, shard], Y[t, shard]
    if mode == "accum":
        assert len(x) % K == 0, "the test uses equal micro-batches"
        m = len(x) // K
        for k in range(K):
            with dp.no_sync():
                add_mean_gradient(x[k * m : (k + 1) * m], y[k * m : (k + 1) * m])
        assert dp.micro_batches == K
        avg = dp.average(norm=True)
    else:
        add_mean_gradient(x, y)  # the gradients are zero here: this sets them
        avg = parallel.average_gradients(
            comm, flat, bucket_bytes=256, first_bucket_bytes=64, norm=True
        )
    # the norm from the averaging pass is the norm of the averaged gradient buffer
    assert abs(avg.norm - float(np.linalg.norm(flat.grad_data))) <= 1e-5 * avg.norm
    opt.step()
    opt.zero_grad()
    if mode == "fault" and comm.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")

if comm.rank == 0:
    np.save(out, flat.data)
