"""``cupy.cuda.memory`` of the stand-in: ``Memory`` (one guarded allocation of the
emulator's ``memory.alloc``), ``MemoryPointer``, ``alloc`` and a pool-like facade.

Mirrored from ``cupy/cuda/memory.pyx``: ``Memory(size)`` has ``ptr`` 0 when ``size`` is 0
(``if size > 0: self.ptr = runtime.malloc(size)``), the pool's ``_malloc`` returns
``MemoryPointer(Memory(0), 0)`` for a zero-size request; ``MemoryPointer(mem, offset)``
has ``ptr = mem.ptr + offset``, ``__add__`` moves the offset, ``__int__`` is ``ptr``;
``memset_async``/``copy_from_device_async`` are stream work (captured into a graph),
``copy_from_host``/``copy_to_host`` move bytes between host and device.
Unlike CuPy's pool there is no 512-byte rounding and no reuse: every allocation is its
own guarded mapping (see the emulator's ``memory.py``).
"""

from __future__ import annotations

import ctypes
import importlib
from typing import Any

from .. import _EMULATOR_PACKAGE
from . import stream as _stream

emulator_memory = importlib.import_module(_EMULATOR_PACKAGE + ".memory")


class Memory:
    """One device allocation (``ptr``, ``size``, ``device_id``)."""

    __slots__ = ("__weakref__", "_alloc", "device_id", "ptr", "size")

    def __init__(self, size: int, *, zero: bool = False):
        if size:
            # CuPy would allocate from its pool, but a graph does not keep the buffer: once
            # the array is freed the pool hands its memory to the next allocation while the
            # graph still writes there. gpugd allocates nothing while capturing; keep it so.
            from . import stream

            stream.refuse_capture(f"allocating {int(size)} bytes")
        self._alloc = emulator_memory.alloc(int(size), zero=zero)
        self.size = self._alloc.nbytes
        self.ptr = self._alloc.ptr
        self.device_id = 0

    @property
    def device(self):
        from .device import Device

        return Device(self.device_id)

    def buffer(self):
        """A writable buffer over the ``size`` bytes (keeps the allocation alive)."""
        return self._alloc.buffer

    def __repr__(self) -> str:
        return f"<stand-in cupy.cuda.memory.Memory {self.size} bytes at {self.ptr:#x}>"


class MemoryPointer:
    """A pointer into a ``Memory``: ``ptr = mem.ptr + offset``."""

    __slots__ = ("device_id", "mem", "ptr")

    def __init__(self, mem: Memory, offset: int):
        self.mem = mem
        self.device_id = mem.device_id
        self.ptr = mem.ptr + int(offset)

    @property
    def device(self):
        return self.mem.device

    def __int__(self) -> int:
        return self.ptr

    def __add__(self, offset: int) -> MemoryPointer:
        if self.ptr + int(offset) < self.mem.ptr:
            raise ValueError("Pointer out of the allocation")  # memory.pyx asserts this
        return MemoryPointer(self.mem, self.ptr - self.mem.ptr + int(offset))

    def __radd__(self, offset: int) -> MemoryPointer:
        return self + offset

    def __sub__(self, offset: int) -> MemoryPointer:
        return self + -int(offset)

    def __repr__(self) -> str:
        return f"<stand-in MemoryPointer {self.ptr:#x} in {self.mem!r}>"

    # ---- copies and memsets (raw bytes; the device is host memory here)

    def memset_async(self, value: int, size: int, stream: Any = None) -> None:
        ptr, size, value = self.ptr, int(size), int(value)
        if size > 0:
            _on(stream, "memset", lambda: ctypes.memset(ptr, value, size))

    def memset(self, value: int, size: int) -> None:
        _stream.refuse_capture("MemoryPointer.memset (synchronous)")
        self.memset_async(value, size)

    def copy_from_device_async(self, src: MemoryPointer, size: int, stream: Any = None) -> None:
        dst, sp, size = self.ptr, src.ptr, int(size)
        if size > 0:
            _on(stream, "device-to-device copy", lambda: ctypes.memmove(dst, sp, size))

    def copy_from_device(self, src: MemoryPointer, size: int) -> None:
        _stream.refuse_capture("MemoryPointer.copy_from_device (synchronous)")
        self.copy_from_device_async(src, size)

    def copy_from_host(self, mem: Any, size: int) -> None:
        _stream.refuse_capture("a host-to-device copy")
        if int(size) > 0:
            ctypes.memmove(self.ptr, _host_ptr(mem), int(size))

    copy_from_host_async = copy_from_host

    def copy_to_host(self, mem: Any, size: int) -> None:
        _stream._refuse_sync("a device-to-host copy")
        if int(size) > 0:
            ctypes.memmove(_host_ptr(mem), self.ptr, int(size))

    copy_to_host_async = copy_to_host


def _host_ptr(mem: Any) -> int:
    if isinstance(mem, int):
        return mem
    if hasattr(mem, "value") and isinstance(mem.value, int):  # ctypes.c_void_p
        return mem.value
    return ctypes.addressof(mem)


def _on(stream: Any, name: str, fn) -> None:
    s = _stream.get_current_stream() if stream is None else stream
    if s._capture is not None:
        s._capture.append(_stream.OpNode(name, fn))
    else:
        fn()


class PinnedMemoryPointer(bytearray):
    """``cupy.cuda.alloc_pinned_memory``'s result: host memory with the buffer protocol
    (``numpy.frombuffer(mem, dtype, count)``); here plain host bytes, zero-filled."""

    @property
    def ptr(self) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(self)) if len(self) else 0


def alloc_pinned_memory(size: int) -> PinnedMemoryPointer:
    """``cupy.cuda.alloc_pinned_memory``: ``size`` bytes of (page-locked, on a GPU) host
    memory."""
    if int(size) < 0:
        raise ValueError(f"size: expected >= 0, got {size}")
    return PinnedMemoryPointer(int(size))


def alloc(size: int) -> MemoryPointer:
    """``cupy.cuda.alloc``: a guarded allocation of ``size`` bytes (garbage-filled)."""
    return MemoryPointer(Memory(size), 0)


def _used_bytes() -> int:
    return sum(r.nbytes for r in list(emulator_memory._live.values()))


class MemoryPool:
    """A facade over the guarded allocator: no pooling, ``used_bytes`` = live bytes."""

    def malloc(self, size: int) -> MemoryPointer:
        return alloc(size)

    def used_bytes(self) -> int:
        return _used_bytes()

    def total_bytes(self) -> int:
        return _used_bytes()

    def free_bytes(self) -> int:
        return 0

    def free_all_blocks(self, stream: Any = None) -> None:
        pass

    def n_free_blocks(self) -> int:
        return 0

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        pass

    def get_limit(self) -> int:
        return 0


class PinnedMemoryPool(MemoryPool):
    pass


_default_pool = MemoryPool()
_default_pinned_pool = PinnedMemoryPool()


def get_default_memory_pool() -> MemoryPool:
    return _default_pool


def get_default_pinned_memory_pool() -> PinnedMemoryPool:
    return _default_pinned_pool
