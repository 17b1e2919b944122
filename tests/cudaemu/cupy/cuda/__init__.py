"""``cupy.cuda`` of the stand-in: device, runtime, streams, events, graphs, memory."""

from __future__ import annotations

from . import device, driver, graph, memory, runtime, stream
from .device import Device, get_device_id
from .graph import Graph
from .memory import (
    Memory,
    MemoryPointer,
    MemoryPool,
    PinnedMemoryPointer,
    PinnedMemoryPool,
    alloc,
    alloc_pinned_memory,
    get_default_memory_pool,
    get_default_pinned_memory_pool,
)
from .stream import (
    Event,
    ExternalStream,
    Stream,
    get_current_stream,
    get_elapsed_time,
)


def is_available() -> bool:
    return True


def get_local_runtime_version() -> int:
    return runtime.runtimeGetVersion()


__all__ = [
    "Device",
    "Event",
    "ExternalStream",
    "Graph",
    "Memory",
    "MemoryPointer",
    "MemoryPool",
    "PinnedMemoryPointer",
    "PinnedMemoryPool",
    "Stream",
    "alloc",
    "alloc_pinned_memory",
    "device",
    "driver",
    "get_current_stream",
    "get_default_memory_pool",
    "get_default_pinned_memory_pool",
    "get_device_id",
    "get_elapsed_time",
    "get_local_runtime_version",
    "graph",
    "is_available",
    "memory",
    "runtime",
    "stream",
]
