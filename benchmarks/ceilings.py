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
(streams that read and write); ``read`` = the read loop alone (no longer floored at the
``inplace`` figure).

GPU (CuPy): device-to-device copy, 2 words/elem (no write-allocate on the GPU), timed with
CUDA events; both classes take it.

``own_inplace(arrays)``: the in-place loop over a kernel's own buffers (every byte read and
rewritten unchanged, x ^= 0 with the 0 unknown to the compiler): the ceiling for exactly
the memory the kernel touches. On the CPU VMs this project runs on, memory is not uniform:
128 MiB arrays allocated one after another have streamed in place at 46 to 57 GB/s in one
run, each array steady across that run's rounds, and within 5–9% of each other in runs
minutes later (``python -m benchmarks.experiments.placement``), so a loop over arrays of its
own holds a kernel against a placement lottery.

``traffic(reads, mods, writes)``: the loop with a kernel's own traffic over its own buffers
(every byte of ``reads`` read, of ``mods`` read and rewritten unchanged, of ``writes``
written): r/m/w in a row's ``ceiling`` name count them, e.g. ``r2w1`` (an out-of-place
activation backward: dy and x read, dx written fresh), ``r1m1`` (in place: x read, dy
rewritten), ``r1m3`` (Adam: g read; p, m, v rewritten), ``r1+r1m3`` (two passes: the norm,
then the update; the ceiling is the sum of the passes' times). Its bytes are the fewest
the kernel must move, counted as the kernel's row counts them (a fresh write once), so a
row's percentage is the loop's time over the kernel's for the same traffic on the same
memory; where a CPU write-allocates, the loop pays for it as the kernel does.
``act_math(kind)``: the compute bound of an activation backward: its own loop over blocks
that stay in L1, every core, as ns per element and as the GB/s its bytes would make;
``adam_math`` the same for the Adam kernel, ``reduce_math`` for the norm pass (its sums of
squares and, when counted, zeros), ``optim8_math`` for the 8-bit Adam and Lion kernels (a
task's blocks: dequantize, the rule, the absmax, requantize) over L2-resident blocks.
``against(ctx, fns, passes, nbytes, math)`` times the kernel with those loops round-robin
and gives the tighter of the two bounds (``MIX_NOTES`` says what each name means).

The loops are not timed in a phase of their own: ``Context.measure`` runs the loops of a
kernel's class round-robin with the kernel, and a loop's figure is the median of all its
samples in the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from gpugd import _tensor_table as layout
from gpugd import quant8 as _q8
from gpugd._cpu import activations as _act
from gpugd._cpu import optim as _opt
from gpugd._cpu import optim8 as _o8
from gpugd._cpu import reduce as _red
from gpugd._cpu.tensor_table import SIZE_ROW, entry
from gpugd._validate import address

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


_XOR_CHUNK = 1 << 16  # bytes per task


def own_inplace(arrays: list[Any], xp: Any = np, key: int = 0) -> Loop:
    """The in-place loop over exactly ``arrays`` (C-contiguous, any dtype): every byte read,
    xor-ed with ``key`` (0: written back unchanged) and written, one parallel region on the
    CPU (one elementwise launch per array on the GPU). Bytes: read and write of each,
    2·Σ nbytes. The arrays must stay alive while the loop is used. ``traffic([], arrays)``."""
    return traffic([], arrays, [], xp, key)


READ, MODIFY, WRITE = 0, 1, 2  # what ``traffic`` does to each buffer


@njit(cache=True, parallel=True)
def _traffic_table(table, tasks, kinds, chunk, like, k, sink):
    # One parallel region over the byte chunks of every buffer, in (offset, buffer) order so
    # each thread streams all buffers side by side, as a kernel does: read (xor into sink),
    # rewrite unchanged (w ^= k, k = 0) or write k.
    for j in prange(tasks.shape[0]):
        t, lo = tasks[j, 0], tasks[j, 1]
        w = entry(table, 0, t, lo, min(chunk, table[SIZE_ROW, t] - lo), like)
        kind = kinds[t]
        if kind == READ:
            acc = np.uint8(0)
            for i in range(w.size):
                acc ^= w[i]
            sink[j] = acc
        elif kind == MODIFY:
            for i in range(w.size):
                w[i] ^= k
        else:
            for i in range(w.size):
                w[i] = k


def mix_name(reads: int, mods: int, writes: int) -> str:
    """``r2w1``-style name of a traffic mix: read-only, rewritten and fresh-written arrays."""
    return "".join(f"{c}{k}" for c, k in (("r", reads), ("m", mods), ("w", writes)) if k)


MIX_NOTES = {
    "rN": "N arrays read (no write)",
    "mN": "N arrays read and rewritten in place",
    "wN": "N arrays written fresh (write-allocate, where the CPU does it, paid as the kernel)",
    "a+b": "two passes: the sum of the loops' times",
    "math": "compute bound: the kernel's own math over cache-resident buffers, every core",
}


def traffic(
    reads: list[Any], mods: list[Any] = (), writes: list[Any] = (), xp: Any = np, key: int = 0
) -> Loop:
    """The loop over a kernel's own buffers with its traffic: ``reads`` read, ``mods`` read and
    rewritten unchanged, ``writes`` overwritten (scratch outputs only: their values are
    lost). Bytes: Σ reads + 2·Σ mods + Σ writes. The arrays must stay alive while it is used.
    A buffer that appears twice (an in-place output) counts once, as a ``mod``. ``key``
    (tests): mods are xor-ed with it, writes set to it."""
    seen: dict[int, int] = {}
    order: list[Any] = []
    for kind, group in ((MODIFY, mods), (WRITE, writes), (READ, reads)):
        for a in group:
            if id(a) not in seen and a.size:
                seen[id(a)] = kind
                order.append(a)
    views = [a.reshape(-1).view(xp.uint8) for a in order]
    kinds = np.array([seen[id(a)] for a in order], np.int64)
    nbytes = sum(int(v.size) * (2 if k == MODIFY else 1) for v, k in zip(views, kinds, strict=True))
    numel = max((int(a.size) for a in order), default=0)
    if xp is not np:
        k8 = xp.uint8(key)

        def run_gpu() -> None:
            for v, k in zip(views, kinds, strict=True):
                if k == READ:
                    xp.bitwise_xor.reduce(v)
                elif k == MODIFY:
                    xp.bitwise_xor(v, k8, out=v)
                else:
                    v.fill(k8)

        return Loop(run_gpu, nbytes, numel)
    table = layout.build([views], address)
    tasks = layout.tasks([v.size for v in views], _XOR_CHUNK)
    tasks = tasks[np.lexsort((tasks[:, 0], tasks[:, 1]))]  # by offset, then buffer
    like, k = np.zeros(1, np.uint8), np.uint8(key)
    sink = np.zeros(len(tasks), np.uint8)
    return Loop(
        lambda: _traffic_table(table, tasks, kinds, _XOR_CHUNK, like, k, sink), nbytes, numel
    )


_MATH_BLOCK = 2048  # elements per thread: act's dy, x, dx in 24 KiB of L1; Adam's in L2


@njit(cache=True, parallel=True)
def _act_math_loop(kind, dy, v, dx, a, b, c, reps, forward):
    for t in prange(dy.shape[0]):
        for _ in range(reps):
            if forward:
                _act._forward_serial(kind, v[t], dx[t], a, b, c, _act.SEPARATE, False)
            else:
                _act._backward_serial(kind, dy[t], v[t], dx[t], a, b, c, _act.SEPARATE, False)


def act_math(
    kind: int,
    a: float,
    b: float,
    bytes_per_elem: int = 12,
    numel: int = 1 << 22,
    forward: bool = False,
) -> Loop:
    """The compute bound of activation ``kind``'s backward (fp32; its forward y = f(x) with
    ``forward``): its own serial loop over L1-resident blocks, one per thread, ``numel``
    elements in all per call; the Loop's bytes are the kernel's (``bytes_per_elem`` each),
    so its GB/s is what the math allows."""
    import numba

    threads = numba.get_num_threads()
    rng = np.random.default_rng(0)
    dy = rng.standard_normal((threads, _MATH_BLOCK)).astype(np.float32)
    v = (rng.standard_normal((threads, _MATH_BLOCK)) * 3).astype(np.float32)
    dx = np.empty_like(dy)
    reps = max(1, numel // (threads * _MATH_BLOCK))
    f = np.float32
    loop = Loop(
        lambda: _act_math_loop(kind, dy, v, dx, f(a), f(b), _act.K32, reps, forward),
        bytes_per_elem * reps * threads * _MATH_BLOCK,
        reps * threads * _MATH_BLOCK,
    )
    loop.fn()
    return loop


@njit(cache=True, parallel=True)
def _reduce_math_loop(x, zeros, reps, out):
    for t in prange(x.shape[0]):
        for _ in range(reps):  # stored every time, so the sums are not optimized away
            out[t, 0], out[t, 1] = _red.chunk_stats(x[t], zeros)


def reduce_math(zeros: bool, numel: int = 1 << 22) -> Loop:
    """The compute bound of the CPU norm pass (fp32): ``reduce.chunk_stats`` (Σ x², and the
    zero count when ``zeros``) over L1-resident blocks, one per thread, ``numel`` elements
    in all per call; the Loop's bytes are the kernel's 4 per element. ``loop.out`` holds
    each block's (Σ x², zeros) after a call."""
    import numba

    threads = numba.get_num_threads()
    x = np.random.default_rng(0).standard_normal((threads, _MATH_BLOCK)).astype(np.float32)
    x[:, ::7] = 0.0
    out = np.zeros((threads, 2))
    reps = max(1, numel // (threads * _MATH_BLOCK))
    loop = Loop(lambda: _reduce_math_loop(x, zeros, reps, out), 4 * reps * x.size, reps * x.size)
    loop.fn()
    loop.block, loop.out = x, out
    return loop


_F = np.float32
# Adam's scalars for the compute bound, in ``_apply_adam``'s order: β1, 1 − β1, β2, 1 − β2,
# ε, weight-decay term, decay factor, AMSGrad off, step size, 1/√(bias correction 2),
# gradient scale, clip off
_ADAM_SCALARS = (
    *(_F(0.9), _F(0.1), _F(0.999), _F(0.001), _F(1e-8), _F(0.0), _F(1.0)),
    *(False, _F(1e-3), _F(1.0), _F(1.0), _F(np.inf)),
)


def _row(a, t):
    """Row t of a 2-D array, or None for None."""


@overload(_row, inline="always")
def _row_impl(a, t):
    if isinstance(a, types.NoneType):
        return lambda a, t: None
    return lambda a, t: a[t]


@njit(cache=True, parallel=True)
def _adam_math_loop(p, g, m, v, out, rnd, reps):
    for t in prange(p.shape[0]):
        o = _row(out, t)
        for _ in range(reps):
            _opt._apply_adam(p[t], g[t], m[t], v[t], v[t], o, rnd, *_ADAM_SCALARS)


def adam_math(
    param: Any,
    state: Any,
    master: bool,
    stochastic: bool,
    bytes_per_elem: int,
    numel: int = 1 << 22,
) -> Loop:
    """The compute bound of the CPU Adam kernel (``optim._apply_adam``, the per-element
    code of every Adam call) for a precision policy: parameters/gradients of dtype
    ``param``, states ``state``, an fp32 master copy or not, stochastic rounding or not;
    its own loop over L2-resident blocks (``_MATH_BLOCK`` elements), one per thread,
    ``numel`` elements in all per call. The Loop's bytes are the policy's fewest
    (``bytes_per_elem`` each), so its GB/s is what the math allows."""
    import numba

    from gpugd._cpu.precision import kernel_view

    threads = numba.get_num_threads()
    rng = np.random.default_rng(0)
    shape = (threads, _MATH_BLOCK)

    def arr(dtype: Any, scale: float) -> np.ndarray:
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        return kernel_view(a.astype(dtype))

    p = arr(np.float32 if master else param, 1.0)
    out = arr(param, 1.0) if master else None
    g, m = arr(param, 1e-2), arr(state, 1e-3)
    v = kernel_view(np.abs(rng.standard_normal(shape) * 1e-6).astype(np.float32).astype(state))
    rnd = (np.uint32(12345), np.int64(0)) if stochastic else None
    reps = max(1, numel // (threads * _MATH_BLOCK))
    loop = Loop(
        lambda: _adam_math_loop(p, g, m, v, out, rnd, reps),
        bytes_per_elem * reps * threads * _MATH_BLOCK,
        reps * threads * _MATH_BLOCK,
    )
    loop.fn()
    return loop


@njit(cache=True, parallel=True)
def _adam8_math_loop(w, g, mq, ma, vq, va, qs, qu, ts, tu, reps, nb, sc):
    # thread t: blocks t·nb .. (t + 1)·nb − 1 of the flat arrays, as a kernel task runs them
    for t in prange(ma.size // nb):
        _o8._wide()
        xm = np.empty(_q8.BLOCK, np.float32)
        xv = np.empty(_q8.BLOCK, np.float32)
        for _ in range(reps):
            _o8._adam8_blocks(
                t * nb, (t + 1) * nb, xm, xv, w, g, None, None, mq, ma, vq, va, qs, qu,
                ts, tu, _q8.BLOCK, sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7],
                sc[8], sc[9], sc[10],
            )  # fmt: skip


_LION = _o8.LION  # a global of this module: a constant in the loop (as _o8.LION it was not,
# and the loop branched on it and did not vectorize)


@njit(cache=True, parallel=True)
def _lion8_math_loop(w, g, bq, ba, qs, tab, reps, nb, sc):
    for t in prange(ba.size // nb):
        _o8._wide()
        xb = np.empty(_q8.BLOCK, np.float32)
        for _ in range(reps):
            _o8._one8_blocks(
                _LION, t * nb, (t + 1) * nb, xb, w, g, None, None, bq, ba, qs, tab,
                _q8.BLOCK, sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7],
            )  # fmt: skip


# the 8-bit rules' scalars for their compute bound, in ``_adam8``'s and ``_one8``'s order:
# Adam as _ADAM_SCALARS (no AMSGrad flag); Lion lr, β1, 1 − β1, β2, 1 − β2, 1 − lr·wd;
# then the gradient scale and the clip (off)
_ADAM8_SCALARS = (*_ADAM_SCALARS[:7], *_ADAM_SCALARS[8:])
_LION8_SCALARS = (
    *(_F(1e-4), _F(0.9), _F(0.1), _F(0.99), _F(0.01), _F(1.0)),
    *(_F(1.0), _F(np.inf)),
)
_MATH8_BLOCKS = 8  # quantization blocks per thread: 16,384 elements, their bytes in L2


def optim8_math(rule: str, param: Any, bytes_per_elem: float, numel: int = 1 << 22) -> Loop:
    """The compute bound of the CPU 8-bit ``rule`` ("adam" or "lion", blockwise 8-bit
    states, block 2048, parameters of dtype ``param``, no master weights):
    ``optim8._adam8_blocks`` / ``_one8_blocks`` (the per-task code of every call: dequantize,
    the rule, the absmax, requantize) over ``_MATH8_BLOCKS`` L2-resident blocks per thread,
    ``numel`` elements in all per call. The Loop's bytes are the row's (``bytes_per_elem``
    each), so its GB/s is what the math allows."""
    import numba

    from gpugd._cpu.precision import kernel_view

    threads = numba.get_num_threads()
    rng = np.random.default_rng(0)
    per, nb = _MATH8_BLOCKS * _q8.BLOCK, _MATH8_BLOCKS

    def arr(scale: float) -> np.ndarray:
        a = (rng.standard_normal(threads * per) * scale).astype(np.float32)
        return kernel_view(a.astype(param))

    w, g = arr(1.0), arr(1e-3)
    qs, qu = _q8.code_map(True), _q8.code_map(False)
    ts, tu = _o8.bucket_table(qs), _o8.bucket_table(qu)
    reps = max(1, numel // (threads * per))
    if rule == "adam":
        states = [_q8.zeros(threads * per, True), _q8.zeros(threads * per, False)]
        (mq, ma), (vq, va) = states
        sc = _ADAM8_SCALARS
        fn = lambda: _adam8_math_loop(w, g, mq, ma, vq, va, qs, qu, ts, tu, reps, nb, sc)  # noqa: E731
    elif rule == "lion":
        states = [_q8.zeros(threads * per, True)]
        (bq, ba) = states[0]
        fn = lambda: _lion8_math_loop(w, g, bq, ba, qs, ts, reps, nb, _LION8_SCALARS)  # noqa: E731
    else:
        raise ValueError(f"rule: expected 'adam' or 'lion', got {rule!r}")
    loop = Loop(fn, round(bytes_per_elem * reps * threads * per), reps * threads * per)
    for _ in range(3):  # the states leave their all-zero start, as in the suite's rows
        loop.fn()
    loop.arrays, loop.reps = (w, g, states), reps  # (p, g, [(codes, absmax), ...]): tests
    return loop


def against(
    ctx: Context,
    fns: dict[str, Callable[[], Any]],
    passes: dict[str, Loop],
    nbytes: int,
    math: Loop | None = None,
) -> tuple[dict[str, Any], float, str, dict[str, Any]]:
    """Time ``fns`` round-robin with the ``passes`` loops (one per pass of the kernel, over
    its own buffers) and the optional compute bound ``math``. Returns (timings, ceiling GB/s
    for ``nbytes``, ceiling name, row fields): the memory ceiling is ``nbytes`` over the sum
    of the passes' median times; with ``math``, the tighter of it and the math's GB/s. The
    row fields: ``bounds`` (mem, mem_gbps, loops_gbps; math_ns_per_elem, math_gbps) and
    ``detail`` (them as text)."""
    extra = {f"ceiling {k}": lp.fn for k, lp in passes.items()}
    if math is not None:
        extra["ceiling math"] = math.fn
    t, _ = ctx.measure({**fns, **extra}, "read")  # any class: its figure is not used
    mem_s = sum(t[f"ceiling {k}"].median_s for k in passes)
    bounds: dict[str, Any] = {
        "mem": "+".join(passes),
        "mem_gbps": nbytes / mem_s / 1e9,
        "loops_gbps": {k: lp.nbytes / t[f"ceiling {k}"].median_s / 1e9 for k, lp in passes.items()},
    }
    name, best = bounds["mem"], bounds["mem_gbps"]
    if math is not None:
        name, best = tighten(bounds, math, t["ceiling math"].median_s, name, best)
    info = {"bounds": bounds, "detail": bounds_text(bounds)}
    timings = {k: v for k, v in t.items() if k in fns}
    return timings, best, name, info


def tighten(
    bounds: dict[str, Any], math: Loop, math_s: float, name: str, best: float
) -> tuple[str, float]:
    """Add a compute bound that took ``math_s`` per call to ``bounds`` (``math_ns_per_elem``,
    ``math_gbps``); return the tighter of (name, GB/s) and ("math", its GB/s)."""
    bounds["math_ns_per_elem"] = math_s / math.numel * 1e9
    bounds["math_gbps"] = math.nbytes / math_s / 1e9
    return ("math", bounds["math_gbps"]) if bounds["math_gbps"] < best else (name, best)


def bounds_text(b: dict[str, Any]) -> str:
    """A row's detail column: both bounds (memory loop and, where measured, math)."""
    text = f"{b['mem']} {b['mem_gbps']:.1f} GB/s"
    if "math_gbps" in b:
        text += f", math {b['math_ns_per_elem']:.3f} ns/elem ({b['math_gbps']:.1f} GB/s)"
    return text


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
    ctx.classes = {"inplace": inplace, "read": ("read",)}


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
