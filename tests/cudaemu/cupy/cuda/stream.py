"""``cupy.cuda.Stream``/``Event``/``get_current_stream`` of the stand-in, and stream capture.

Everything is synchronous: all streams are one host queue, so every operation has finished
when the call returns, ``synchronize()`` waits for nothing and an event's time is the host
clock when it was recorded. What this cannot show: a missing ``synchronize()``, a race
between two streams, a host read of a buffer a kernel is still writing, overlap of copies
and kernels — on a GPU those are bugs or timings the emulator never sees.

Mirrored from ``cupy/cuda/stream.pyx``:

- the current stream is per thread, a stack that ``with stream:`` pushes and pops;
  ``get_current_stream()`` starts at ``Stream.null`` (``ptr`` 0, ``device_id`` -1);
- ``begin_capture()`` on the null stream raises ``RuntimeError('cannot capture on the
  default (legacy) stream')``; ``end_capture()`` returns a ``cupy.cuda.graph.Graph``;
  ``is_capturing()``;
- ``Stream.__eq__`` compares ``ptr``; ``__hash__`` is ``ptr``.

Capture: while a stream captures, a kernel launched on it is recorded with its arguments
marshalled by value (as a CUDA graph node holds them) instead of running, and so are the
stand-in operations that CuPy would enqueue as capturable work and that this stand-in
records (fills, ``copyto``/``__setitem__`` from device arrays or scalars, the memsets of
``zeros``, elementwise ufuncs); every other device operation raises
``StandInCaptureError``, so nothing runs eagerly outside the graph unnoticed, and a
synchronizing call (``get()``, ``float()``, ``synchronize()``) raises as CUDA's
``cudaErrorStreamCaptureUnsupported`` would.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import runtime

_ptrs = itertools.count(0x7E570000, 0x10)  # fake handles: distinct, never 0, 1 or 2
_by_ptr: dict[int, Any] = {}  # ptr -> stream, for runtime.streamIsCapturing


class StandInCaptureError(RuntimeError):
    """A stand-in operation that is not recorded into a CUDA graph ran while capturing."""


class CaptureSyncError(StandInCaptureError, runtime.CUDARuntimeError):
    """A synchronizing call while a stream captures: ``status`` 900, CUDA's
    cudaErrorStreamCaptureUnsupported, which CuPy raises as a ``CUDARuntimeError``."""

    def __init__(self, message: str):
        self.status = runtime.errorStreamCaptureUnsupported
        RuntimeError.__init__(self, message)

    def __reduce__(self):
        return (type(self), (str(self),))


# ---------------------------------------------------------------- graph nodes


@dataclass
class KernelNode:
    """A captured kernel launch: the runtime kernel, its 3-D grid and block, dynamic shared
    memory, and the arguments already marshalled (``runtime.Kernel.pack``)."""

    kernel: Any
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    packed: Any

    def run(self) -> None:
        self.kernel.run(self.grid, self.block, self.shared_mem, self.packed)

    def __str__(self) -> str:
        return f"kernel {self.kernel.name}<<<{self.grid}, {self.block}>>>"


@dataclass
class OpNode:
    """A captured stand-in operation (a memset, fill, copy or elementwise kernel): ``run``
    replays it on the arrays it was captured on, reading their contents at replay time."""

    name: str
    fn: Callable[[], None]

    def run(self) -> None:
        self.fn()

    def __str__(self) -> str:
        return self.name


# ---------------------------------------------------------------- events


class Event:
    """A host timestamp taken when recorded (``cupy.cuda.Event``)."""

    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess=False):
        if interprocess and not disable_timing:
            raise ValueError("Timing must be disabled for interprocess events")
        self.ptr = next(_ptrs)
        self.block, self.disable_timing = block, disable_timing
        self._time: float | None = None

    @property
    def done(self) -> bool:
        return True

    def _stamp(self) -> None:
        self._time = time.perf_counter()

    def record(self, stream: Any = None) -> None:
        s = get_current_stream() if stream is None else stream
        if s._capture is not None:
            s._capture.append(OpNode("event record", self._stamp))
        else:
            self._stamp()

    def synchronize(self) -> None:
        _refuse_sync("cupy.cuda.Event.synchronize()")

    def __repr__(self) -> str:
        return f"<Event {self.ptr:#x}>"


def get_elapsed_time(start_event: Event, end_event: Event) -> float:
    """Milliseconds between the two records (host clock)."""
    for e in (start_event, end_event):
        if e.disable_timing or e._time is None:
            raise runtime.CUDARuntimeError(runtime.errorInvalidResourceHandle)
    return (end_event._time - start_event._time) * 1000.0


# ---------------------------------------------------------------- streams


class _Local(threading.local):
    def __init__(self) -> None:
        self.stack: list[Any] = []


_tls = _Local()


def get_current_stream(device_id: int = -1) -> Any:
    """The current stream of this thread (``Stream.null`` unless one is entered/used)."""
    if device_id not in (-1, 0):
        raise runtime.CUDARuntimeError(runtime.errorInvalidDevice)
    return _tls.stack[-1] if _tls.stack else Stream.null


def get_current_stream_ptr() -> int:
    return get_current_stream().ptr


class _BaseStream:
    def __init__(self, ptr: int, device_id: int, non_blocking: bool, priority: int):
        self.ptr, self.device_id = ptr, device_id
        self._non_blocking, self._priority = non_blocking, priority
        self._capture: list | None = None  # the recorded nodes while capturing
        self._graph_host_funcargs: list | None = None
        _by_ptr[ptr] = self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _BaseStream) and self.ptr == other.ptr

    def __hash__(self) -> int:
        return self.ptr

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.ptr} (device {self.device_id})>"

    def __enter__(self):
        _tls.stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _tls.stack.pop()

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.ptr)

    def use(self):
        """Make this stream current (replaces the top of the stack, as CuPy's ``use``)."""
        if _tls.stack:
            _tls.stack[-1] = self
        else:
            _tls.stack.append(self)
        return self

    @property
    def done(self) -> bool:
        return True

    @property
    def is_non_blocking(self) -> bool:
        return self._non_blocking

    @property
    def priority(self) -> int:
        return self._priority

    def synchronize(self) -> None:
        """Nothing is pending (one synchronous host queue); refused while capturing."""
        HOST_SYNCS["cupy.cuda.Stream.synchronize()"] += 1
        if self._capture is not None:
            raise CaptureSyncError(
                f"stand-in: {self!r}.synchronize() while it captures "
                "(cudaErrorStreamCaptureUnsupported on a GPU)"
            )

    def record(self, event: Event | None = None) -> Event:
        if event is None:
            event = Event()
        event.record(self)
        return event

    def wait_event(self, event: Event) -> None:
        pass

    def add_callback(self, callback: Callable, arg: Any) -> None:
        if self._capture is not None:  # "this function does not support CUDA graph capture"
            raise runtime.CUDARuntimeError(runtime.errorStreamCaptureUnsupported)
        callback(self, 0, arg)

    def launch_host_func(self, callback: Callable, arg: Any) -> None:
        if self._capture is not None:
            self._capture.append(OpNode(f"host function {callback!r}", lambda: callback(arg)))
        else:
            callback(arg)

    def begin_capture(self, mode: int | None = None) -> None:
        if self.ptr in (0, 1):
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if self._capture is not None:
            raise runtime.CUDARuntimeError(runtime.errorIllegalState)
        self._capture = []
        self._graph_host_funcargs = []

    def end_capture(self):
        from .graph import Graph

        if self._capture is None:
            raise runtime.CUDARuntimeError(runtime.errorIllegalState)
        nodes, self._capture = self._capture, None
        self._graph_host_funcargs = None
        return Graph._from_nodes(nodes)

    def is_capturing(self) -> bool:
        return self._capture is not None


class Stream(_BaseStream):
    """``cupy.cuda.Stream(null=False, non_blocking=False, ptds=False, priority=None)``."""

    null: Stream
    ptds: Stream

    def __init__(
        self,
        null: bool = False,
        non_blocking: bool = False,
        ptds: bool = False,
        priority: int | None = None,
    ):
        if null:
            ptr, device_id = 0, -1
        elif ptds:
            ptr, device_id = runtime.streamPerThread, -1
        else:
            ptr, device_id = next(_ptrs), runtime.getDevice()
        super().__init__(ptr, device_id, bool(non_blocking), priority or 0)


class ExternalStream(_BaseStream):
    def __init__(self, ptr: int, device_id: int = -1):
        super().__init__(int(ptr), device_id, False, 0)


Stream.null = Stream(null=True)
Stream.ptds = Stream(ptds=True)


# ---------------------------------------------------------------- capture helpers


def capturing() -> _BaseStream | None:
    """The current stream when it is capturing, else None."""
    s = _tls.stack[-1] if _tls.stack else Stream.null
    return s if s._capture is not None else None


def refuse_capture(op: str) -> None:
    """Raise ``StandInCaptureError`` when the current stream captures: ``op`` would be
    enqueued on it as work this stand-in does not record into the graph."""
    s = capturing()
    if s is not None:
        raise StandInCaptureError(
            f"stand-in: {op} during stream capture is not recorded (on a GPU it would be "
            f"captured into the graph of {s!r}, not run now); move it out of the capture "
            "or record it as a kernel"
        )


# Every host synchronization the stand-in saw (a blocking device-to-host copy, a stream,
# event or device synchronize), by operation: what a test reads to assert that a code path
# never makes the host wait for the device. Not part of CuPy.
HOST_SYNCS: Counter[str] = Counter()


def _refuse_sync(op: str) -> None:
    """A synchronizing call: counted in ``HOST_SYNCS``; refused while a stream captures
    (CUDA's cudaErrorStreamCaptureUnsupported, and the capture is invalidated)."""
    HOST_SYNCS[op] += 1
    s = capturing()
    if s is not None:
        raise CaptureSyncError(
            f"stand-in: {op} synchronizes with the device, which is not allowed while "
            f"{s!r} captures (cudaErrorStreamCaptureUnsupported on a GPU)"
        )


def record_or_run(name: str, fn: Callable[[], None]) -> None:
    """Run ``fn`` now, or append it to the capturing current stream's graph."""
    s = capturing()
    if s is None:
        fn()
    else:
        s._capture.append(OpNode(name, fn))
