"""Data-parallel gradient averaging over MPI (mpi4py) and, for CuPy arrays, NCCL.

Launch with ``mpiexec -n R python train.py`` (or ``python -m mpi4py``; either way an
uncaught exception on any rank aborts the whole job: see Deadlines below)::

    comm = gpugd.parallel.init()                    # MPI; NCCL too when asked for CuPy
    gpugd.parallel.check_consistent(comm, flat)     # same names/shapes/dtypes everywhere
    gpugd.parallel.broadcast_parameters(comm, flat, optimizer=opt)   # rank 0's start
    for t, batch in enumerate(shard_of_each_minibatch):
        ... backward into flat.grads ...
        gpugd.parallel.average_gradients(comm, flat, step=t)   # in place, bucketed
        opt.step(); opt.zero_grad()

Every rank then holds the gradient of the whole mini-batch (the mean of the ranks' shard
means: equal shards give exactly the full-batch mean) and takes the same step.

Gradient accumulation (a shard too big for one backward): split it into K micro-batches,
ADD each micro-batch's mean gradient into ``flat.grads`` inside ``no_sync()`` (nothing
is communicated there), then average once per step; the division by K·size is the same
single scaling pass::

    dp = gpugd.parallel.DataParallel(comm, flat)
    for t, batch in enumerate(shard_of_each_minibatch):
        for micro in split(batch, K):
            with dp.no_sync():                      # counts the micro-batch
                ... backward of micro, added into flat.grads ...
        avg = dp.average(norm=True, step=t)         # Σ/(K·size): one allreduce per bucket
        opt.step(); opt.zero_grad()

Deadlines (no silent hang): every collective a ``Communicator`` makes has one —
``timeout`` seconds (``init(timeout=...)``, else the environment variable
``GPUGD_COLLECTIVE_TIMEOUT``, else 120 s; ``inf`` or ``off`` turns it off). MPI
collectives are started non-blocking and polled; at half the deadline a warning names the
rank and the call, at the deadline one message names the rank, the collective, its
sequence number, the ``average_gradients`` call and step, and the job is ended with
``MPI_Abort``. On the GPU an NCCL collective returns at once and the stream waits: a
watchdog thread queries an event recorded after it and, past the deadline, aborts the
NCCL communicator and the job (``_Watchdog``). Every ``average_gradients`` call first
compares, in one allgather of a few integers, the collective sequence number, the call
number, the ``step`` (when given), ``micro_batches``, the bucket settings and the layout
(names, shapes, offsets and order, dtype): ranks that disagree raise ``MismatchError`` on
every rank, naming the differing ranks and field, instead of averaging unlike buffers.
``init()`` in a job of more than one rank installs an exception hook (``sys.excepthook``
and ``threading.excepthook``, each chaining the previous one): an uncaught exception on
any rank prints its traceback with the rank and aborts the whole job, whether it was
started with ``python -m mpi4py`` or plain ``python``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from . import _validate as v
from .flat import FlatParams

DEFAULT_BUCKET_BYTES = 25 * 2**20  # as torch DDP's bucket_cap_mb
FIRST_BUCKET_BYTES = 1 * 2**20  # a small first bucket starts communication early
DEFAULT_TIMEOUT = 120.0  # seconds; Horovod warns of a stall at 60 s, half of this
TIMEOUT_ENV = "GPUGD_COLLECTIVE_TIMEOUT"
TIMEOUT_EXIT = 124  # the MPI_Abort code of a missed deadline (timeout(1)'s status)
EXCEPTION_EXIT = 1  # the MPI_Abort code of an uncaught exception (as python -m mpi4py)
ABORT_GRACE = 1.0  # seconds between the last message and MPI_Abort: the launcher forwards
# the ranks' output through pipes, and an abort tears them down (hydra lost the messages
# without this pause, when mpiexec's own output was a pipe)


class MismatchError(RuntimeError):
    """Ranks disagree on the layout, call sequence, step or accumulation settings; raised
    on every rank."""


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "gpugd.parallel needs mpi4py and an MPI library: pip install 'gpugd[mpi]' "
            f"(mpi4py and mpich) ({exc})"
        ) from None
    return MPI


def collective_timeout(timeout: float | None = None) -> float:
    """The deadline in seconds: ``timeout`` when given (a positive number; ``math.inf``:
    none), else ``$GPUGD_COLLECTIVE_TIMEOUT`` (a positive number, ``inf`` or ``off``),
    else ``DEFAULT_TIMEOUT``."""
    name = "timeout"
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip().lower()
        if not text:
            return DEFAULT_TIMEOUT
        if text in ("off", "none", "inf"):
            return math.inf
        name = TIMEOUT_ENV
        try:
            timeout = float(text)
        except ValueError:
            timeout = text  # type: ignore[assignment]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"{name}: expected a positive number of seconds (or inf), got {timeout!r}")
    return float(timeout)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Communicator:
    """One process group: ``rank``, ``size``, ``barrier()``, in-place ``allreduce_`` (sum)
    and ``broadcast_``. NumPy arrays go through MPI; CuPy arrays through NCCL when the
    communicator has it, else through MPI directly if the MPI library is CUDA-aware, else
    staged through host buffers (the stream is synchronized before every MPI call).

    Every collective has a deadline of ``timeout`` seconds (see ``collective_timeout``);
    ``collectives`` counts those made, ``calls`` the ``average_gradients`` calls."""

    def __init__(
        self,
        mpi_comm: Any = None,
        nccl: bool = False,
        *,
        timeout: float | None = None,
        abort_on_exception: bool = True,
    ):
        MPI = _mpi()
        self.timeout = collective_timeout(timeout)
        self.mpi = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.mpi.Get_rank(), self.mpi.Get_size()
        self.cuda_aware = _cuda_aware(MPI)
        self.collectives = 0
        self.calls = 0
        self.context = ""  # what the current collectives are part of, for the messages
        self._abort: Callable[[int], Any] = self._grace_abort
        if abort_on_exception and self.size > 1:
            install_abort_hooks(self)
        self.nccl = None
        self._watchdog: _Watchdog | None = None
        if nccl:
            from cupy.cuda import nccl as _nccl

            uid = self._bcast_object(_nccl.get_unique_id() if self.rank == 0 else None)
            self.nccl = _nccl.NcclCommunicator(self.size, uid, self.rank)
            self._watchdog = _Watchdog(self.timeout, self._nccl_expired, self.nccl)

    def _grace_abort(self, code: int) -> None:
        try:
            time.sleep(ABORT_GRACE)
        finally:
            self.mpi.Abort(code)

    def abort(self, message: str, code: int = 1) -> None:
        """End the whole job now: print ``message`` with this rank, then ``MPI_Abort(code)``
        after a short grace (so the launcher forwards the line) — for a fault one rank
        finds that the others, waiting in a collective, cannot see."""
        if isinstance(code, bool) or not isinstance(code, int) or not 0 < code < 256:
            raise ValueError(f"code: expected an exit code in 1..255, got {code!r}")
        _say(
            f"gpugd.parallel: rank {self.rank} of {self.size}: {message}; aborting the job "
            f"(MPI_Abort {code})"
        )
        self._abort(code)

    @property
    def backend(self) -> str:
        return "nccl" if self.nccl is not None else "mpi"

    # ---- deadlines

    def _label(self, op: str) -> str:
        where = f"{op} (collective {self.collectives}"
        return where + (f", {self.context})" if self.context else ")")

    def _expired(self, what: str, waited: float, code: int = TIMEOUT_EXIT) -> None:
        _say(
            f"gpugd.parallel: rank {self.rank} of {self.size}: {what} did not complete "
            f"within the {self.timeout:g} s deadline (waited {waited:.1f} s): another rank "
            "stopped making collectives or makes a different one; aborting the job "
            f"(MPI_Abort {code}). Set {TIMEOUT_ENV} or init(timeout=...) to change the deadline"
        )
        self._abort(code)

    def _wait(self, req: Any, op: str) -> None:
        """Poll ``req`` until it completes (each ``Test`` drives MPI's progress, as the
        busy loop of a blocking call does); a warning at half the deadline, and past it
        one message and ``MPI_Abort``."""
        if req.Test():
            return
        t0 = time.monotonic()
        warn, end = t0 + self.timeout / 2, t0 + self.timeout
        while not req.Test():
            now = time.monotonic()
            if now >= warn:
                warn = math.inf
                _say(
                    f"gpugd.parallel: rank {self.rank} of {self.size}: {self._label(op)} "
                    f"still waiting after {now - t0:.1f} s (deadline {self.timeout:g} s)"
                )
            if now >= end:
                self._expired(self._label(op), now - t0)
                return  # only reached when _abort is a stand-in (tests)

    def _start(self, op: str, start: Callable[[], Any]) -> None:
        """Count, start and wait for one non-blocking MPI collective."""
        self.collectives += 1
        self._wait(start(), op)

    def _nccl_expired(self, what: str, waited: float) -> None:
        """Watchdog verdict: abort the NCCL communicator (its kernels leave the stream)
        and the job."""
        try:
            self.nccl.abort()
        finally:
            self._expired(what, waited)

    # ---- collectives

    def barrier(self) -> None:
        self._start("MPI_Ibarrier", self.mpi.Ibarrier)

    def allreduce_(self, buf: Any) -> Any:
        """buf ← Σ over ranks of buf, in place (one contiguous array)."""
        if isinstance(buf, np.ndarray):
            MPI = _mpi()
            self._start("MPI_Iallreduce", lambda: self.mpi.Iallreduce(MPI.IN_PLACE, buf, MPI.SUM))
            return buf
        return self._cuda_collective(buf, "allreduce")

    def broadcast_(self, buf: Any, root: int = 0) -> Any:
        """buf ← root's buf, in place."""
        if isinstance(buf, np.ndarray):
            self._start("MPI_Ibcast", lambda: self.mpi.Ibcast(buf, root=root))
            return buf
        return self._cuda_collective(buf, "bcast", root)

    def _allgather(self, mine: np.ndarray, op: str = "MPI_Iallgather") -> np.ndarray:
        """(size, len(mine)) array of every rank's ``mine`` (same length everywhere)."""
        out = np.empty((self.size, mine.size), mine.dtype)
        self._start(op, lambda: self.mpi.Iallgather(mine, out))
        return out

    def _allgather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data`` (any lengths): an allgather of the lengths, then Iallgatherv."""
        sizes = self._allgather(np.array([len(data)], np.int64))[:, 0]
        displ = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        out = np.empty(int(sizes.sum()), np.uint8)
        mine = np.frombuffer(data, np.uint8)
        self._start(
            "MPI_Iallgatherv",
            lambda: self.mpi.Iallgatherv(mine, [out, sizes, displ, _mpi().BYTE]),
        )
        return [out[d : d + s].tobytes() for d, s in zip(displ, sizes, strict=True)]

    def _bcast_object(self, obj: Any, root: int = 0) -> Any:
        """root's ``obj`` on every rank (pickled; its length broadcast first)."""
        data = pickle.dumps(obj) if self.rank == root else b""
        n = np.array([len(data)], np.int64)
        self.broadcast_(n, root)
        buf = (
            np.frombuffer(data, np.uint8).copy() if self.rank == root else np.empty(n[0], np.uint8)
        )
        self.broadcast_(buf, root)
        return pickle.loads(buf.tobytes())

    def _cuda_collective(self, buf: Any, op: str, root: int = 0) -> Any:
        import cupy

        if self.nccl is not None:
            from cupy.cuda import nccl as _nccl

            dtype = nccl_dtype(buf.dtype, _nccl)
            stream = cupy.cuda.get_current_stream()
            self.collectives += 1
            if op == "allreduce":
                self.nccl.allReduce(
                    buf.data.ptr, buf.data.ptr, buf.size, dtype, _nccl.NCCL_SUM, stream.ptr
                )
            else:
                self.nccl.bcast(buf.data.ptr, buf.size, dtype, root, stream.ptr)
            done = cupy.cuda.Event(block=False, disable_timing=True)
            done.record(stream)
            self._watchdog.watch(done, self._label(f"ncclAllReduce/ncclBcast ({op})"))
            return buf
        cupy.cuda.get_current_stream().synchronize()  # MPI must see finished data
        if self.cuda_aware:
            MPI = _mpi()
            if op == "allreduce":
                self._start(
                    "MPI_Iallreduce", lambda: self.mpi.Iallreduce(MPI.IN_PLACE, buf, MPI.SUM)
                )
            else:
                self._start("MPI_Ibcast", lambda: self.mpi.Ibcast(buf, root=root))
            return buf
        host = cupy.asnumpy(buf)  # staged through host memory
        self.allreduce_(host) if op == "allreduce" else self.broadcast_(host, root)
        buf.set(host)
        return buf


