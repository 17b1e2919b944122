"""vector family (axpy_, scale_, sum_of_squares) against the float64 reference, both
backends, odd sizes; bad input rejected before any kernel runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ODD_SIZES, TOLERANCE, assert_rel_close, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from gpugd import ops
from gpugd import reference as ref
from gpugd._cpu import vector as cpu_vector

DTYPES = (np.float32, np.float64)


def _arrays(xp, n, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(dtype)
    y = rng.uniform(0.5, 2.0, n).astype(dtype) * rng.choice([-1, 1], n).astype(dtype)
    return x, y, xp.array(x), xp.array(y)  # copies: the references stay untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", ODD_SIZES)
def test_axpy_matches_reference(xp, n, dtype):
    x, y, dx, dy = _arrays(xp, n, dtype, n)
    # |a·y| ≥ 0.5·|a| everywhere, so an element the kernel skipped stands out.
    out = ops.axpy_(dx, -0.75, dy)
    assert out is dx
    assert_rel_close(dx, ref.axpy(x, -0.75, y), TOLERANCE["elementwise"][dtype], "axpy_")
    assert_rel_close(dy, y, 0.0, "axpy_ must not write y")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", ODD_SIZES)
def test_scale_matches_reference(xp, n, dtype):
    x, _, dx, _ = _arrays(xp, n, dtype, n + 1)
    assert ops.scale_(dx, -3.5) is dx
    assert_rel_close(dx, ref.scale(x, -3.5), TOLERANCE["elementwise"][dtype], "scale_")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", ODD_SIZES)
def test_sum_of_squares_matches_reference(xp, n, dtype):
    x, _, dx, _ = _arrays(xp, n, dtype, n + 2)
    got = ops.sum_of_squares(dx)
    assert to_numpy(got).dtype == np.float64
    assert_rel_close(
        np.float64(to_numpy(got)),
        ref.sum_of_squares(x),
        TOLERANCE["reduction"][dtype],
        "sum_of_squares",
    )


def test_ops_accept_any_contiguous_shape(xp):
    x, y, dx, dy = _arrays(xp, 3 * 5 * 7, np.float32, 3)
    dx, dy = dx.reshape(3, 5, 7), dy.reshape(3, 5, 7)
    ops.axpy_(dx, 2.0, dy)
    assert_rel_close(dx, ref.axpy(x, 2.0, y), 1e-6, "axpy_ 3-d")
    assert np.isclose(
        float(to_numpy(ops.sum_of_squares(dx))),
        float(np.sum(to_numpy(dx).astype(np.float64) ** 2)),
        rtol=1e-12,
    )


def test_axpy_aliased_x_is_y(xp):
    x, _, dx, _ = _arrays(xp, 1023, np.float64, 4)
    ops.axpy_(dx, 1.0, dx)
    assert_rel_close(dx, 2.0 * x, 0.0, "x += x")


def test_unaligned_views_take_the_scalar_path(xp):
    # Offset by one element: not 16-byte aligned, so the CUDA kernel's scalar loop runs.
    x, y, dx, dy = _arrays(xp, 4097, np.float32, 5)
    ops.axpy_(dx[1:], 0.5, dy[:-1])
    want = x.astype(np.float64)
    want[1:] = ref.axpy(x[1:], 0.5, y[:-1])
    assert_rel_close(dx, want, 1e-6, "unaligned axpy_")
    assert np.isclose(
        float(to_numpy(ops.sum_of_squares(dx[3:]))),
        ref.sum_of_squares(to_numpy(dx)[3:]),
        rtol=1e-12,
    )


def test_sum_of_squares_is_deterministic_and_path_independent():
    rng = np.random.default_rng(7)
    x = rng.standard_normal(3 * cpu_vector.PARALLEL_MIN + 17).astype(np.float32)
    a = cpu_vector._sum_of_squares_parallel(x)
    b = cpu_vector._sum_of_squares_serial(x)
    assert a == b  # same tasks in the same order: same bits, whatever the thread count
    assert all(cpu_vector._sum_of_squares_parallel(x) == a for _ in range(3))


def test_parallel_and_serial_paths_agree_elementwise():
    rng = np.random.default_rng(8)
    n = 2 * cpu_vector.PARALLEL_MIN + 5
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    x1, x2 = x.copy(), x.copy()
    cpu_vector._axpy_parallel(x1, np.float32(0.3), y)
    cpu_vector._axpy_serial(x2, np.float32(0.3), y)
    np.testing.assert_array_equal(x1, x2)
    cpu_vector._scale_parallel(x1, np.float32(-2.0))
    cpu_vector._scale_serial(x2, np.float32(-2.0))
    np.testing.assert_array_equal(x1, x2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_sum_of_squares_sees_non_finite(xp, bad):
    x = np.ones(2**18 + 5, np.float32)
    x[12345] = bad
    got = float(to_numpy(ops.sum_of_squares(xp.asarray(x))))
    assert np.isnan(got) if np.isnan(bad) else got == np.inf


# ------------------------------------------------------------------------ bad input


def _fresh(xp, n=64, dtype=np.float32):
    return xp.arange(n, dtype=dtype), xp.ones(n, dtype=dtype)


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda xp, x, y: (x, 1.0, y.astype(xp.float64)), TypeError, "y: dtype float64"),
        (lambda xp, x, y: (x, 1.0, y[:-1]), ValueError, r"y: shape \(63,\)"),
        (lambda xp, x, y: (x, 1.0, y.reshape(8, 8).T), ValueError, "y: expected a C-contig"),
        (lambda xp, x, y: (x, 1.0, [1.0] * 64), TypeError, "y: expected a numpy.ndarray"),
        (lambda xp, x, y: (x, xp.ones(1), y), TypeError, "a: expected a real scalar"),
        (lambda xp, x, y: (x, True, y), TypeError, "a: expected a real scalar"),
        (lambda xp, x, y: (x, 1.0, x[1:].copy().view(x.dtype)[:0]), ValueError, "y: shape"),
        (lambda xp, x, y: (x[:-1], 1.0, x[1:]), ValueError, "partially overlaps"),
        (
            lambda xp, x, y: (x.astype(xp.int32), 1.0, y.astype(xp.int32)),
            TypeError,
            "x: expected dtype float32 or float64, got int32",
        ),
    ],
)
def test_axpy_rejects_bad_input_and_writes_nothing(xp, make, exc, match):
    x, y = _fresh(xp)
    before = to_numpy(x).copy()
    args = make(xp, x, y)
    with pytest.raises(exc, match=match):
        ops.axpy_(*args)
    np.testing.assert_array_equal(to_numpy(x), before)


def test_read_only_output_is_rejected():
    x = np.ones(8, np.float32)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="x: the array is read-only"):
        ops.scale_(x, 2.0)
    with pytest.raises(ValueError, match="x: the array is read-only"):
        ops.axpy_(x, 2.0, np.ones(8, np.float32))


def test_sum_of_squares_rejects_non_float():
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64"):
        ops.sum_of_squares(np.ones(4, np.int64))
    with pytest.raises(TypeError, match=r"x: expected a numpy\.ndarray"):
        ops.sum_of_squares([1.0, 2.0])


# ------------------------------------------------------------------ property-based


@given(
    n=st.integers(0, 3000),
    offset=st.integers(0, 3),
    a=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_axpy_and_sum_of_squares_any_size_offset_scalar(n, offset, a, dtype, seed):
    """Random sizes, misaligned starts (offset elements into a buffer) and scalars."""
    rng = np.random.default_rng(seed)
    xb = rng.standard_normal(n + offset).astype(dtype)
    yb = rng.standard_normal(n + offset).astype(dtype)
    x, y = xb[offset:], yb[:n]
    want = ref.axpy(x, dtype(a), y)  # the scalar is rounded to the array's dtype first
    ops.axpy_(x, a, y)
    assert_rel_close(x, want, TOLERANCE["elementwise"][dtype], "axpy_")
    got = float(ops.sum_of_squares(x))
    assert got == pytest.approx(ref.sum_of_squares(x), rel=TOLERANCE["reduction"][dtype], abs=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", ODD_SIZES)
def test_scale_sum_of_squares_scales_and_sums_in_one_pass(xp, n, dtype):
    x0 = np.random.default_rng(n).standard_normal(n).astype(dtype)
    x = xp.asarray(x0.copy())
    s = ops.scale_sum_of_squares_(x, 0.5)
    want = x0 * dtype(0.5)
    np.testing.assert_array_equal(to_numpy(x), want)
    ref = float(np.dot(want.astype(np.float64), want.astype(np.float64)))
    assert float(s) == pytest.approx(ref, rel=1e-12, abs=0.0)


# ------------------------------------------------- every loop of the CUDA kernels

# With one multiprocessor the grid holds a few blocks (at most 2048 threads), so threads loop:
# 70_001 elements reach the unrolled main loop (several 16-byte packs per thread) and the
# packs left after it, 4099 only the latter; sizes below a pack (1, 3) and odd sizes reach the
# tail after the packs; one element of offset (x[1:]) the misaligned scalar path, whose
# main loop and remainder the same sizes reach.
PATH_SIZES = (0, 1, 3, 5, 4099, 70_001)


def _same_bits(got, want, what):
    got, want = to_numpy(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    u = {4: np.uint32, 8: np.uint64}[want.dtype.itemsize]
    bad = np.flatnonzero(got.view(u) != want.view(u))
    assert bad.size == 0, f"{what}: {bad.size} of {want.size} differ, first at {bad[:5]}"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", PATH_SIZES)
@pytest.mark.parametrize(("ox", "oy"), [(0, 0), (1, 1), (0, 1)], ids=["aligned", "both+1", "y+1"])
def test_cuda_loops_match_numba_bitwise(monkeypatch, n, dtype, ox, oy):
    """axpy_, scale_ and scale_sum_of_squares_ give the CPU's bits on every path (the
    buffers are one element longer than the views: the element outside stays untouched);
    the sums of squares agree within the reductions' 1e-13."""
    import cupy

    from gpugd import _cuda

    monkeypatch.setattr(_cuda, "sm_count", lambda: 1)
    rng = np.random.default_rng(n + 10 * ox + oy)
    xb = rng.standard_normal(n + 1).astype(dtype)
    yb = rng.standard_normal(n + 1).astype(dtype)
    hx, hy, dx, dy = xb.copy(), yb.copy(), cupy.asarray(xb), cupy.asarray(yb)
    ops.axpy_(hx[ox : ox + n], -0.75, hy[oy : oy + n])
    ops.axpy_(dx[ox : ox + n], -0.75, dy[oy : oy + n])
    _same_bits(dx, hx, "axpy_")
    _same_bits(dy, yb, "axpy_ must not write y")
    ops.axpy_(hx[ox : ox + n], 0.5, hx[ox : ox + n])  # y is x
    ops.axpy_(dx[ox : ox + n], 0.5, dx[ox : ox + n])
    _same_bits(dx, hx, "axpy_(x, a, x)")
    ops.scale_(hx[ox : ox + n], -3.5)
    ops.scale_(dx[ox : ox + n], -3.5)
    _same_bits(dx, hx, "scale_")
    want = ref.sum_of_squares(hx[ox : ox + n])
    got = float(to_numpy(ops.sum_of_squares(dx[ox : ox + n])))
    assert got == pytest.approx(want, rel=1e-13, abs=0)
    s_cpu = float(ops.scale_sum_of_squares_(hx[oy : oy + n], 0.25))
    s_gpu = float(to_numpy(ops.scale_sum_of_squares_(dx[oy : oy + n], 0.25)))
    _same_bits(dx, hx, "scale_sum_of_squares_")
    assert s_gpu == pytest.approx(s_cpu, rel=1e-13, abs=0)


