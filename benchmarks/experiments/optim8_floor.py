"""Experiment: how fast could the CPU 8-bit Adam step be here if its code-map lookups cost
nothing, against fp32 Adam (the issue's target: 8-bit ≥ 1.3× fp32 Adam's speed)?

Times, over arrays of ``--numel`` elements (float32 p, g; 8-bit m, v in blocks of 2048):

* ``adam8bit_``: ``gpugd.ops.adam8bit_`` as shipped;
* ``kernel``: a copy of ``gpugd._cpu.optim8._adam8``'s loops built from its own helpers
  (two passes per block: dequantize + rule + absmax into an L1 scratch, then requantize);
* ``no dequant lookup``: the same with ``qmap[code]`` replaced by ``float(code)`` (a
  conversion instead of a gather);
* ``no quant lookup``: the requantizing bucket-table lookup replaced by ``int(r·100)``;
* ``no lookups``: both replaced: what is left is the rule, the scales and the block
  bookkeeping, the floor of any lookup-free code map with this structure;
* ``adam_`` fp32: ``gpugd.ops.adam_`` over fp32 m, v (28 B per element against 16);
* ``fp32 rule alone``: Adam's float32 arithmetic per element, serial over an L1-resident
  4096-element set, in ns per element and core (the arithmetic every variant pays).

The variants give wrong codes (they measure, not update). Rows are timed round-robin at ``--numel``
with all Numba threads and, serially, over 2^15 elements (in L2: the compute cost without
memory stalls, ns per element). Prints each row's time and its ratio to ``adam_``.

    python -m benchmarks.experiments.optim8_floor [--numel N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from numba import njit, prange

from gpugd import ops, quant8
from gpugd._cpu import optim8 as k8
from gpugd.ops.optim8 import adam8bit_, state8

F = np.float32
BS = quant8.BLOCK


def _variant(dequant: bool, quant: bool) -> Callable:
    """``_adam8``'s loops (fp32 p, no masters, nearest) with each lookup kept or replaced."""
    _wide, _at, _code, _adam, _grad = k8._wide, k8._at, k8._code, k8._adam, k8._grad
    _absbits, _from_bits, _inverse = k8._absbits, k8._from_bits, k8._inverse

    @njit(nogil=True, parallel=True, error_model="numpy")
    def kern(w, g, mq, ma, vq, va, qs, qu, ts, tu, sc):
        n = w.size
        nb = (n + BS - 1) // BS
        for c in prange((nb + k8.CHUNK - 1) // k8.CHUNK):
            _wide()
            xm = np.empty(BS, np.float32)
            xv = np.empty(BS, np.float32)
            for b in range(c * k8.CHUNK, min(nb, (c + 1) * k8.CHUNK)):
                lo = b * BS
                cnt = min(BS, n - lo)
                s0, s1 = ma[b], va[b]
                mx0 = np.int32(0)
                mx1 = np.int32(0)
                for k in range(cnt):
                    i = np.uint64(lo + k)
                    if dequant:
                        a0, a1 = _at(qs, mq[i]) * s0, _at(qu, vq[i]) * s1
                    else:
                        a0, a1 = np.float32(mq[i]) * s0, np.float32(vq[i]) * s1
                    pi, m, v = _adam(
                        w[i], _grad(g[i], sc[0], sc[1]), a0, a1, sc[2], sc[3], sc[4],
                        sc[5], sc[6], sc[7], sc[8], sc[9], sc[10],
                    )  # fmt: skip
                    w[i] = pi
                    xm[k] = m
                    xv[k] = v
                    mx0 = max(mx0, _absbits(m))
                    mx1 = max(mx1, _absbits(v))
                a0, a1 = _from_bits(mx0), _from_bits(mx1)
                ma[b], va[b] = a0, a1
                r0, r1 = _inverse(a0), _inverse(a1)
                for k in range(cnt):
                    j = np.uint64(lo + k)
                    if quant:
                        mq[j] = _code(xm[k] * r0, ts)
                        vq[j] = _code(xv[k] * r1, tu)
                    else:
                        mq[j] = np.uint8(np.int32(xm[k] * r0 * np.float32(100)))
                        vq[j] = np.uint8(np.int32(xv[k] * r1 * np.float32(100)))

    return kern


@njit(nogil=True, error_model="numpy")
def _rule_alone(w, g, m, v, sc, reps):
    for _ in range(reps):
        for i in range(w.size):
            pi, mi, vi = k8._adam(
                w[i], k8._grad(g[i], sc[0], sc[1]), m[i], v[i], sc[2], sc[3], sc[4], sc[5],
                sc[6], sc[7], sc[8], sc[9], sc[10],
            )  # fmt: skip
            w[i], m[i], v[i] = pi, mi, vi


def _rows(n: int) -> dict[str, Callable[[], None]]:
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(F)
    g = (rng.standard_normal(n) * 1e-2).astype(F)
    m, v = state8((n,), True), state8((n,), False)
    for t in range(1, 4):  # codes spread as after a few steps
        adam8bit_(p, g, m, v, step=t)
    m32 = quant8.dequantize(m.codes, m.absmax, True)
    v32 = quant8.dequantize(v.codes, v.absmax, False)
    qs, qu = quant8.code_map(True), quant8.code_map(False)
    ts, tu = k8.bucket_table(qs), k8.bucket_table(qu)
    # 1, clip, β1, 1−β1, β2, 1−β2, ε, wd, decay, step size, 1/√(1−β2^t) as at step 10
    bc2 = 1 / np.sqrt(1 - 0.999**10)
    sc = np.array([1, 3e38, 0.9, 0.1, 0.999, 0.001, 1e-8, 0, 1, 1e-3, bc2], F)
    rows: dict[str, Callable[[], None]] = {
        "adam8bit_": lambda: adam8bit_(p, g, m, v, step=10),
    }
    for name, dq, qn in (
        ("kernel", True, True),
        ("no dequant lookup", False, True),
        ("no quant lookup", True, False),
        ("no lookups", False, False),
    ):
        kern = _variant(dq, qn)
        mq, vq = m.codes.copy(), v.codes.copy()
        ma, va = m.absmax.copy(), v.absmax.copy()
        rows[name] = lambda kern=kern, mq=mq, vq=vq, ma=ma, va=va: kern(
            p, g, mq, ma, vq, va, qs, qu, ts, tu, sc
        )
    rows["adam_ fp32"] = lambda: ops.adam_(p, g, m32, v32, step=10)
    return rows


def _medians(rows: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each row, timed round-robin (a slow spell of the shared machine
    falls on every row alike)."""
    for f in rows.values():
        f()
    ts: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(rounds):
        for k, f in rows.items():
            t = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1 << 24)
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args(argv)
    import numba

    big, small = _rows(a.numel), _rows(1 << 15)
    t_big = _medians(big, a.rounds)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    t_small = _medians(small, 20 * a.rounds)
    numba.set_num_threads(threads)
    ref = t_big["adam_ fp32"]
    print(f"numel {a.numel}, {threads} threads; serial column: 2^15 elements, 1 thread")
    print(f"{'row':<20} {'ms':>8} {'adam_ fp32 / row':>17} {'serial ns/el':>13}")
    for k in big:
        print(f"{k:<20} {t_big[k] * 1e3:8.2f} {ref / t_big[k]:16.2f}x "
              f"{t_small[k] * 1e9 / (1 << 15):13.2f}")  # fmt: skip
    rng = np.random.default_rng(1)
    w, g, m, v = (rng.random(4096).astype(F) for _ in range(4))
    sc = np.array([1, 3e38, 0.9, 0.1, 0.999, 0.001, 1e-8, 0, 1, 1e-3, 1.0], F)
    _rule_alone(w, g, m, v, sc, 1)
    reps = 20000
    t = time.perf_counter()
    _rule_alone(w, g, m, v, sc, reps)
    ns = (time.perf_counter() - t) / (4096 * reps) * 1e9
    print(f"{'fp32 rule alone':<20} {'':>8} {'':>17} {ns:13.2f}  (L1-resident, serial)")
    need = ref / 1.3
    print(f"1.3x adam_ fp32 needs {need * 1e3:.2f} ms: {need * 1e9 * threads / a.numel:.2f} ns "
          "per element and core, memory stalls included")  # fmt: skip


if __name__ == "__main__":
    main()