class _Watchdog:
    """A deadline on GPU work the host does not wait for: ``watch(event, what)`` after
    each NCCL collective; a daemon thread queries the oldest pending event
    (``event.done``, cudaEventQuery) every ``poll`` seconds and, when one is older than
    ``timeout`` — or ``nccl.check_async_error()`` raises — calls ``expired(what,
    waited)`` once. Events of one stream complete in order, so only the oldest is
    queried. Untested on a GPU here (the CuPy stand-in has no NCCL); the logic is tested
    with stand-in events."""

    def __init__(self, timeout: float, expired: Callable[[str, float], Any], nccl: Any = None):
        self.timeout, self.expired, self.nccl = timeout, expired, nccl
        self.poll = min(1.0, timeout / 20)
        self._pending: deque[tuple[Any, float, str]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.fired = False

    def watch(self, event: Any, what: str) -> None:
        if self.timeout == math.inf:
            return
        with self._cond:
            self._pending.append((event, time.monotonic(), what))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gpugd-nccl-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while not self.fired:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                while self._pending and self._pending[0][0].done:
                    self._pending.popleft()
                oldest = self._pending[0] if self._pending else None
            verdict = self._check(oldest)
            if verdict is not None:
                self.fired = True
                self.expired(*verdict)
                return
            time.sleep(self.poll)

    def _check(self, oldest: tuple[Any, float, str] | None) -> tuple[str, float] | None:
        check = getattr(self.nccl, "check_async_error", None)
        if check is not None:
            try:
                check()
            except Exception as exc:
                return f"NCCL (asynchronous error {exc!r})", 0.0
        if oldest is not None and time.monotonic() - oldest[1] > self.timeout:
            return oldest[2], time.monotonic() - oldest[1]
        return None


# ---- abort on an uncaught exception -----------------------------------------------------


_hooked: dict[str, Any] = {}


def install_abort_hooks(comm: Communicator) -> None:
    """``sys.excepthook`` and ``threading.excepthook``, each chaining the one it replaces
    (which prints the traceback): an uncaught exception prints the rank, the traceback and
    ends the whole job with ``comm``'s ``MPI_Abort`` — without it a rank that raises under
    plain ``python`` leaves the others waiting. Installed once; the latest ``comm``
    is the one aborted. ``init()`` calls it in a job of more than one rank."""
    _hooked["comm"] = comm
    if "sys" in _hooked:
        return
    _hooked["sys"], _hooked["threading"] = sys.excepthook, threading.excepthook

    def abort(kind: str, name: str, chained: Callable[[], Any]) -> None:
        c = _hooked["comm"]
        _say(f"gpugd.parallel: rank {c.rank} of {c.size}: uncaught {name} {kind}:")
        try:
            chained()
        finally:
            _say(f"gpugd.parallel: rank {c.rank} of {c.size}: aborting the job (MPI_Abort)")
            c._abort(EXCEPTION_EXIT)

    def sys_hook(exc_type: type, exc: BaseException, tb: Any) -> None:
        abort("exception", exc_type.__name__, lambda: _hooked["sys"](exc_type, exc, tb))

    def thread_hook(args: Any) -> None:
        if issubclass(args.exc_type, SystemExit):  # a thread's SystemExit is ignored
            return _hooked["threading"](args)
        where = f"in thread {args.thread.name!r}" if args.thread is not None else "in a thread"
        abort(where, args.exc_type.__name__, lambda: _hooked["threading"](args))

    sys.excepthook, threading.excepthook = sys_hook, thread_hook


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


def init(
    nccl: bool = False,
    mpi_comm: Any = None,
    *,
    timeout: float | None = None,
    abort_on_exception: bool = True,
) -> Communicator:
    """The process group of this MPI job (``nccl=True``: also an NCCL communicator for
    CuPy buffers, its unique id broadcast over MPI). ``timeout``: the deadline of every
    collective in seconds (default ``$GPUGD_COLLECTIVE_TIMEOUT``, else 120 s; ``math.inf``:
    none). With more than one rank it installs the abort-on-exception hooks
    (``install_abort_hooks``) unless ``abort_on_exception=False``."""
    return Communicator(mpi_comm, nccl=nccl, timeout=timeout, abort_on_exception=abort_on_exception)


# ---- consistency --------------------------------------------------------------------------

_NONE = np.iinfo(np.int64).min  # how an absent value (step=None) travels


def _layout(grads: Any) -> list[list[Any]]:
    """[name, shape, offset, dtype] per tensor in layout order: a FlatParams', or one
    unnamed tensor for a plain buffer."""
    if isinstance(grads, FlatParams):
        dt = str(grads.dtype)
        return [[n, list(s), off, dt] for n, (off, s) in grads._slots.items()]
    return [["(buffer)", [int(grads.size)], 0, str(grads.dtype)]]


def _digest(obj: Any) -> int:
    raw = hashlib.sha256(json.dumps(obj).encode()).digest()[:8]
    return int.from_bytes(raw, "little", signed=True)


def _layout_difference(layouts: list[list[Any]]) -> str:
    """Where each rank's layout first differs from rank 0's."""
    ref, out = layouts[0], []
    for r, lay in enumerate(layouts):
        for k in range(max(len(ref), len(lay))):
            a = ref[k] if k < len(ref) else None
            b = lay[k] if k < len(lay) else None
            if a != b:
                out.append(
                    f"rank {r} differs from rank 0 at tensor {k}: rank 0 has {a}, rank {r} has {b}"
                )
                break
    return "; ".join(out)


def _agree(comm: Communicator, where: str, fields: dict[str, int | None], layout: list) -> None:
    """One allgather of ``fields`` and the layout's digest; where any rank differs from
    rank 0, ``MismatchError`` on every rank naming the field and the ranks (for the layout,
    a second allgather of the layouts names the first differing tensor)."""
    if comm.size == 1:
        return
    names = [*fields, "layout"]
    vals = [_NONE if x is None else int(x) for x in fields.values()]
    table = comm._allgather(np.array([*vals, _digest(layout)], np.int64))
    bad = [j for j in range(len(names)) if (table[:, j] != table[0, j]).any()]
    if not bad:
        return
    msgs = []
    for j in bad:
        if names[j] == "layout":
            layouts = [json.loads(b) for b in comm._allgather_bytes(json.dumps(layout).encode())]
            msgs.append(f"layout (names, shapes, offsets, dtype): {_layout_difference(layouts)}")
            continue
        show = ["None" if x == _NONE else str(x) for x in table[:, j]]
        diff = [f"rank {r} has {show[r]}" for r in range(comm.size) if show[r] != show[0]]
        msgs.append(f"{names[j]}: rank 0 has {show[0]}, " + ", ".join(diff))
    raise MismatchError(f"{where}: ranks disagree on " + "; ".join(msgs))


def check_consistent(comm: Communicator, flat: FlatParams) -> None:
    """Every rank has the same names, shapes, offsets, order and dtype, and has made as
    many collectives; otherwise raise ``MismatchError`` on every rank, naming the first
    differing tensor (no hang: one allgather of a fingerprint, then one of the layouts if
    they differ)."""
    _agree(comm, "check_consistent", {"collective": comm.collectives}, _layout(flat))


def broadcast_parameters(
    comm: Communicator, flat: FlatParams, root: int = 0, optimizer: Any = None
) -> None:
    """Every rank starts from ``root``'s parameters (and optimizer state when given):
    one broadcast of the arena's buffer, and one per state buffer."""
    check_consistent(comm, flat)
    comm.context = "broadcast_parameters"
    try:
        comm.broadcast_(flat.data, root)
        if optimizer is not None:
            for buf in optimizer._buffers.values():
                comm.broadcast_(buf.data, root)
    finally:
        comm.context = ""


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
    step: int | None = None,
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
    ``predivide``), so accumulation costs no extra pass over the buffer.

    Before any bucket, one allgather of a few integers checks that every rank makes the
    same call: the collective and call sequence numbers, ``step`` (the training step, an
    integer ≥ 0, when given: pass it so that a rank that skipped a step is caught at the
    next one), ``micro_batches``, ``predivide``, the bucket sizes and the layout (names,
    shapes, offsets and order, dtype); otherwise ``MismatchError`` on every rank, naming
    the differing ranks and field. Every collective has the communicator's deadline."""
    buf = grads.grad_data if isinstance(grads, FlatParams) else grads
    v.array_backend(grads=buf)  # the type gate (no subclass reaches MPI) before anything
    v.float_array("grads", buf, writable=True)
    _positive_int("bucket_bytes", bucket_bytes)
    _positive_int("first_bucket_bytes", first_bucket_bytes)
    _positive_int("micro_batches", micro_batches)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"step: expected None or an integer >= 0, got {step!r}")
    from .ops import scale_, scale_sum_of_squares_, sum_of_squares

    comm.calls += 1
    where = f"average_gradients call {comm.calls}" + ("" if step is None else f", step {step}")
    fields = {
        "collective": comm.collectives,
        "call": comm.calls,
        "step": step,
        "micro_batches": micro_batches,
        "predivide": int(bool(predivide)),
        "bucket_bytes": bucket_bytes,
        "first_bucket_bytes": first_bucket_bytes,
    }
    flat = buf.reshape(-1)
    inv = 1.0 / (micro_batches * comm.size)
    ssq = 0.0
    ranges = buckets(flat.size, flat.dtype.itemsize, bucket_bytes, first_bucket_bytes)
    try:
        comm.context = f"{where}, consistency check"
        _agree(comm, where, fields, _layout(grads if isinstance(grads, FlatParams) else buf))
        for i, (lo, hi) in enumerate(ranges):
            comm.context = f"{where}, bucket {i + 1} of {len(ranges)}"
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
    finally:
        comm.context = ""
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
        v.array_backend(grads=buf)  # the type gate (no subclass reaches MPI)
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

    def average(
        self, micro_batches: int | None = None, *, norm: bool = False, step: int | None = None
    ) -> Averaged:
        """grads ← (1/(K·size)) · Σ_ranks grads in place, K = ``micro_batches`` or the
        count of ``no_sync`` micro-batches since the last call (at least 1): one bucketed
        allreduce and one scaling pass (``average_gradients``). Raises RuntimeError
        inside ``no_sync()``; resets the count. ``step``: as for ``average_gradients``."""
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
            step=step,
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
    "collective_timeout",
    "init",
    "install_abort_hooks",
]