# ------------------------------------------------- array types the kernels take (issue 20)

# Each call crashed the process before the type gate (np.matrix stays 2-D through
# reshape(-1), and the Numba loops indexed its rows out of bounds; a subclass reporting
# another array's address had that array written): run in a subprocess, each must now be
# a TypeError naming the argument, with nothing written.
_CRASHERS = textwrap.dedent(
    """
    import numpy as np
    from gpugd import ops

    class Lying(np.ndarray):
        @property
        def __array_interface__(self):
            d = dict(np.ndarray.__array_interface__.__get__(self))
            d["data"] = (victim.__array_interface__["data"][0], False)
            return d

    victim = np.full(1000, 7.0, np.float32)
    victim.flags.writeable = False
    m = np.asmatrix(np.ones((1, 1000), np.float32))
    lying = np.ones(1000, np.float32).view(Lying)
    calls = {
        "scale_(matrix)": lambda: ops.scale_(m, 2.0),
        "axpy_(matrix)": lambda: ops.axpy_(m, 2.0, np.asarray(m).copy()),
        "average_(matrix)": lambda: ops.average_(m, [np.asarray(m).copy()] * 2),
        "scale_(lying)": lambda: ops.scale_(lying, 2.0),
        "axpy_(y lying)": lambda: ops.axpy_(np.ones(1000, np.float32), 1.0, lying),
    }
    for name, call in calls.items():
        try:
            call()
            print(name, "accepted")
        except TypeError as exc:
            print(name, "TypeError", str(exc).split(":")[0])
    print("unchanged", bool((m == 1).all() and (victim == 7).all()))
    """
)


