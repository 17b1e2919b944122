"""Inverted dropout with a counter-based mask: reproducible from (seed, offset), the same
for fp32 and fp64, the backward regenerates it, the kept fraction is binomially right."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import to_numpy

from gpugd import ops


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_is_binomial(xp, p):
    n = 2_000_003
    m = to_numpy(ops.dropout_mask(n, p, seed=123, xp=xp))
    q = 1 - p
    sigma = math.sqrt(n * q * (1 - q))
    assert abs(int(m.sum()) - n * q) < 5 * sigma  # fails by chance with probability < 1e-6
    # and no structure by position: each quarter keeps its share too
    for part in np.array_split(m, 4):
        s = math.sqrt(part.size * q * (1 - q))
        assert abs(int(part.sum()) - part.size * q) < 5 * s


def test_neighbouring_elements_are_independent():
    m = ops.dropout_mask(1_000_000, 0.5, seed=7).astype(np.float64)
    r = np.corrcoef(m[:-1], m[1:])[0, 1]
    assert abs(r) < 5 / math.sqrt(m.size)


def test_forward_scales_kept_elements_and_zeroes_the_rest(xp):
    x0 = np.random.default_rng(0).standard_normal(10_001).astype(np.float32)
    y = to_numpy(ops.dropout(xp.asarray(x0), 0.25, seed=9, offset=17))
    m = to_numpy(ops.dropout_mask(x0.size, 0.25, seed=9, offset=17, xp=xp))
    np.testing.assert_array_equal(y[~m], 0)
    np.testing.assert_array_equal(y[m], x0[m] * np.float32(1 / 0.75))


def test_backward_regenerates_the_mask(xp):
    dy = xp.asarray(np.ones(50_000, np.float32))
    dx = to_numpy(ops.dropout_backward(dy, 0.4, seed=5, offset=1000))
    y = to_numpy(ops.dropout(dy, 0.4, seed=5, offset=1000))
    np.testing.assert_array_equal(dx, y)


def test_same_seed_same_mask_for_both_dtypes_and_new_seed_or_offset_new_mask(xp):
    a = to_numpy(ops.dropout(xp.ones(4099, np.float32), 0.5, seed=11)) != 0
    b = to_numpy(ops.dropout(xp.ones(4099, np.float64), 0.5, seed=11)) != 0
    np.testing.assert_array_equal(a, b)
    c = to_numpy(ops.dropout(xp.ones(4099, np.float32), 0.5, seed=12)) != 0
    d = to_numpy(ops.dropout(xp.ones(4099, np.float32), 0.5, seed=11, offset=4099)) != 0
    assert (a != c).mean() > 0.4 and (a != d).mean() > 0.4


def test_offset_is_a_shift_of_one_stream(xp):
    long = to_numpy(ops.dropout_mask(300_005, 0.3, seed=2, xp=xp))
    shifted = to_numpy(ops.dropout_mask(300_000, 0.3, seed=2, offset=5, xp=xp))
    np.testing.assert_array_equal(long[5:], shifted)


def test_chunked_parallel_path_equals_serial_mask():
    # 2^20 + 3 elements take the parallel path; its mask must be the serial one
    n = (1 << 20) + 3
    y = ops.dropout(np.ones(n, np.float32), 0.5, seed=4, offset=3)
    np.testing.assert_array_equal(y != 0, ops.dropout_mask(n, 0.5, seed=4, offset=3))


def test_p_zero_is_identity_and_in_place_works(xp):
    x0 = np.arange(10, dtype=np.float64)
    np.testing.assert_array_equal(to_numpy(ops.dropout(xp.asarray(x0), 0.0, seed=1)), x0)
    x = xp.asarray(x0.copy())
    assert ops.dropout(x, 0.5, seed=1, out=x) is x


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda x: ops.dropout(x, 1.0, seed=1),
            ValueError,
            r"p: expected a drop probability in \[0, 1\)",
        ),
        (lambda x: ops.dropout(x, -0.1, seed=1), ValueError, "p: expected"),
        (lambda x: ops.dropout(x, 0.5, seed=-1), ValueError, "seed"),
        (lambda x: ops.dropout(x, 0.5, seed=1, offset=1.5), ValueError, "offset"),
        (lambda x: ops.dropout(x.astype(np.int32), 0.5, seed=1), TypeError, "x: expected dtype"),
        (lambda x: ops.dropout(x, 0.5, seed=1, out=x[1:]), ValueError, "out: shape"),
        (
            lambda x: ops.dropout_backward(x[::2], 0.5, seed=1),
            ValueError,
            "grad_out: expected a C-contiguous",
        ),
    ],
)
def test_bad_input_is_refused_before_any_write(call, exc, match):
    x = np.full(8, 3.0, np.float32)
    with pytest.raises(exc, match=match):
        call(x)
    assert (x == 3.0).all()


@pytest.mark.cuda
def test_cpu_and_cuda_draw_the_same_mask():
    import cupy

    cpu = ops.dropout_mask(100_003, 0.3, seed=99, offset=12345)
    gpu = ops.dropout_mask(100_003, 0.3, seed=99, offset=12345, xp=cupy).get()
    np.testing.assert_array_equal(cpu, gpu)


# ------------------------------------------------- every loop of the CUDA kernels

# With one multiprocessor the grid holds a few blocks (at most 2048 threads), so threads loop:
# 70_001 elements reach the unrolled main loop and the packs left after it, 4099 the latter,
# 1, 3 and odd sizes the tail after the packs, one element of offset (x[1:]) the misaligned
# scalar path. Offsets near 2**64 make the counters offset + i wrap.
PATH_SIZES = (0, 1, 3, 17, 4099, 70_001)
OFFSETS = (0, 5, 2**64 - 3)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", PATH_SIZES)
@pytest.mark.parametrize("offset", OFFSETS, ids=["0", "5", "wraps"])
def test_cuda_loops_match_the_cpu_bitwise(monkeypatch, dtype, n, offset):
    """dropout's bits and the mask kernel's bytes equal the CPU's on every path; buffers one
    element longer than the views, poisoned: nothing outside a view is written."""
    import cupy

    from gpugd import _cuda
    from gpugd._cpu.dropout import key_of
    from gpugd.ops.dropout import _threshold

    monkeypatch.setattr(_cuda, "sm_count", lambda: 1)
    u = {4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]
    xb = np.random.default_rng(n).standard_normal(n + 1).astype(dtype)
    for ox, oy in [(0, 0), (1, 1), (1, 0), (0, 1)]:
        hy, dy = np.full(n + 1, np.nan, dtype), cupy.full(n + 1, np.nan, dtype)
        ops.dropout(xb[ox : ox + n], 0.3, seed=8, offset=offset, out=hy[oy : oy + n])
        dx = cupy.asarray(xb)
        ops.dropout(dx[ox : ox + n], 0.3, seed=8, offset=offset, out=dy[oy : oy + n])
        np.testing.assert_array_equal(to_numpy(dy).view(u), hy.view(u), f"x+{ox} y+{oy}")
    hx, dx = xb.copy(), cupy.asarray(xb)  # in place, misaligned
    ops.dropout_backward(hx[1:], 0.3, seed=8, offset=offset, out=hx[1:])
    ops.dropout_backward(dx[1:], 0.3, seed=8, offset=offset, out=dx[1:])
    np.testing.assert_array_equal(to_numpy(dx).view(u), hx.view(u), "in place")
    # the mask kernel, also at misaligned starts (the op's own mask array is fresh: aligned)
    want = ops.dropout_mask(n, 0.3, seed=8, offset=offset)
    got = to_numpy(ops.dropout_mask(n, 0.3, seed=8, offset=offset, xp=cupy))
    np.testing.assert_array_equal(got, want)
    for o in (0, 1, 3):
        m = cupy.full(n + 4, 7, cupy.uint8)
        args = (m[o : o + n], np.int64(n), key_of(8), np.uint64(offset), _threshold(0.3))
        _cuda.launch("dropout", "gpugd_dropout_mask", n, args)
        got = to_numpy(m)
        np.testing.assert_array_equal(got[o : o + n], want.astype(np.uint8), f"mask +{o}")
        assert (got[:o] == 7).all() and (got[o + n :] == 7).all(), f"mask +{o} wrote outside"
