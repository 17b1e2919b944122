"""Suite ``train``: whole training steps of an MLP, gpugd against PyTorch.

One step = forward, softmax cross-entropy, backward, Adam (lr 1e-3) with global-norm
clipping at 1.0, on a fixed batch: the network 784-512-512-10 with ReLU, batch 256, fp32
(``--numel`` set, as in the tests: 64-32-32-10, batch 16). gpugd: ``gpugd.nn.mlp`` and
``gpugd.optim.Adam(max_grad_norm=1.0)`` (the norm pass, then the clip factor fused into
the update; the backward overwrites gradients, so there is no zero_grad). torch, when
importable: the same layers (``nn.Linear``, ``ReLU``), ``F.cross_entropy``,
``zero_grad()`` (its default, set_to_none), ``clip_grad_norm_(foreach=True)`` and
``Adam(fused=True)`` — the fastest standard torch loop.

Timing: blocks of steps, medians per step; caches stay warm as in real training (no flush
between steps). gpugd's step and its parts alternate block by block in this process; torch
runs in a process of its own before and after them (its better median counts), in the
environment gpugd found: two OpenMP runtimes and two BLAS thread pools in one process
steal each other's cores (measured: torch 159 steps/s alone, 82 beside gpugd's threads).
``import gpugd`` sets ``OMP_WAIT_POLICY=PASSIVE`` when unset (Numba's libgomp threads
otherwise spin after each kernel and starve the next matmul's BLAS threads: a
784-512-512-10 forward took 18 ms spinning, 1.8 ms passive); torch keeps its default.

The row: ``median_s`` per gpugd step; ``bytes`` the fewest bytes the step's memory-bound
parts move (clipped fused Adam 32 B per fp32 parameter: the norm pass reads g, the update
reads p, g, m, v and writes p, m, v; ReLU forward 8 B and backward 12 B per hidden
activation); ``ceiling = "matmul"``: the step's eight matrix products alone (3 forward,
3 weight gradients, 2 input gradients, NumPy's BLAS into preallocated outputs), timed in
the same rounds, so ``pct_of_ceiling`` = 100 · matmul time / step time: how close the step
is to the time its BLAS floor allows. ``share_pct`` splits the gpugd step into matmul,
gpugd's kernels (``opt.step()`` and the ReLU forward/backward, each timed alone) and the
rest (loss, bias sums, Python).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

import gpugd
from gpugd import nn, ops, optim

from .harness import Context, Timing, row

NAME = "train"
ORIGINAL_OMP_WAIT_POLICY = gpugd.ORIGINAL_OMP_WAIT_POLICY


def _shape(ctx: Context) -> tuple[int, list[int], int, int]:
    return (64, [32, 32], 10, 16) if ctx.numel else (784, [512, 512], 10, 256)


def _time_blocks(fns: dict[str, Any], steps: int, rounds: int, sync: Any) -> dict[str, Timing]:
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            if r:  # round 0 warms up (Numba compilation, allocator, BLAS threads)
                samples[name].append((time.perf_counter() - t0) / steps)
    return {k: Timing(statistics.median(v), v) for k, v in samples.items()}


def run(ctx: Context) -> list[dict[str, Any]]:
    xp = ctx.backend.xp
    n_in, hidden, n_out, batch = _shape(ctx)
    label = f"train mlp {n_in}-{'-'.join(map(str, hidden))}-{n_out} b{batch} adam+clip"
    ctx.log(f"train: {label}")
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((batch, n_in)).astype(np.float32)
    y_host = rng.integers(0, n_out, batch)
    x, y = xp.asarray(x_host), xp.asarray(y_host)

    model = nn.mlp(n_in, hidden, n_out, activation="relu", init="he_normal")
    flat = model.build(np.float32, xp=xp, seed=0)
    opt = optim.Adam(flat, lr=1e-3, max_grad_norm=1.0)
    n_params = int(sum(flat[k].size for k in flat))

    def gpugd_step():
        logits = model.forward(x, training=True)
        _, d = nn.softmax_cross_entropy(logits, y)
        model.backward(d)
        opt.step()

    # the matmul floor: the step's eight products on the same shapes, preallocated outputs
    dims = [n_in, *hidden, n_out]
    acts = [xp.asarray(rng.standard_normal((batch, d)).astype(np.float32)) for d in dims]
    ws = [flat[n] for n in model.weight_names()]
    outs_f = [xp.empty((batch, d), np.float32) for d in dims[1:]]
    outs_w = [xp.empty_like(w) for w in ws]
    outs_x = [xp.empty((batch, d), np.float32) for d in dims[1:-1]]

    def matmuls():
        for i, w in enumerate(ws):
            xp.matmul(acts[i], w, out=outs_f[i])
            xp.matmul(acts[i].T, acts[i + 1], out=outs_w[i])
            if i:
                xp.matmul(acts[i + 1], w.T, out=outs_x[i - 1])

    hid = [xp.asarray(rng.standard_normal((batch, h)).astype(np.float32)) for h in hidden]
    hid_out = [xp.empty_like(h) for h in hid]

    def relus():
        for h, o in zip(hid, hid_out, strict=True):
            ops.relu(h, out=o)
            ops.relu_backward(h, h, out=o)

    fns: dict[str, Any] = {
        "gpugd": gpugd_step,
        "matmul": matmuls,
        "opt.step": opt.step,
        "relu": relus,
    }
    has_torch = importlib.util.find_spec("torch") is not None  # runs in its own process
    steps = 5 if ctx.quick else 20
    rounds = 3 if ctx.quick else 7
    if ctx.numel:
        steps, rounds = 3, 2
    peer, peer_s, peer_threads = None, None, None
    if has_torch and xp is np:
        first, peer, peer_threads = _torch_peer(dims, batch, steps, rounds)
    t = _time_blocks(fns, steps, rounds, ctx.backend.synchronize)
    if peer is not None:  # before and after gpugd; torch's better run counts
        peer_s = min(first, _torch_peer(dims, batch, steps, rounds)[0])
    step_s = t["gpugd"].median_s
    mm, kern = t["matmul"].median_s, t["opt.step"].median_s + t["relu"].median_s
    other = max(step_s - mm - kern, 0.0)
    tot = mm + kern + other
    shares = {
        "matmul": 100 * mm / tot,
        "gpugd_kernels": 100 * kern / tot,
        "other": 100 * other / tot,
    }
    nbytes = 32 * n_params + 20 * batch * sum(hidden)
    r = row(
        ctx,
        label,
        np.float32,
        n_params,
        t["gpugd"],
        nbytes,
        "matmul",
        nbytes / mm / 1e9,
        {peer: peer_s} if peer else {},
        tensors=2 * len(dims) - 2,
    )
    threads = {"numba": _numba_threads()}
    if peer_threads is not None:
        threads["torch"] = peer_threads
    r.update(
        steps_per_s=1.0 / step_s,
        peer_steps_per_s={peer: 1.0 / peer_s} if peer else {},
        share_pct=shares,
        threads=threads,
    )
    ctx.log(
        f"  gpugd {1 / step_s:8.1f} steps/s"
        + (f"   {peer} {1 / peer_s:8.1f} steps/s   ratio {peer_s / step_s:.2f}x" if peer else "")
        + f"   shares: matmul {shares['matmul']:.0f}%, gpugd kernels "
        f"{shares['gpugd_kernels']:.0f}%, other {shares['other']:.0f}%   threads {threads}"
    )
    return [r]


def _numba_threads() -> int:
    try:
        import numba

        return int(numba.get_num_threads())
    except ImportError:
        return 1


_TORCH_PEER = """
import json, statistics, sys, time
import torch
dims, batch, steps, rounds = json.loads(sys.argv[1])
torch.manual_seed(0)
layers = []
for a, b in zip(dims[:-1], dims[1:]):
    layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