def test_subclasses_are_refused_not_crashing():
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHERS], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}{proc.stderr[-2000:]}"
    assert proc.stdout.split("\n")[:-1] == [
        "scale_(matrix) TypeError x",
        "axpy_(matrix) TypeError x",
        "average_(matrix) TypeError out",
        "scale_(lying) TypeError x",
        "axpy_(y lying) TypeError y",
        "unchanged True",
    ]


def test_memmap_and_views_of_freed_bases_are_taken(tmp_path):
    mm = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="w+", shape=(1001,))
    mm[:] = np.arange(1001, dtype=np.float32)
    ops.scale_(mm[1:], 2.0)  # a memmap view, one element in
    mm.flush()
    back = np.fromfile(tmp_path / "x.bin", np.float32)
    np.testing.assert_array_equal(back, np.r_[0.0, 2.0 * np.arange(1.0, 1001.0)])
    base = np.ones(1040, np.float32)
    view = base[16:1016]
    del base  # the view keeps its base alive
    ops.axpy_(view, 3.0, np.ones(1000, np.float32))
    np.testing.assert_array_equal(view, 4.0)


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: np.frombuffer(bytes(4004), np.float32), ValueError, "x: the array is read-only"),
        (
            lambda: np.frombuffer(bytearray(4001), np.uint8)[1:].view(np.float32),
            ValueError,
            "x: the data is not aligned",
        ),
        (lambda: np.zeros(1000, ">f4"), TypeError, "x: expected dtype float32 or float64"),
        (lambda: np.ma.masked_array(np.zeros(1000, np.float32)), TypeError, "x: expected a numpy"),
    ],
)
def test_odd_numpy_arrays_are_refused_naming_the_argument(make, exc, match):
    x = make()
    before = np.asarray(x).tobytes()
    with pytest.raises(exc, match=match):
        ops.scale_(x, 2.0)
    assert np.asarray(x).tobytes() == before
