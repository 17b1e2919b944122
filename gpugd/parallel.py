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

            dtype = {
                np.dtype(np.float32): _nccl.NCCL_FLOAT32,
                np.dtype(np.float64): _nccl.NCCL_FLOAT64,
            }[np.dtype(buf.dtype)]
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


def average_gradients(
    comm: Communicator,
    grads: Any,
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    first_bucket_bytes: int = FIRST_BUCKET_BYTES,
    predivide: bool = False,
    norm: bool = False,
) -> Averaged:
    """grads ← mean over ranks, in place, bucket by bucket over the one contiguous buffer
    (a ``FlatParams``' gradient buffer, or a contiguous array): each bucket is allreduced
    (sum) then scaled by 1/size, or scaled first with ``predivide=True`` (for half
    precision, so the sum cannot overflow). With ``norm=True`` the scaling pass also sums
    the squares (``scale_sum_of_squares_``), so the global norm that clipping needs costs
    no extra read (with ``predivide`` it takes one read pass after the allreduce)."""
    buf = grads.grad_data if isinstance(grads, FlatParams) else grads
    v.float_array("grads", buf, writable=True)
    for name, val in (("bucket_bytes", bucket_bytes), ("first_bucket_bytes", first_bucket_bytes)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name}: expected a positive integer, got {val!r}")
    from .ops import scale_, scale_sum_of_squares_, sum_of_squares

    flat = buf.reshape(-1)
    inv = 1.0 / comm.size
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


def average_(out: Any, buffers: list[Any]) -> Any:
    """out ← the mean of K local gradient buffers, in one pass (``gpugd.ops.average_``):
    a worker that splits its batch into micro-batches averages locally, then calls
    ``average_gradients`` once per step."""
    from .ops import average_ as _average

    return _average(out, buffers)


__all__ = [
    "Averaged",
    "Communicator",
    "MismatchError",
    "average_",
    "average_gradients",
    "broadcast_parameters",
    "buckets",
    "check_consistent",
    "init",
]
