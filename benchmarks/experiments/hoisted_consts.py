"""Experiment: what the float32 math's constants cost as literals against as an argument.

Compiles each activation backward's own loop (``activations._map3`` over the kind's rule)
twice: once with ``vmath.K32`` read as a global, which Numba freezes into literal constants,
and once with it passed in as an argument, as ``activations.backward`` does (runtime values
to LLVM). Both give the same bits (checked here). Times each over an L1-resident block on
one thread (best of ``--repeat``) and counts, in the hottest block of its machine code (the
vector loop), the instructions, the ``movabs`` (a constant's 64-bit address: Numba's large
code model re-materializes every literal that does not stay in a register) and the stack
operands (spilled values).

    python -m benchmarks.experiments.hoisted_consts [--kinds "gelu,gelu tanh"] [--numel N]
"""

from __future__ import annotations

import argparse
import re
import time
from functools import partial

import numpy as np
from numba import njit

from gpugd._cpu import activations as act
from gpugd._cpu.vmath import K32

from ..suite_act import KERNEL

_J = dict(error_model="numpy", fastmath={"contract"})


def loops(rule):
    """(literal, argument): ``rule``'s backward loop with K32 frozen as literals, and with it
    passed in as ``c``; each runs ``reps`` times over (dy, v) into dx."""

    @njit(**_J)
    def literal(dy, v, dx, a, b, reps):
        for _ in range(reps):
            act._map3(rule, dy, v, dx, a, b, K32, False)

    @njit(**_J)
    def argument(dy, v, dx, a, b, c, reps):
        for _ in range(reps):
            act._map3(rule, dy, v, dx, a, b, c, False)

    return literal, argument


def hot_loop(fn) -> list[str]:
    """The instructions of the basic block of ``fn``'s machine code with the most vector
    (xmm/ymm/zmm) operands: its vector loop."""
    asm = "\n".join(fn.inspect_asm().values())
    blocks = re.split(r"\n(?=\.LBB\d+_\d+:)", asm)
    return [ln for ln in max(blocks, key=lambda b: b.count("mm")).splitlines() if ln[:1] == "\t"]


def _hot_block(fn) -> tuple[int, int, int]:
    """(instructions, movabs, stack operands) of ``hot_loop(fn)``."""
    lines = hot_loop(fn)
    return len(lines), sum("movabs" in ln for ln in lines), sum("(%rsp)" in ln for ln in lines)


def _best_ns(call, numel: int, reps: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        call(reps)
        best = min(best, time.perf_counter() - t0)
    return best / (reps * numel) * 1e9


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="elu,gelu,gelu tanh,softplus,silu")
    ap.add_argument("--numel", type=int, default=2048, help="elements per block (L1)")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    dy = rng.standard_normal(args.numel).astype(np.float32)
    v = (rng.standard_normal(args.numel) * 3).astype(np.float32)
    reps = max(1, (1 << 22) // args.numel)
    print(f"{'kind':10s} {'form':8s} {'ns/elem':>8s} {'instrs':>6s} {'movabs':>6s} {'stack':>5s}")
    for name in args.kinds.split(","):
        kind, a, b = KERNEL[name]
        a, b = np.float32(a), np.float32(b)
        rule = getattr(act, f"_{act.KINDS[kind]}_b")
        literal, argument = loops(rule)
        out_l, out_a = np.empty_like(dy), np.empty_like(dy)
        forms = {
            "literal": (literal, partial(literal, dy, v, out_l, a, b)),
            "argument": (argument, partial(argument, dy, v, out_a, a, b, K32)),
        }
        for _, call in forms.values():
            call(1)
        same = np.array_equal(out_l.view(np.uint32), out_a.view(np.uint32))
        for form, (fn, call) in forms.items():
            ns = _best_ns(call, args.numel, reps, args.repeat)
            n_ins, n_abs, n_stack = _hot_block(fn)
            print(f"{name:10s} {form:8s} {ns:8.3f} {n_ins:6d} {n_abs:6d} {n_stack:5d}")
        print(f"{name:10s} same bits: {same}", flush=True)
        if not same:
            raise SystemExit(f"{name}: the two forms disagree")


if __name__ == "__main__":
    main()
