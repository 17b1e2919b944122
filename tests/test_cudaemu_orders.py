"""The CUDA kernels give the same bits whatever order their threads and blocks run in.

On the emulator the blocks of a launch, and the threads of each block between barriers,
run one at a time in a chosen order (``cudaemu.runtime.order``): index order, reversed, or
shuffled. A kernel whose result depends on that order has a race (a missing barrier, two
threads writing one element, a read of another thread's output): on a GPU it would give
different answers from run to run. Each op below runs in the three orders; the outputs
must be identical to the bit. (``GPUGD_EMU_ORDER=reverse|shuffle`` runs the whole suite
in another order; CI does it once with ``shuffle``.)
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from conftest import emulated, to_numpy

from gpugd import ops

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not emulated(), reason="thread and block orders are the emulator's"),
]
BF16 = np.dtype(ml_dtypes.bfloat16)


def _adam_lists(cp):
    rng = np.random.default_rng(0)
    sizes = (0, 70_001, 7, 1023)
    ps = [cp.asarray(rng.standard_normal(n).astype(np.float32)) for n in sizes]
    gs = [cp.asarray(rng.standard_normal(n).astype(np.float32)) for n in sizes]
    ms = [cp.zeros(n, cp.float32) for n in sizes]
    vs = [cp.zeros(n, cp.float32) for n in sizes]
    ws = [cp.zeros(n, cp.float32) for n in sizes]
    for t in (1, 2):
        ops.adam_(ps, gs, ms, vs, ws, lr=1e-2, amsgrad=True, step=t, grad_scale=0.5)
    return [*ps, *ms, *vs, *ws]


def _mixed_sgd(cp):
    rng = np.random.default_rng(1)
    p0 = [rng.standard_normal(n).astype(np.float32) for n in (5000, 3)]
    ps = [cp.asarray(a.astype(BF16)) for a in p0]
    masters = [cp.asarray(a) for a in p0]
    gs = [cp.asarray(rng.standard_normal(a.size).astype(BF16)) for a in p0]
    bufs = [cp.zeros(a.size, cp.float32) for a in p0]
    ops.sgd_(ps, gs, bufs, lr=0.1, momentum=0.9, master=masters, rounding="stochastic", seed=4)
    return [*ps, *masters, *bufs]


def _norms(cp):
    rng = np.random.default_rng(2)
    xs = [cp.asarray(rng.standard_normal(n).astype(np.float32)) for n in (100_003, 5, 4096)]
    xs[1][2] = np.float32(np.inf)
    st = ops.tensor_norms(xs)
    return [st.norms, st.nonfinite_counts, cp.asarray([float(st.norm)])]


def _sum_of_squares(cp):
    x = cp.asarray(np.random.default_rng(3).standard_normal(300_001).astype(np.float64))
    return [ops.sum_of_squares(x)]


def _batchnorm(cp):
    rng = np.random.default_rng(4)
    x = cp.asarray(rng.standard_normal((64, 7, 5, 3)).astype(np.float32))
    nchw = ops.batch_norm_stats(x)
    nhwc = ops.batch_norm_stats(x, layout="NHWC")
    return [*nchw, *nhwc]


def _activations(cp):
    x = cp.asarray(np.random.default_rng(5).standard_normal(10_001).astype(np.float32))
    dy = cp.asarray(np.random.default_rng(6).standard_normal(10_001).astype(np.float32))
    return [ops.gelu(x), ops.silu_backward(dy, x)]


def _dropout(cp):
    x = cp.asarray(np.random.default_rng(7).standard_normal(10_001).astype(np.float32))
    return [ops.dropout(x, 0.3, seed=1, offset=5), ops.dropout_mask(777, 0.5, seed=2, xp=cp)]


CASES = {
    "adam-lists-amsgrad": _adam_lists,
    "sgd-bf16-master-sr": _mixed_sgd,
    "tensor-norms": _norms,
    "sum-of-squares": _sum_of_squares,
    "batch-norm-stats": _batchnorm,
    "activations": _activations,
    "dropout": _dropout,
}


@pytest.mark.parametrize("case", CASES)
def test_every_order_gives_the_same_bits(case):
    import cupy
    from cudaemu import runtime

    results = {}
    for order, seed in (("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2)):
        with runtime.order(order, seed):
            results[f"{order}{seed}"] = [to_numpy(a) for a in CASES[case](cupy)]
    first = results.pop("forward0")
    for name, arrays in results.items():
        for i, (a, b) in enumerate(zip(first, arrays, strict=True)):
            assert a.tobytes() == b.tobytes(), f"{case}: output {i} differs in order {name}"
