"""Data-parallel gradient averaging over MPI (mpi4py) and, for CuPy arrays, NCCL.

Launch with ``mpiexec -n R python -m mpi4py train.py`` (``-m mpi4py`` makes an uncaught
exception on any rank abort the whole job instead of leaving the others waiting)::

    comm = gpugd.parallel.init()                    # MPI; NCCL too when asked for CuPy
    gpugd.parallel.check_consistent(comm, flat)     # same names/shapes/dtypes everywhere
    gpugd.parallel.broadcast_parameters(comm, flat, optimizer=opt)   # rank 0's start
    for batch in shard_of_each_minibatch:
        ... backward into flat.grads ...
        gpugd.parallel.average_gradients(comm, flat)   # in place, bucketed, no copies
        opt.step(); opt.zero_grad()

Every rank then holds the gradient of the whole mini-batch (the mean of the ranks' shard
means: equal shards give exactly the full-batch mean) and takes the same step.

Gradient accumulation (a shard too big for one backward): split it into K micro-batches,
ADD each micro-batch's mean gradient into ``flat.grads`` inside ``no_sync()`` (nothing
is communicated there), then average once per step; the division by K·size is the same
single scaling pass::

    dp = gpugd.parallel.DataParallel(comm, flat)
    for batch in shard_of_each_minibatch:
        for micro in split(batch, K):
            with dp.no_sync():                      # counts the micro-batch
                ... backward of micro, added into flat.grads ...
        avg = dp.average(norm=True)                 # Σ/(K·size): one allreduce per bucket
        opt.step(); opt.zero_grad()

Timeouts: MPI collectives have none — a rank that stops calling them leaves the others
waiting forever. Hence ``python -m mpi4py`` (an uncaught exception calls MPI_Abort, and
mpiexec then ends every rank) and the start-up consistency check (a layout mismatch
raises on every rank instead of deadlocking in a mismatched allreduce). NCCL collectives
wait on the GPU stream without a timeout too; the job-level answer is the same: let the
launcher kill the job when a rank dies (mpiexec does; with Slurm, ``srun
--kill-on-bad-exit=1``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from . import _validate as v
from .flat import FlatParams

DEFAULT_BUCKET_BYTES = 25 * 2**20  # as torch DDP's bucket_cap_mb
FIRST_BUCKET_BYTES = 1 * 2**20  # a small first bucket starts communication early


class MismatchError(RuntimeError):
    """Ranks disagree on the model layout; raised on every rank."""


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "gpugd.parallel needs mpi4py and an MPI library: pip install 'gpugd[mpi]' "
            f"(mpi4py and mpich) ({exc})"
        ) from None
    return MPI


class Communicator:
    """One process group: ``rank``, ``size``, ``barrier()``, in-place ``allreduce_`` (sum)
    and ``broadcast_``. NumPy arrays go through MPI; CuPy arrays through NCCL when the
    communicator has it, else through MPI directly if the MPI library is CUDA-aware, else
    staged through host buffers (the stream is synchronized before every MPI call)."""

    def __init__(self, mpi_comm: Any = None, nccl: bool = False):
        MPI = _mpi()
        self.mpi = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.mpi.Get_rank(), self.mpi.Get_size()
        self.cuda_aware = _cuda_aware(MPI)
        self.nccl = None
        if nccl:
            from cupy.cuda import nccl as _nccl

            uid = _nccl.get_unique_id() if self.rank == 0 else None
            uid = self.mpi.bcast(uid, root=0)
            self.nccl = _nccl.NcclCommunicator(self.size, uid, self.rank)

    @property
    def backend(self) -> str:
        return "nccl" if self.nccl is not None else "mpi"

    def barrier(self) -> None:
        self.mpi.Barrier()

    def allreduce_(self, buf: Any) -> Any:
        """buf ← Σ over ranks of buf, in place (one contiguous array)."""
        if isinstance(buf, np.ndarray):
            self.mpi.Allreduce(_mpi().IN_PLACE, buf, op=_mpi().SUM)
            return buf
        return self._cuda_collective(buf, "allreduce")

    def broadcast_(self, buf: Any, root: int = 0) -> Any:
        """buf ← root's buf, in place."""
        if isinstance(buf, np.ndarray):
            self.mpi.Bcast(buf, root=root)
            return buf
        return self._cuda_collective(buf, "bcast", root)

    def _cuda_collective(self, buf: Any, op: str, root: int = 0) -> Any:
        import cupy

        if self.nccl is not None:
            from cupy.cuda import nccl as _nccl

            dtype = nccl_dtype(buf.dtype, _nccl)
            stream = cupy.cuda.get_current_stream().ptr
            if op == "allreduce":
                self.nccl.allReduce(
                    buf.data.ptr, buf.data.ptr, buf.size, dtype, _nccl.NCCL_SUM, stream
                )
            else:
                self.nccl.bcast(buf.data.ptr, buf.size, dtype, root, stream)
            return buf
        cupy.cuda.get_current_stream().synchronize()  # MPI must see finished data
        if self.cuda_aware:
            MPI = _mpi()
            if op == "allreduce":
                self.mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            else:
                self.mpi.Bcast(buf, root=root)
            return buf
        host = cupy.asnumpy(buf)  # staged through host memory
        self.allreduce_(host) if op == "allreduce" else self.broadcast_(host, root)
        buf.set(host)
        return buf


