"""Data-parallel training under mpiexec (the mpich wheel's hydra launcher): equivalence of
2- and 4-rank training (and of 2-rank training with local accumulation over micro-batches)
with single-process training on the whole mini-batch, a layout mismatch raising on every
rank, a failing rank ending the job in bounded time; the faults of tests/mpi/faults.py each
ending a 2-rank job with a non-zero exit and a message naming the rank and the call within
a short deadline. Plus the single-process pieces (buckets, average_, micro_batches,
DataParallel.no_sync, the deadline's settings, the wait loop and the NCCL watchdog with
stand-in requests and events)."""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import emulated

import gpugd
from gpugd import parallel

WORKER = Path(__file__).parent / "mpi" / "train_mlp.py"
FAULTS = Path(__file__).parent / "mpi" / "faults.py"
DEADLINE = 5  # seconds: GPUGD_COLLECTIVE_TIMEOUT of the fault tests
HANG = 60  # a job still running after this long is taken as hung
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


def _run_fault(mode: str, mpi4py: bool) -> tuple[int, str, float]:
    """(exit status, stderr + stdout, seconds) of the 2-rank fault worker; a job past HANG
    seconds is killed (its whole process group) and the test fails as hung."""
    cmd = [MPIEXEC, "-n", "2", sys.executable, *(["-m", "mpi4py"] if mpi4py else []), str(FAULTS)]
    env = dict(os.environ, GPUGD_COLLECTIVE_TIMEOUT=str(DEADLINE), NUMBA_NUM_THREADS="1")
    env["OMP_NUM_THREADS"] = "1"
    start = time.monotonic()
    proc = subprocess.Popen(
        [*cmd, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{mode}: the job hung (killed after {HANG} s):\n{err[-3000:]}")
    return proc.returncode, err + out, time.monotonic() - start


# mode, launcher (-m mpi4py or plain python), what the message must say
FAULT_CASES = {
    "fewer": (
        False,
        r"rank 0 of 2: MPI_Iallgather \(collective \d+, average_gradients call 6, step 5, "
        rf"consistency check\) did not complete within the {DEADLINE} s deadline",
    ),
    "exit": (
        False,
        r"rank 0 of 2: MPI_Iallgather \(collective \d+, average_gradients call 3, step 2, "
        rf"consistency check\) did not complete within the {DEADLINE} s deadline",
    ),
    "skip": (
        False,
        r"average_gradients call 3, step \d: ranks disagree on step: rank 0 has 2, rank 1 has 3",
    ),
    "raise": (
        False,
        r"rank 1 of 2: uncaught RuntimeError exception:\n(.|\n)*"
        r"RuntimeError: rank 1 fails on purpose at step 2\n"
        r"gpugd.parallel: rank 1 of 2: aborting the job",
    ),
    "raise-mpi4py": (
        True,
        r"rank 1 of 2: uncaught RuntimeError exception:\n(.|\n)*"
        r"RuntimeError: rank 1 fails on purpose at step 2\n"
        r"gpugd.parallel: rank 1 of 2: aborting the job",
    ),
    "thread": (
        False,
        r"rank 1 of 2: uncaught RuntimeError in thread 'loader':\n(.|\n)*"
        r"RuntimeError: rank 1 fails on purpose in a thread",
    ),
    "reorder": (
        False,
        r"average_gradients call 1, step 0: ranks disagree on layout \(names, shapes, offsets, "
        r"dtype\): rank 1 differs from rank 0 at tensor 0: rank 0 has \['w', \[3, 4\], 0, "
        r"'float64'\], rank 1 has \['v', \[5\], 0, 'float64'\]",
    ),
    "micro": (
        False,
        r"average_gradients call 1, step 0: ranks disagree on micro_batches: "
        r"rank 0 has 2, rank 1 has 3",
    ),
}


@mpi_only
@pytest.mark.parametrize("case", list(FAULT_CASES))
def test_each_fault_ends_the_job_within_the_deadline_naming_rank_and_call(case):
    mpi4py, expect = FAULT_CASES[case]
    code, text, elapsed = _run_fault(case.removesuffix("-mpi4py"), mpi4py)
    assert code != 0, text
    assert re.search(expect, text), text
    waits = "did not complete" in expect  # only these need the deadline itself
    assert ("did not complete" in text) == waits, text
    assert elapsed < (DEADLINE if waits else 0) + 20, f"{case}: ended after {elapsed:.1f} s"
    if waits:  # the stall warning came first, at half the deadline
        assert re.search(rf"still waiting after 2.\d s \(deadline {DEADLINE} s\)", text), text


@mpi_only
def test_the_fault_worker_runs_clean_without_a_fault():
    code, text, _ = _run_fault("ok", mpi4py=False)
    assert code == 0, text
    assert "rank 0: ok: done" in text and "rank 1: ok: done" in text


def test_the_deadline_defaults_to_120_s_and_is_configurable(monkeypatch):
    monkeypatch.delenv("GPUGD_COLLECTIVE_TIMEOUT", raising=False)
    assert parallel.collective_timeout() == parallel.DEFAULT_TIMEOUT == 120.0
    assert parallel.collective_timeout(7) == 7.0
    assert parallel.collective_timeout(math.inf) == math.inf
    for text, want in (("30", 30.0), (" 0.5 ", 0.5), ("off", math.inf), ("INF", math.inf)):
        monkeypatch.setenv("GPUGD_COLLECTIVE_TIMEOUT", text)
        assert parallel.collective_timeout() == want
    assert parallel.collective_timeout(3) == 3.0  # the argument wins
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv("GPUGD_COLLECTIVE_TIMEOUT", bad)
        with pytest.raises(ValueError, match="GPUGD_COLLECTIVE_TIMEOUT: expected a positive"):
            parallel.collective_timeout()
    for bad in (0, -2.0, True, "5", math.nan):
        with pytest.raises(ValueError, match="timeout: expected a positive number"):
            parallel.collective_timeout(bad)


class _NeverDone:
    """A stand-in MPI request that never completes (and counts its polls)."""

    polls = 0

    def Test(self):
        self.polls += 1
        return False


def test_a_collective_that_never_completes_warns_then_aborts(comm, capfd):
    comm.timeout, comm.context = 0.2, "average_gradients call 4, step 3, bucket 1 of 2"
    codes = []
    comm._abort = codes.append  # instead of MPI_Abort
    req = _NeverDone()
    start = time.monotonic()
    comm._start("MPI_Iallreduce", lambda: req)
    elapsed = time.monotonic() - start
    assert codes == [parallel.TIMEOUT_EXIT] and 0.2 <= elapsed < 2 and req.polls > 10
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 2, err  # one warning at half the deadline, one verdict
    label = (
        f"MPI_Iallreduce (collective {comm.collectives}, average_gradients call 4, step 3, "
        "bucket 1 of 2)"
    )
    assert err[0].startswith(f"gpugd.parallel: rank 0 of 1: {label} still waiting after 0.1")
    assert err[1].startswith(f"gpugd.parallel: rank 0 of 1: {label} did not complete within ")
    assert "the 0.2 s deadline" in err[1] and "GPUGD_COLLECTIVE_TIMEOUT" in err[1]


def test_real_collectives_count_and_pass_on_one_rank(comm):
    n = comm.collectives
    comm.barrier()
    g = np.arange(4.0)
    comm.allreduce_(g)
    comm.broadcast_(g)
    assert comm._bcast_object({"uid": b"x" * 200}) == {"uid": b"x" * 200}
    assert comm._allgather_bytes(b"abc") == [b"abc"]
    np.testing.assert_array_equal(g, np.arange(4.0))
    assert comm.collectives == n + 3 + 2 + 2


def test_a_one_rank_job_installs_no_abort_hooks(comm):
    # nobody waits on a lone rank: its exceptions stay ordinary (this pytest process too)
    assert comm.size == 1 and "sys" not in parallel._hooked


class _Event:
    def __init__(self, done):
        self.done = done


@pytest.mark.parametrize("async_error", [False, True])
def test_the_nccl_watchdog_fires_once_on_a_stuck_event(async_error):
    fired = []

    def broken():
        raise RuntimeError("NCCL error: unhandled system error")

    # a stand-in for cupy's NcclCommunicator (check_async_error raises on an async error)
    nccl = types.SimpleNamespace(check_async_error=broken) if async_error else None
    dog = parallel._Watchdog(0.3, lambda what, waited: fired.append((what, waited)), nccl)
    dog.watch(_Event(True), "ncclAllReduce (collective 1)")
    dog.watch(_Event(False), "ncclAllReduce (collective 2)")
    start = time.monotonic()
    while not fired and time.monotonic() - start < 5:
        time.sleep(0.01)
    time.sleep(0.1)  # no second verdict
    assert len(fired) == 1, fired
    what, waited = fired[0]
    if async_error:
        assert "asynchronous error" in what and "unhandled system error" in what
    else:
        assert what == "ncclAllReduce (collective 2)" and 0.3 < waited < 2


def test_the_nccl_watchdog_stays_quiet_while_events_complete():
    fired = []
    dog = parallel._Watchdog(0.2, lambda *a: fired.append(a))
    ev = _Event(False)
    dog.watch(ev, "ncclBcast")
    time.sleep(0.05)
    ev.done = True
    time.sleep(0.4)
    assert fired == [] and not dog._pending


@pytest.mark.parametrize("bad", [-1, True, 2.0, "3"])
def test_step_must_be_a_non_negative_integer(comm, bad):
    g = np.ones(4)
    calls = comm.calls
    with pytest.raises(ValueError, match="step: expected None or an integer >= 0"):
        parallel.average_gradients(comm, g, step=bad)
    assert comm.calls == calls  # rejected before counting or communicating
    np.testing.assert_array_equal(g, 1.0)


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


def test_a_subclass_never_reaches_the_collective():
    """The array type gate runs before the allreduce (a subclass used to pass float_array
    and be refused only by scale_, after the allreduce had written)."""

    class Sub(np.ndarray):
        pass

    comm = parallel.init()
    a = np.ones(8, np.float32).view(Sub)
    with pytest.raises(TypeError, match=r"grads: expected a numpy\.ndarray, got its subclass"):
        parallel.average_gradients(comm, a)
    with pytest.raises(TypeError, match=r"grads: expected a numpy\.ndarray, got its subclass"):
        parallel.DataParallel(comm, a)
    assert (np.asarray(a) == 1).all()


def test_abort_prints_the_rank_and_calls_the_abort_path(capsys):
    comm = parallel.init()
    codes = []
    comm._abort = codes.append  # the stand-in for MPI_Abort (tests)
    comm.abort("bad configuration", 2)
    assert codes == [2]
    assert (
        "rank 0 of 1: bad configuration; aborting the job (MPI_Abort 2)" in capsys.readouterr().err
    )
    with pytest.raises(ValueError, match="code"):
        comm.abort("x", 0)
