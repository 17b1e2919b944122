"""Data-parallel training under mpiexec (the mpich wheel's hydra launcher): equivalence of
2- and 4-rank training (and of 2-rank training with local accumulation over micro-batches)
with single-process training on the whole mini-batch, a layout mismatch raising on every
rank, a failing rank ending the job in bounded time. Plus the single-process pieces
(buckets, average_, micro_batches and DataParallel.no_sync on one rank)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import emulated

import gpugd
from gpugd import parallel

WORKER = Path(__file__).parent / "mpi" / "train_mlp.py"
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
mpi_only = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: pip install 'gpugd[mpi]'")


def _launch(ranks: int, mode: str, out: Path, dtype: str, timeout: float = 120, extra=()):
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(WORKER), mode]
    cmd += [str(out), dtype, *extra]
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@mpi_only
@pytest.mark.parametrize(("dtype", "rtol"), [("float64", 1e-12), ("float32", 1e-5)])
def test_two_and_four_ranks_match_single_process_training(tmp_path, dtype, rtol):
    # float64: the only difference is the order of the sums (shard means averaged vs one
    # mean), ~1e-16 per step over 20 steps. float32: the same reordering at fp32 rounding
    # (~6e-8 per operation), amplified by momentum over 20 steps: 1e-5 holds with margin.
    results = {}
    for ranks in (1, 2, 4):
        out = tmp_path / f"p{ranks}.npy"
        r = _launch(ranks, "train", out, dtype)
        assert r.returncode == 0, r.stdout + r.stderr
        results[ranks] = np.load(out)
    for ranks in (2, 4):
        np.testing.assert_allclose(results[ranks], results[1], rtol=rtol, atol=rtol * 1e-2)
    assert not np.array_equal(results[1], np.zeros_like(results[1]))


@mpi_only
@pytest.mark.parametrize(("dtype", "rtol"), [("float64", 1e-12), ("float32", 1e-5)])
def test_two_ranks_accumulating_micro_batches_match_single_process_training(tmp_path, dtype, rtol):
    # each rank splits its shard of 24 rows into K micro-batches, adds their mean gradients
    # inside no_sync and averages once per step (÷ K·2 in the one scaling pass): the mean
    # of equal micro-batch means is the full-batch mean, up to the order of the sums
    ref = tmp_path / "ref.npy"
    r = _launch(1, "train", ref, dtype)
    assert r.returncode == 0, r.stdout + r.stderr
    for k, divide in ((2, "postdivide"), (3, "predivide")):
        out = tmp_path / f"accum{k}.npy"
        r = _launch(2, "accum", out, dtype, extra=(str(k), divide))
        assert r.returncode == 0, r.stdout + r.stderr
        np.testing.assert_allclose(np.load(out), np.load(ref), rtol=rtol, atol=rtol * 1e-2)


@mpi_only
def test_layout_mismatch_raises_on_every_rank(tmp_path):
    r = _launch(2, "mismatch", tmp_path / "x.npy", "float64", timeout=60)
    assert r.returncode != 0
    assert "MismatchError" in r.stderr and "rank 1 differs from rank 0 at tensor 2" in r.stderr


@mpi_only
def test_a_failing_rank_ends_the_job_in_bounded_time(tmp_path):
    start = time.monotonic()
    r = _launch(2, "fault", tmp_path / "x.npy", "float64", timeout=90)
    elapsed = time.monotonic() - start
    assert r.returncode != 0
    assert "rank 1 fails on purpose" in r.stderr
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end"


def test_buckets_cover_the_buffer_with_a_small_first_one():
    b = parallel.buckets(1000, 4, bucket_bytes=1000, first_bytes=100)
    assert b[0] == (0, 25) and b[1] == (25, 275) and b[-1][1] == 1000
    assert all(hi == lo2 for (_, hi), (lo2, _) in itertools.pairwise(b))


def test_average_of_local_buffers():
    rng = np.random.default_rng(0)
    bufs = [rng.standard_normal(11) for _ in range(3)]
    out = np.empty(11)
    parallel.average_(out, bufs)
    np.testing.assert_allclose(out, sum(bufs) / 3, rtol=1e-15)
    with pytest.raises(ValueError, match="buffers: expected a non-empty list"):
        parallel.average_(out, [])
    with pytest.raises(ValueError, match=r"buffers\[1\]: shape"):
        parallel.average_(out, [bufs[0], np.zeros(3)])


@mpi_only
def test_single_rank_communicator_is_the_identity():
    comm = parallel.init()
    g = np.arange(10.0)
    res = parallel.average_gradients(comm, g, bucket_bytes=16, first_bucket_bytes=8, norm=True)
    np.testing.assert_array_equal(g, np.arange(10.0))
    assert res.grads is g and res.norm == pytest.approx(np.linalg.norm(np.arange(10.0)))
    g[3] = np.nan
    assert np.isnan(parallel.average_gradients(comm, g, norm=True).norm)
    assert comm.size == 1 and comm.backend == "mpi" and comm.cuda_aware is False


@mpi_only
@pytest.mark.cuda
@pytest.mark.parametrize(
    "nccl",
    [  # NCCL, and host staging (the PyPI mpich)
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                emulated(), reason="NCCL is not emulated: the CuPy stand-in has no cupy.cuda.nccl"
            ),
        ),
        False,
    ],
)
def test_cuda_buffers_single_rank(nccl):
    import cupy

    comm = parallel.init(nccl=nccl)
    assert comm.backend == ("nccl" if nccl else "mpi")
    g = cupy.arange(1000, dtype=cupy.float32)
    res = parallel.average_gradients(comm, g, bucket_bytes=1024, first_bucket_bytes=256, norm=True)
    np.testing.assert_array_equal(g.get(), np.arange(1000, dtype=np.float32))
    assert res.norm == pytest.approx(float(np.linalg.norm(np.arange(1000.0))), rel=1e-6)
    b = cupy.full(5, 3.0)
    comm.broadcast_(b)
    assert (b.get() == 3.0).all()


@pytest.fixture
def comm():
    if MPIEXEC is None:
        pytest.skip("no mpiexec: pip install 'gpugd[mpi]'")
    return parallel.init()  # a one-rank job (MPI singleton) in plain pytest


@pytest.mark.parametrize("bad", [0, -2, True, 2.0, "2", None])
def test_micro_batches_must_be_a_positive_integer(comm, bad):
    g = np.ones(8)
    with pytest.raises(ValueError, match="micro_batches: expected a positive integer"):
        parallel.average_gradients(comm, g, micro_batches=bad)
    dp = parallel.DataParallel(comm, g)
    if bad is not None:  # None means "the no_sync count" for DataParallel.average
        with pytest.raises(ValueError, match="micro_batches: expected a positive integer"):
            dp.average(micro_batches=bad)
    np.testing.assert_array_equal(g, 1.0)  # rejected before any scaling
    with pytest.raises(ValueError, match="bucket_bytes: expected a positive integer"):
        parallel.DataParallel(comm, g, bucket_bytes=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("predivide", [False, True])
def test_average_over_k_micro_batches_divides_by_k_on_one_rank(comm, dtype, predivide):
    rng = np.random.default_rng(1)
    g0 = rng.standard_normal(1024).astype(dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-15
    expect = g0.astype(np.float64) / 3
    g = g0.copy()
    kw = dict(bucket_bytes=512, first_bucket_bytes=64, predivide=predivide)
    res = parallel.average_gradients(comm, g, **kw, norm=True, micro_batches=3)
    assert res.grads is g and g.dtype == dtype
    np.testing.assert_allclose(g, expect, rtol=rtol)
    assert res.norm == pytest.approx(np.linalg.norm(expect), rel=rtol * 10)
    # the same through DataParallel, with K given explicitly and from the no_sync count
    flat = gpugd.FlatParams({"w": (16, 32), "b": (512,)}, dtype)  # no padding
    for how in ("explicit", "count"):
        flat.grad_data[...] = g0
        dp = parallel.DataParallel(comm, flat, **kw)
        if how == "explicit":
            res = dp.average(micro_batches=3, norm=True)
        else:
            for _ in range(3):
                with dp.no_sync():
                    pass
            res = dp.average(norm=True)
        assert res.grads is flat.grad_data
        np.testing.assert_allclose(flat.grad_data, expect, rtol=rtol)
        assert res.norm == pytest.approx(np.linalg.norm(expect), rel=rtol * 10)
        assert dp.average().norm is None  # norm off; K back to 1 after the reset
        np.testing.assert_allclose(flat.grad_data, expect, rtol=rtol)


def test_no_sync_counts_micro_batches_and_forbids_averaging_inside(comm):
    g = np.full(16, 6.0)
    dp = parallel.DataParallel(comm, g)
    assert dp.micro_batches == 0 and not dp.in_no_sync
    for k in range(1, 4):
        with dp.no_sync():
            assert dp.in_no_sync and dp.micro_batches == k
            with dp.no_sync():  # nested: the same micro-batch, not counted again
                assert dp.micro_batches == k
                with pytest.raises(RuntimeError, match=r"average\(\) called inside no_sync"):
                    dp.average()
            with pytest.raises(RuntimeError, match="inside no_sync"):
                dp.average(micro_batches=1, norm=True)
        assert not dp.in_no_sync
    np.testing.assert_array_equal(g, 6.0)  # the guard ran before any communication
    assert dp.micro_batches == 3
    assert dp.average(norm=True).norm == pytest.approx(np.linalg.norm(np.full(16, 2.0)))
    np.testing.assert_array_equal(g, 2.0)
    assert dp.micro_batches == 0
    # an exception inside no_sync closes it (the count stays: the micro-batch was entered)
    with pytest.raises(KeyError), dp.no_sync():
        raise KeyError("backward failed")
    assert not dp.in_no_sync and dp.micro_batches == 1
    dp.average()
    np.testing.assert_array_equal(g, 2.0)  # K = 1
    dp.average()  # no no_sync at all: K = 1, not 0
    np.testing.assert_array_equal(g, 2.0)


def test_nccl_takes_half_precision_gradients():
    """NCCL's own type constants (cupy_backends/cuda/libs/nccl.pxd) for every float gpugd
    averages, half precision included; anything else, or a bfloat16 the NCCL lacks, is a
    TypeError naming the buffer, raised before a collective starts."""
    import types

    import ml_dtypes

    nccl = types.SimpleNamespace(NCCL_FLOAT16=6, NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_BFLOAT16=9)
    assert parallel.nccl_dtype(np.float64, nccl) == 8
    assert parallel.nccl_dtype(np.float32, nccl) == 7
    assert parallel.nccl_dtype(np.float16, nccl) == 6
    assert parallel.nccl_dtype(ml_dtypes.bfloat16, nccl) == 9
    with pytest.raises(TypeError, match=r"buf: NCCL collectives take .* got int32"):
        parallel.nccl_dtype(np.int32, nccl)
    old = types.SimpleNamespace(NCCL_FLOAT16=6, NCCL_FLOAT32=7, NCCL_FLOAT64=8)
    with pytest.raises(TypeError, match="no NCCL_BFLOAT16"):
        parallel.nccl_dtype(ml_dtypes.bfloat16, old)
    try:
        from cupy.cuda import nccl as real
    except ImportError:
        return  # no NCCL here: the constants above are CuPy's, checked where it exists
    assert parallel.nccl_dtype(np.float16, real) == int(real.NCCL_FLOAT16)