_NCCL_TYPES = {
    "float64": "NCCL_FLOAT64",
    "float32": "NCCL_FLOAT32",
    "float16": "NCCL_FLOAT16",
    "bfloat16": "NCCL_BFLOAT16",
}


def nccl_dtype(dtype: Any, nccl: Any) -> int:
    """NCCL's data type constant for ``dtype`` (float64/32/16, bfloat16) from the ``nccl``
    module (``cupy.cuda.nccl``); a clear error, before any collective, for others or for a
    bfloat16 the NCCL build lacks (NCCL < 2.10)."""
    name = np.dtype(dtype).name
    if name not in _NCCL_TYPES:
        raise TypeError(f"buf: NCCL collectives take {', '.join(_NCCL_TYPES)} arrays, got {name}")
    value = getattr(nccl, _NCCL_TYPES[name], None)
    if value is None:
        raise TypeError(f"buf: this NCCL (cupy.cuda.nccl) has no {_NCCL_TYPES[name]}")
    return int(value)


def _cuda_aware(MPI: Any) -> bool:
    """Whether the MPI library takes device pointers (MPIX_Query_cuda_support); the PyPI
    mpich does not."""
    query = getattr(MPI, "Query_cuda_support", None)
    try:
        return bool(query()) if query is not None else False
    except Exception:
        return False


def init(nccl: bool = False, mpi_comm: Any = None) -> Communicator:
    """The process group of this MPI job (``nccl=True``: also an NCCL communicator for
    CuPy buffers, its unique id broadcast over MPI)."""
    return Communicator(mpi_comm, nccl=nccl)


# ---- start-up consistency -----------------------------------------------------------------


def _layout(flat: FlatParams) -> list[list[Any]]:
    return [[n, list(s), str(flat.dtype)] for n, s in flat.shapes().items()]


def check_consistent(comm: Communicator, flat: FlatParams) -> None:
    """Every rank has the same names, shapes, dtype and size; otherwise raise
    ``MismatchError`` on every rank, naming the first differing tensor (no hang: the
    check is one allgather of a fingerprint, then one of the layouts if they differ)."""
    desc = json.dumps(_layout(flat))
    digest = hashlib.sha256(desc.encode()).hexdigest()
    digests = comm.mpi.allgather(digest)
    if len(set(digests)) == 1:
        return
    layouts = comm.mpi.allgather(_layout(flat))
    ref = layouts[0]
    for r, lay in enumerate(layouts):
        if lay == ref:
            continue
        for k in range(max(len(ref), len(lay))):
            a = ref[k] if k < len(ref) else None
            b = lay[k] if k < len(lay) else None
            if a != b:
                raise MismatchError(
                    f"rank {r} differs from rank 0 at tensor {k}: rank 0 has {a}, rank {r} has {b}"
                )
    raise MismatchError("ranks disagree on the parameter layout")


