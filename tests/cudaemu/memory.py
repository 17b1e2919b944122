"""Guarded "device" memory for the CuPy stand-in: every allocation is its own anonymous
mapping, its data ending (rounded up to 16 bytes) exactly where a ``PROT_NONE`` guard page
begins, with canary bytes in front of it and in the slack after it.

Layout of one allocation of ``nbytes`` (``r16`` = ``nbytes`` rounded up to 16)::

    base                               ptr            ptr + nbytes   ptr + r16
    | canary ... (at least 64 bytes)   | data ........ | canary slack | guard page (PROT_NONE)

- ``ptr`` is 16-byte aligned (the kernels take their vector paths only on 16-byte-aligned
  pointers), and a read or write at ``ptr + r16`` or beyond faults at once.
- A write into the canary bytes (the slack, or the bytes before ``ptr``) is found by
  ``check_guards()``, which the emulator runs before and after every launch.
- ``alloc`` fills fresh data with 0xFF bytes (NaN in every float format, -1 in the signed
  integers), so an output a kernel forgot to write is visible; ``alloc(n, zero=True)``
  zero-fills.
- ``alloc(0)`` gives a pointer of 0 and maps nothing, as CuPy's pool does:
  ``cupy/cuda/memory.pyx``, ``SingleDeviceMemoryPool._malloc``: ``if size == 0: return
  MemoryPointer(Memory(0), 0)``, and ``Memory.__init__`` leaves ``self.ptr = 0`` unless
  ``size > 0``.

The mapping is unmapped when the ``Allocation`` is garbage-collected; the buffers handed
out (``Allocation.buffer``) keep it alive, so a NumPy view built on one does too.
What this cannot show: CuPy's pool rounds sizes up to 512 bytes and reuses freed blocks,
so on a GPU a small overrun lands in the pool's slack or in a neighbour, silently.
"""

from __future__ import annotations

import ctypes
import mmap
import weakref
from dataclasses import dataclass

