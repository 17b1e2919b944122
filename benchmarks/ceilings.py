"""The machine's bandwidth ceilings, measured in the same run with plain loops that are
not gpugd's kernels.

CPU (Numba, STREAM-style, one ``prange`` per loop, every core):
  copy     b[i] = a[i]             3 words/elem: read a, write-allocate read of b, write b
  triad    a[i] = b[i] + s·c[i]    4 words/elem: read b, c, write-allocate a, write a
  inplace  x[i] = s·x[i] + t       2 words/elem: read x, write x (line already cached)
  read     Σ x[i]                  1 word/elem
Each timed call, loop or kernel, starts after an untimed read sweep over twice the
last-level cache, so all of them stream from memory and none pays for another's dirty lines.
A class's ceiling is the best of its loops: ``inplace`` = best of copy, triad, inplace
(streams that read and write); ``read`` = best of read and the ``inplace`` ceiling, since a
pure read stream moves bytes at least as fast as a mixed one.

GPU (CuPy): device-to-device copy, 2 words/elem (no write-allocate on the GPU), timed with
CUDA events; both classes take it.

``own_inplace(arrays)``: the in-place loop over a kernel's own buffers (every byte read and
rewritten unchanged, x ^= 0 with the 0 unknown to the compiler): the ceiling for exactly
the memory the kernel touches. On the CPU VMs this project runs on, memory is not uniform:
128 MiB arrays allocated one after another have streamed in place at 46 to 57 GB/s in one
run, each array steady across that run's rounds, and within 5–9% of each other in runs
minutes later (``python -m benchmarks.experiment_placement``), so a loop over arrays of its
own holds a kernel against a placement lottery.

The loops are not timed in a phase of their own: ``Context.measure`` runs the loops of a
kernel's class round-robin with the kernel, and a loop's figure is the median of all its
samples in the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from gpugd import _tensor_table as layout
from gpugd._cpu.optim import address
from gpugd._cpu.tensor_table import SIZE_ROW, entry

from .harness import Context, Loop


@njit(cache=True, parallel=True)
def _copy(a, b):
    for i in prange(a.size):
        b[i] = a[i]


@njit(cache=True, parallel=True)
def _triad(a, b, c, s):
    for i in prange(a.size):
        a[i] = b[i] + s * c[i]


@njit(cache=True, parallel=True)
def _inplace(x, s, t):
    for i in prange(x.size):
        x[i] = s * x[i] + t


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _read(x):
    acc = np.float32(0.0)  # a float32 accumulator lets Numba vectorize the reduction
    for i in prange(x.size):
        acc += x[i]
    return acc


@njit(cache=True, parallel=True)
def _sweep(buf):
    # Reads every cache line once: evicts what the last timed call left (clean or dirty).
    acc = 0
    for i in prange(buf.size // 16):
        acc += buf[16 * i]
    return acc


@njit(cache=True, parallel=True)
def _xor_table(table, tasks, chunk, like, k):
    # One parallel region over the byte chunks of every listed buffer: w ^= k, k = 0.
    for j in prange(tasks.shape[0]):
        t, lo = tasks[j, 0], tasks[j, 1]
        w = entry(table, 0, t, lo, min(chunk, table[SIZE_ROW, t] - lo), like)
        for i in range(w.size):
            w[i] ^= k


_XOR_CHUNK = 1 << 16  # bytes per task


def own_inplace(arrays: list[Any], xp: Any = np, key: int = 0) -> Loop:
    """The in-place loop over exactly ``arrays`` (C-contiguous, any dtype): every byte read,
    xor-ed with ``key`` (0: written back unchanged) and written, one parallel region on the
    CPU (one elementwise launch per array on the GPU). Bytes: read and write of each,
    2·Σ nbytes. The arrays must stay alive while the loop is used."""
    views = [a.reshape(-1).view(xp.uint8) for a in arrays if a.size]
    total = sum(int(v.size) for v in views)
    if xp is not np:
        k = xp.uint8(key)

        def run_gpu() -> None:
            for v in views:
                xp.bitwise_xor(v, k, out=v)

        return Loop(run_gpu, 2 * total, total)
    table = layout.build([views], address)
    tasks = layout.tasks([v.size for v in views], _XOR_CHUNK)
    like, k = np.zeros(1, np.uint8), np.uint8(key)
    return Loop(lambda: _xor_table(table, tasks, _XOR_CHUNK, like, k), 2 * total, total)


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache from sysfs (64 MiB when it cannot be read)."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for f in base.glob("index*/size"):
        text = f.read_text().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return best or 64 << 20


def cpu_flush() -> Callable[[], Any]:
    """A callable that sweeps 2× the last-level cache (at most 1 GiB) with plain reads."""
    nbytes = min(2 * last_level_cache_bytes(), 1 << 30)
    buf = np.ones(nbytes // 4, np.int32)
    _sweep(buf)
    return lambda: _sweep(buf)


def default_numel(ctx: Context) -> int:
    if ctx.numel:
        return ctx.numel
    if ctx.backend.name == "cuda":
        return 1 << 28  # 1 GiB of fp32 per array: far past the 50 MB L2
    return 1 << 25  # 128 MiB of fp32 per array: far past any CPU cache


def setup(ctx: Context) -> None:
    """Allocate the loops' arrays and register the loops and classes in ``ctx``."""
    n = default_numel(ctx)
    if ctx.backend.name == "cuda":
        import cupy

        a = cupy.random.standard_normal(n, dtype=cupy.float32)
        b = cupy.empty_like(a)
        ctx.loops = {"d2d_copy": Loop(lambda: cupy.copyto(b, a), 2 * 4 * n, n)}
        ctx.classes = {"inplace": ("d2d_copy",), "read": ("d2d_copy",)}
        return
    ctx.flush = cpu_flush()
    f = np.float32
    rng = np.random.default_rng(0)
    a, b, c, x = (rng.standard_normal(n, dtype=f) for _ in range(4))
    s, u = f(0.999), f(1e-3)
    ctx.loops = {
        "copy": Loop(lambda: _copy(a, b), 3 * 4 * n, n),
        "triad": Loop(lambda: _triad(a, b, c, s), 4 * 4 * n, n),
        "inplace": Loop(lambda: _inplace(x, s, u), 2 * 4 * n, n),
        "read": Loop(lambda: _read(a), 1 * 4 * n, n),
    }
    for loop in ctx.loops.values():  # compile and first-touch outside any timing
        loop.fn()
    inplace = ("copy", "triad", "inplace")
    ctx.classes = {"inplace": inplace, "read": ("read", *inplace)}


def report(ctx: Context) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """({class: GB/s}, {loop: details}) from every loop sample taken in the run."""
    loops = {
        name: {
            "loop": name,
            "numel": loop.numel,
            "bytes_per_elem": loop.nbytes // loop.numel,
            "median_s": float(np.median(loop.samples)),
            "samples": len(loop.samples),
            "gbps": loop.gbps(),
        }
        for name, loop in ctx.loops.items()
        if loop.samples
    }
    return ctx.ceiling_gbps(), loops
