"""Host buffers for gpugd's own large arrays (arenas, optimizer states, master weights):
zeroed, 2 MiB-aligned, private anonymous memory with transparent huge pages requested
(Linux ``madvise(MADV_HUGEPAGE)``), like PyTorch's CPU allocator with
``THP_MEM_ALLOC_ENABLE=1``.

Why: an optimizer step streams 4–7 arrays at once, and with 4 KiB pages every stream
crosses a page every 1,024 float32 elements (a TLB miss, and the hardware prefetchers stop
at the boundary). On the 2-core CI VM a bfloat16-parameter Adam step over 2^24 elements
moved 47.7–48.0 GB/s on huge-page buffers against 45.8–46.3 on buffers from ``np.empty``,
three pairs timed in the same rounds (``python -m benchmarks.experiments.hugepages``,
``benchmarks/results/cpu-hugepages-2026-12-02.txt``); a plain in-place loop, one stream,
ran 3% slower on the huge pages there and 4–9% slower in
``benchmarks/results/cpu-streams-alloc-2026-12-02.txt`` (``python -m
benchmarks.experiments.streams --alloc``), so this is for multi-stream kernels, not a free
lunch.

Buffers below ``HUGE_MIN`` bytes, and every buffer where the platform has no
``MADV_HUGEPAGE``, come from ``np.zeros``, aligned to 64 bytes (over-allocated and sliced).
The kernel may still back a buffer with small pages (``/sys/kernel/mm/transparent_hugepage``
set to ``never``, or no free huge page): the advice is a request, the results are the same.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

HUGE = 2 << 20  # bytes of a huge page on x86-64 and the usual aarch64 kernels
HUGE_MIN = 4 << 20  # smaller buffers gain little and would waste up to 2 MiB each
ALIGN = 64  # the least alignment of every buffer (16-byte vector accesses, cache lines)


def zeros(n: int, dtype: Any) -> np.ndarray:
    """``n`` zeroed elements of ``dtype`` in 1-D: 2 MiB-aligned with huge pages requested
    when the buffer is at least ``HUGE_MIN`` bytes, else 64-byte-aligned from NumPy."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n: expected an element count ≥ 0, got {n!r}")
    dtype = np.dtype(dtype)
    nbytes = int(n) * dtype.itemsize
    advise = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_MIN or advise is None:
        raw = np.zeros(nbytes + ALIGN, np.uint8)
        skip = -raw.ctypes.data % ALIGN
        return raw[skip : skip + nbytes].view(dtype)
    size = -(-(nbytes + HUGE) // mmap.PAGESIZE) * mmap.PAGESIZE
    # private: shared anonymous memory would be shmem, which THP's anonymous setting skips
    mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(mem, np.uint8)  # keeps the mapping alive as long as any view
    skip = -raw.ctypes.data % HUGE  # a whole number of pages: the mapping is page-aligned
    try:
        mem.madvise(advise, skip, size - skip)
    except OSError:  # a kernel without THP refuses the advice: small pages, same results
        pass
    return raw[skip : skip + nbytes].view(dtype)


def mapping_of(a: np.ndarray) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds ``a``'s first byte (e.g.
    ``AnonHugePages``: "16384 kB", ``VmFlags``: "rd wr mr mw me ac hg", where "hg" means
    huge pages were advised); {} where there is no such file (not Linux)."""
    addr, fields, inside = a.ctypes.data, {}, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):  # "start-end perms ..." header
                    if inside:
                        break
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    inside = lo <= addr < hi
                elif inside:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
    except OSError:
        return {}
    return fields


def zeros_like(a: np.ndarray, dtype: Any = None) -> np.ndarray:
    """``zeros`` of ``a``'s shape (and dtype, unless given)."""
    return zeros(a.size, a.dtype if dtype is None else dtype).reshape(a.shape)


def copy_of(a: Any, dtype: Any = None) -> Any:
    """``a`` converted to ``dtype`` (default: its own) in a new ``zeros_like`` buffer; a
    device (CuPy) array through its own ``astype``, so callers need not ask which it is."""
    if not isinstance(a, np.ndarray):
        return a.astype(a.dtype if dtype is None else dtype)
    out = zeros_like(a, dtype)
    out[...] = a
    return out
