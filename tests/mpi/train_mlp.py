"""Worker for tests/test_parallel.py, run under ``mpiexec -n R python -m mpi4py``.

mode "train": a 2-layer tanh MLP, MSE loss, trained STEPS steps with SGD-momentum; each
rank takes its shard of every mini-batch and averages gradients with gpugd.parallel;
rank 0 writes the final parameters to OUT. With R = 1 it is single-process training on
the whole mini-batch. mode "mismatch": rank 1 builds a different layout. mode "fault":
rank 1 raises after the first step.
"""

from __future__ import annotations

import sys

import numpy as np

import gpugd
from gpugd import optim, parallel

mode, out, dtype_name = sys.argv[1], sys.argv[2], sys.argv[3]
dtype = np.dtype(dtype_name)
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

for t in range(STEPS):
    x, y = X[t, shard], Y[t, shard]
    h = np.tanh(x @ flat["w1"] + flat["b1"])
    pred = h @ flat["w2"] + flat["b2"]
    d = 2 * (pred - y) / len(x)  # d(mean squared error)/d pred on this shard
    flat.grads["w2"][...] = h.T @ d
    flat.grads["b2"][...] = d.sum(axis=0)
    dh = (d @ flat["w2"].T) * (1 - h * h)
    flat.grads["w1"][...] = x.T @ dh
    flat.grads["b1"][...] = dh.sum(axis=0)
    avg = parallel.average_gradients(comm, flat, bucket_bytes=256, first_bucket_bytes=64, norm=True)
    # the norm from the averaging pass is the norm of the averaged gradient buffer
    assert abs(avg.norm - float(np.linalg.norm(flat.grad_data))) <= 1e-5 * avg.norm
    opt.step()
    opt.zero_grad()
    if mode == "fault" and comm.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")

if comm.rank == 0:
    np.save(out, flat.data)