def broadcast_parameters(
    comm: Communicator, flat: FlatParams, root: int = 0, optimizer: Any = None
) -> None:
    """Every rank starts from ``root``'s parameters (and optimizer state when given):
    one broadcast of the arena's buffer, and one per state buffer."""
    check_consistent(comm, flat)
    comm.broadcast_(flat.data, root)
    if optimizer is not None:
        for buf in optimizer._buffers.values():
            comm.broadcast_(buf.data, root)


# ---- averaging ----------------------------------------------------------------------------


def buckets(n: int, itemsize: int, bucket_bytes: int, first_bytes: int) -> list[tuple[int, int]]:
    """[lo, hi) element ranges: a small first bucket, then ``bucket_bytes`` each."""
    out, lo = [], 0
    size = max(1, first_bytes // itemsize)
    while lo < n:
        hi = min(n, lo + size)
        out.append((lo, hi))
        lo, size = hi, max(1, bucket_bytes // itemsize)
    return out


class Averaged(NamedTuple):
    """What ``average_gradients`` did: the averaged buffer, and with ``norm=True`` the
    global L2 norm of the averaged gradients (float; NaN/Inf when any element is not
    finite: the non-finite flag is ``not math.isfinite(norm)``)."""

    grads: Any
    norm: float | None


def _positive_int(name: str, val: Any) -> int:
    if isinstance(val, bool) or not isinstance(val, int) or val < 1:
        raise ValueError(f"{name}: expected a positive integer, got {val!r}")
    return val


def average_gradients(
    comm: Communicator,
    grads: Any,
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    first_bucket_bytes: int = FIRST_BUCKET_BYTES,
    predivide: bool = False,
    norm: bool = False,
    micro_batches: int = 1,
) -> Averaged:
    """grads ← mean over ranks, in place, bucket by bucket over the one contiguous buffer
    (a ``FlatParams``' gradient buffer, or a contiguous array): each bucket is allreduced
    (sum) then scaled by 1/size, or scaled first with ``predivide=True`` (for half
    precision, so the sum cannot overflow). With ``norm=True`` the scaling pass also sums
    the squares (``scale_sum_of_squares_``), so the global norm that clipping needs costs
    no extra read (with ``predivide`` it takes one read pass after the allreduce).

    ``micro_batches=K`` (an integer ≥ 1) is for local gradient accumulation: each rank's
    buffer holds the sum of K micro-batch mean gradients, and the result is the mean of
    all K·size micro-batch means, ``grads ← (1/(K·size)) · Σ_ranks grads``. The factor
    1/(K·size) is applied in the same single scaling pass (before the sum with
    ``predivide``), so accumulation costs no extra pass over the buffer."""
    buf = grads.grad_data if isinstance(grads, FlatParams) else grads
    v.float_array("grads", buf, writable=True)
    _positive_int("bucket_bytes", bucket_bytes)
    _positive_int("first_bucket_bytes", first_bucket_bytes)
    _positive_int("micro_batches", micro_batches)
    from .ops import scale_, scale_sum_of_squares_, sum_of_squares

    flat = buf.reshape(-1)
    inv = 1.0 / (micro_batches * comm.size)
    ssq = 0.0
    for lo, hi in buckets(flat.size, flat.dtype.itemsize, bucket_bytes, first_bucket_bytes):
        part = flat[lo:hi]
        if predivide:
            scale_(part, inv)
        comm.allreduce_(part)
        if not predivide:
            if norm:
                ssq += float(scale_sum_of_squares_(part, inv))
            else:
                scale_(part, inv)
        elif norm:
            ssq += float(sum_of_squares(part))
    return Averaged(buf, math.sqrt(ssq) if norm else None)


class DataParallel:
    """Gradient averaging with local accumulation over micro-batches (``no_sync`` style),
    explicit rather than hooked into a backward pass::

        dp = DataParallel(comm, flat)
        for micro in micro_batches_of_this_ranks_shard:      # K of them
            with dp.no_sync():
                ...  # ADD this micro-batch's mean gradient into flat.grads
        avg = dp.average(norm=True)        # grads ← Σ_ranks grads / (K·size), in place
        opt.step(); opt.zero_grad()        # accumulation needs zeroed grads each step

    ``no_sync()`` communicates nothing: it counts the micro-batches (outermost entries;
    a nested ``no_sync`` belongs to the enclosing micro-batch and is not counted again)
    and forbids ``average()`` inside it — averaging mid-accumulation would communicate
    and divide a partial sum, and with ranks at different points could deadlock.
    ``average()`` is ``average_gradients`` with this object's bucket settings and
    ``micro_batches`` = the count since the last ``average()`` (at least 1: a step
    without ``no_sync`` is one micro-batch), or the value passed; it resets the count.
    Put every micro-batch of a step inside ``no_sync`` (unlike torch's DDP, the last one
    too), or pass ``micro_batches`` explicitly. Equal micro-batches give exactly the
    mean over the whole mini-batch; for unequal ones, scale each micro-batch's gradient
    by K·len(micro)/len(shard) so that the average stays the full-batch mean."""

    def __init__(
        self,
        comm: Communicator,
        grads: Any,
        *,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        first_bucket_bytes: int = FIRST_BUCKET_BYTES,
        predivide: bool = False,
    ):
        buf = grads.grad_data if isinstance(grads, FlatParams) else grads
        v.float_array("grads", buf, writable=True)
        self.comm, self.grads = comm, grads
        self.bucket_bytes = _positive_int("bucket_bytes", bucket_bytes)
        self.first_bucket_bytes = _positive_int("first_bucket_bytes", first_bucket_bytes)
        self.predivide = bool(predivide)
        self._depth = 0  # open no_sync contexts
        self._count = 0  # micro-batches entered since the last average()

    @property
    def micro_batches(self) -> int:
        """Micro-batches (outermost ``no_sync`` entries) since the last ``average()``."""
        return self._count

    @property
    def in_no_sync(self) -> bool:
        """Whether a ``no_sync()`` context is open."""
        return self._depth > 0

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """A context for one micro-batch's backward: no communication, gradients keep
        adding up in the buffer; the outermost entry counts one micro-batch."""
        if self._depth == 0:
            self._count += 1
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def average(self, micro_batches: int | None = None, *, norm: bool = False) -> Averaged:
        """grads ← (1/(K·size)) · Σ_ranks grads in place, K = ``micro_batches`` or the
        count of ``no_sync`` micro-batches since the last call (at least 1): one bucketed
        allreduce and one scaling pass (``average_gradients``). Raises RuntimeError
        inside ``no_sync()``; resets the count."""
        if self._depth:
            raise RuntimeError(
                "DataParallel.average() called inside no_sync(): averaging communicates; "
                "finish the micro-batches, leave no_sync(), then average once per step"
            )
        k = max(1, self._count) if micro_batches is None else micro_batches
        out = average_gradients(
            self.comm,
            self.grads,
            bucket_bytes=self.bucket_bytes,
            first_bucket_bytes=self.first_bucket_bytes,
            predivide=self.predivide,
            norm=norm,
            micro_batches=k,
        )
        self._count = 0
        return out


def average_(out: Any, buffers: list[Any]) -> Any:
    """out ← the mean of K local gradient buffers, in one pass (``gpugd.ops.average_``):
    a worker that keeps its micro-batches' gradients in separate buffers averages them
    locally, then calls ``average_gradients`` once per step (``DataParallel.no_sync``
    accumulates in place instead, with no extra buffers)."""
    from .ops import average_ as _average

    return _average(out, buffers)


__all__ = [
    "Averaged",
    "Communicator",
    "DataParallel",
    "MismatchError",
    "average_",
    "average_gradients",
    "broadcast_parameters",
    "buckets",
    "check_consistent",
    "init",
]