PAGE = mmap.PAGESIZE
ALIGN = 16
HEAD = 64  # canary bytes at least, right before the data
GARBAGE = 0xFF  # fresh ``empty`` memory: NaN in float16/bfloat16/float32/float64
# A 16-byte canary pattern (repeated by address): distinct bytes, not a float one would
# compute, not 0x00 nor 0xFF (the fill patterns), so overwriting it is always visible.
_PATTERN = bytes.fromhex("a5c3e1f2b4d69788aa5c3e1f2b4d6978")
_TILE = _PATTERN * (PAGE // ALIGN + 2)

_PROT_NONE = 0
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


@dataclass(frozen=True)
class _Region:
    """What the registry keeps of one live allocation (no reference to it)."""

    base: int  # start of the mapping
    ptr: int  # start of the data
    nbytes: int
    size: int  # bytes mapped, guard page included

    @property
    def guard(self) -> int:
        return self.base + self.size - PAGE

    def canaries(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(address, length) of the bytes before the data and of the slack after it."""
        end = self.ptr + self.nbytes
        return (self.base, self.ptr - self.base), (end, self.guard - end)


_live: dict[int, _Region] = {}  # base address -> region, while its Allocation lives
stats = {"allocations": 0, "bytes": 0}  # totals since import (for the tests and reports)


def _expected(addr: int, n: int) -> bytes:
    o = addr % ALIGN
    return _TILE[o : o + n]


def _arm(addr: int, n: int) -> None:
    if n:
        ctypes.memmove(addr, _expected(addr, n), n)


def _unmap(base: int, size: int) -> None:
    _live.pop(base, None)
    _libc.munmap(base, size)


class Allocation:
    """One guarded allocation: ``ptr`` (int address, 0 when ``nbytes`` is 0), ``nbytes``,
    and ``buffer``, a writable ctypes array over exactly the ``nbytes`` data bytes."""

    __slots__ = ("__weakref__", "_finalizer", "nbytes", "ptr")

    def __init__(self, nbytes: int, *, zero: bool = False):
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"alloc: negative size {nbytes}")
        self.nbytes = nbytes
        self.ptr = 0
        self._finalizer = None
        if nbytes == 0:
            return
        r16 = -(-nbytes // ALIGN) * ALIGN
        data_pages = -(-(HEAD + r16) // PAGE) * PAGE
        size = data_pages + PAGE
        base = _libc.mmap(None, size, _PROT_RW, _FLAGS, -1, 0)
        if base in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise MemoryError(
                f"stand-in alloc({nbytes}): mmap of {size} bytes failed (errno {err})"
            )
        guard = base + data_pages
        if _libc.mprotect(guard, PAGE, _PROT_NONE) != 0:
            err = ctypes.get_errno()
            _libc.munmap(base, size)
            raise MemoryError(f"stand-in alloc({nbytes}): mprotect failed (errno {err})")
        self.ptr = guard - r16
        region = _Region(base, self.ptr, nbytes, size)
        for addr, n in region.canaries():
            _arm(addr, n)
        if not zero:  # fresh anonymous pages are zero already
            ctypes.memset(self.ptr, GARBAGE, nbytes)
        _live[base] = region
        stats["allocations"] += 1
        stats["bytes"] += nbytes
        self._finalizer = weakref.finalize(self, _unmap, base, size)
        # at interpreter exit leave the mappings: objects still alive may read them
        self._finalizer.atexit = False

    @property
    def buffer(self):
        """A writable buffer over exactly the data bytes; it keeps this allocation alive."""
        if self.nbytes == 0:
            return bytearray()
        buf = (ctypes.c_ubyte * self.nbytes).from_address(self.ptr)
        buf._gpugd_allocation = self  # the mapping lives as long as any buffer on it
        return buf

    def __repr__(self) -> str:
        return f"<stand-in Allocation of {self.nbytes} bytes at {self.ptr:#x}>"


def alloc(nbytes: int, *, zero: bool = False) -> Allocation:
    """A guarded allocation of ``nbytes`` (0xFF garbage, or zeros with ``zero``)."""
    return Allocation(nbytes, zero=zero)


def live() -> int:
    """How many allocations are alive (mapped)."""
    return len(_live)


def _first_last_diff(got: bytes, want: bytes) -> tuple[int, int]:
    bad = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    return bad[0], bad[-1]


def check_guards() -> list[str]:
    """Descriptions of every live allocation whose canary bytes changed (then re-armed)."""
    damaged = []
    for region in list(_live.values()):
        (head, nhead), (tail, ntail) = region.canaries()
        for addr, n, where in ((head, nhead, "before"), (tail, ntail, "after")):
            if not n:
                continue
            got = ctypes.string_at(addr, n)
            want = _expected(addr, n)
            if got == want:
                continue
            lo, hi = _first_last_diff(got, want)
            if where == "before":
                far, near = region.ptr - (addr + lo), region.ptr - (addr + hi)
                span = f"{far} to {near} bytes before the start"
            else:
                span = f"{lo} to {hi} bytes past the end"
            damaged.append(
                f"canary bytes {span} of a {region.nbytes}-byte allocation at {region.ptr:#x} "
                "were overwritten"
            )
            _arm(addr, n)
    return damaged


def describe(addr: int) -> str | None:
    """Which live allocation ``addr`` falls in or near ("12 bytes past the end of a 4096-byte
    allocation at 0x..."); None when it is in no allocation's mapping."""
    addr = int(addr)
    for region in list(_live.values()):
        if not region.base <= addr < region.base + region.size:
            continue
        what = f"a {region.nbytes}-byte allocation at {region.ptr:#x}"
        end = region.ptr + region.nbytes
        if addr < region.ptr:
            return f"{region.ptr - addr} bytes before the start of {what}"
        if addr < end:
            return f"byte {addr - region.ptr} inside {what}"
        where = "on its guard page" if addr >= region.guard else "in its canary slack"
        return f"{addr - end} bytes past the end of {what} ({where})"
    return None
