"""Experiment: are the CPU code-generation choices made per CPU family still right on this
host? Each choice is a module constant read when Numba compiles; this script times both
settings of one, each in a child process of its own with a private Numba cache (so neither
setting's cached code is reused by the other), children alternated ``--runs`` times.

* ``gather``: ``gpugd._cpu.optim8.NO_GATHER`` (AMD Zen with AVX-512: no gathers) on and off:
  8-bit Adam and Lion (``gpugd.ops``) over float32 and bfloat16 parameters.
* ``streams``: ``gpugd._cpu.vector.FOUR_STREAMS`` / ``reduce.FOUR_STREAMS`` (four interleaved
  streams per thread in the sums of squares) off and on: the norm pass over one 2^24 float32
  array and over 1,000 tensors of 64-8191 elements, with the read loop over the same buffers.

Every call is timed after a cache sweep (``ceilings.cpu_flush``), round-robin within a
child; each child prints the medians of ``--rounds`` rounds in ms.

    python -m benchmarks.experiments.codegen_choices [--choice gather|streams] [--rounds R]
        [--runs K] [--numel N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

from . import round_robin_ms


def _gather(on: bool, rounds: int, n: int) -> str:
    import ml_dtypes

    from gpugd._cpu import optim8

    optim8.NO_GATHER = not on  # before the first compile: _wide reads it then
    from gpugd import _hostmem, ops
    from gpugd.ops.optim8 import state8

    rng = np.random.default_rng(3)
    out = []
    for dt in (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16)):
        p = _hostmem.copy_of(rng.standard_normal(n).astype(np.float32).astype(dt))
        g = _hostmem.copy_of((rng.standard_normal(n) * 1e-3).astype(np.float32).astype(dt))
        sa = [tuple(_hostmem.copy_of(a) for a in state8(n, s)) for s in (True, False)]
        sl = tuple(_hostmem.copy_of(a) for a in state8(n, True))
        med = round_robin_ms(
            {
                "adam8": lambda p=p, g=g, sa=sa: ops.adam8bit_(p, g, *sa, lr=1e-3, step=10),
                "lion8": lambda p=p, g=g, sl=sl: ops.lion8bit_(p, g, sl, lr=1e-4),
            },
            rounds,
        )
        out.append(f"{dt.name} adam8 {med['adam8']:.2f} lion8 {med['lion8']:.2f}")
    return f"gathers {'on ' if on else 'off'}: " + " | ".join(out)


def _streams(four: bool, rounds: int, n: int) -> str:
    from gpugd._cpu import reduce, vector

    reduce.FOUR_STREAMS = vector.FOUR_STREAMS = four
    from gpugd.ops.reduce import Reduction

    from ..ceilings import traffic

    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(np.float32)
    small = [rng.standard_normal(int(k)).astype(np.float32) for k in rng.integers(64, 8192, 1000)]
    big, many = Reduction(x), Reduction(small)
    med = round_robin_ms(
        {
            "flat": big.run,
            "flat loop": traffic([x]).fn,
            "1000": many.run,
            "1000 loop": traffic(small).fn,
        },
        rounds,
    )
    text = " ".join(f"{k} {v:.3f}" for k, v in med.items())
    return f"{'four streams' if four else 'one stream  '}: {text}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--choice", choices=("gather", "streams"), default="gather")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=2, help="children per setting, alternated")
    ap.add_argument("--numel", type=int, default=1 << 24)
    ap.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child is not None:
        run = _gather if a.choice == "gather" else _streams
        print(run(a.child == "on", a.rounds, a.numel), flush=True)
        return
    for _ in range(a.runs):
        for setting in ("on", "off"):
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "NUMBA_CACHE_DIR": cache}
                cmd = [sys.executable, "-m", __spec__.name, "--choice", a.choice]
                cmd += ["--rounds", str(a.rounds), "--numel", str(a.numel), "--child", setting]
                subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
    main()