model = torch.nn.Sequential(*layers[:-1])
params = list(model.parameters())
try:
    opt, kind = torch.optim.Adam(params, lr=1e-3, fused=True), "torch-fused"
except (RuntimeError, TypeError, ValueError):
    opt, kind = torch.optim.Adam(params, lr=1e-3, foreach=True), "torch-foreach"
x, y = torch.randn(batch, dims[0]), torch.randint(0, dims[-1], (batch,))
def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    opt.step()
out = []
for r in range(rounds + 1):
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if r:
        out.append((time.perf_counter() - t0) / steps)
print(json.dumps([statistics.median(out), kind, torch.get_num_threads()]))
"""


def _torch_peer(dims: list[int], batch: int, steps: int, rounds: int) -> tuple[float, str, int]:
    """Seconds per torch step, measured in a process of its own with the environment
    gpugd found (before gpugd set OMP_WAIT_POLICY): each library in its natural setting,
    not sharing cores with the other's idle OpenMP/BLAS threads."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if ORIGINAL_OMP_WAIT_POLICY is not None:
        env["OMP_WAIT_POLICY"] = ORIGINAL_OMP_WAIT_POLICY
    arg = json.dumps([dims, batch, steps, rounds])
    r = subprocess.run(
        [sys.executable, "-c", _TORCH_PEER, arg],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    step_s, kind, threads = json.loads(r.stdout.strip().splitlines()[-1])
    return float(step_s), str(kind), int(threads)
