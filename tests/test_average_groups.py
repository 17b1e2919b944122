"""average_ with k >= 5 inputs on CUDA: the passes of average_groups (4 inputs, then 3 (float)
or 2 (double) at a time, accumulated in out) give the bits of the in-order one-pass sum
(b_0 + b_1 + … + b_{k−1})·(1/k) in the dtype; out = one of b_4 … (which a pass would
overwrite before a later one reads it) takes the one-pass any-k loop, still exact."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from gpugd import ops

pytestmark = pytest.mark.cuda

# one SM, so threads loop: 70_001 reaches the unrolled packs, 4099 the packs after them,
# 3 the tail only
SIZES = (3, 4099, 70_001)


def _in_order(views: list[np.ndarray], k: int, dtype: type) -> np.ndarray:
    acc = views[0].copy()
    for b in views[1:]:
        acc += b
    return acc * dtype(1.0 / k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("k", [5, 7, 8, 10])
def test_average_of_five_or_more_is_the_in_order_sum_bit_for_bit(monkeypatch, dtype, n, k):
    import cupy

    from gpugd import _cuda

    monkeypatch.setattr(_cuda, "sm_count", lambda: 1)
    rng = np.random.default_rng(1000 * k + n)
    host = [
        (rng.standard_normal(n + 1) * 10.0 ** rng.integers(-3, 4)).astype(dtype) for _ in range(k)
    ]
    u = {4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]
    # (offset of each input, where out is: a fresh buffer at an offset, or "alias j" input j)
    cases = [
        ([0] * k, 0),  # all aligned: packs
        ([0] * (k - 1) + [1], 0),  # the last input misaligned: elements for every pass
        ([0] * k, 1),  # out misaligned
        ([0] * k, "alias 0"),
        ([0] * k, "alias 3"),  # the last of the first pass
        ([0] * k, "alias 4"),  # would be overwritten by pass 1: the one-pass loop
        ([0] * k, f"alias {k - 1}"),
    ]
    for offs, out_at in cases:
        bufs = [cupy.asarray(h) for h in host]
        views = [b[o : o + n] for b, o in zip(bufs, offs, strict=True)]
        want = _in_order([h[o : o + n] for h, o in zip(host, offs, strict=True)], k, dtype)
        if isinstance(out_at, str):
            j = int(out_at.split()[1])
            out, outbuf, o_out = views[j], bufs[j], offs[j]
        else:
            outbuf = cupy.full(n + 1, np.nan, dtype)
            out, o_out = outbuf[out_at : out_at + n], out_at
        assert ops.average_(out, views) is out
        got = cupy.asnumpy(outbuf)
        what = f"k={k} n={n} inputs at +{offs}, out {out_at}"
        np.testing.assert_array_equal(got[o_out : o_out + n].view(u), want.view(u), what)
        beside = np.delete(np.arange(n + 1), np.arange(o_out, o_out + n))
        if isinstance(out_at, str):
            np.testing.assert_array_equal(got[beside], host[j][beside], what)
        else:
            assert np.isnan(got[beside]).all(), what


@pytest.mark.parametrize("order", ["reverse", "shuffle"])
def test_average_passes_read_back_only_their_own_threads_writes(monkeypatch, order):
    """Blocks and threads run in another order: a pass reading an item another thread
    wrote in the pass before would see it unwritten in one of them. Out is listed twice
    (0 and 2), inside the first pass."""
    import cupy
    from conftest import emulated

    from gpugd import _cuda

    if not emulated():
        pytest.skip("the emulator's run orders")
    runtime = importlib.import_module(cupy._EMULATOR_PACKAGE + ".runtime")
    monkeypatch.setattr(_cuda, "sm_count", lambda: 1)
    n, k = 70_001, 9
    rng = np.random.default_rng(7)
    host = [rng.standard_normal(n).astype(np.float32) for _ in range(k - 1)]
    views = [cupy.asarray(h) for h in host]
    out = views[0]
    inputs = [out, views[1], out, *views[2:]]
    want = _in_order([host[0], host[1], host[0], *host[2:]], k, np.float32)
    with runtime.order(order, seed=3):
        ops.average_(out, inputs)
    np.testing.assert_array_equal(cupy.asnumpy(out).view(np.uint32), want.view(np.uint32))
