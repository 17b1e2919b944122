"""Experiment: why an activation backward in place can run slower than out of place.

Times ``gpugd._cpu.activations`` backward kernels directly, round-robin, every call after a
cache sweep (``ceilings.cpu_flush``) and after restoring dy from a pristine copy (the
in-place forms overwrite it), in four forms: out of place and in place (dx = dy), each with
and without the block prefetches (``vmath.prefetch_block``), and torch's in-place backward
beside them when importable. Prints the median ms of each form per kind.

    python -m benchmarks.experiments.inplace_act [--numel N] [--rounds R] [--kinds relu,silu]
        [--hot CALLS]  (in cache: no sweep, CALLS calls in a row per sample)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gpugd._cpu import activations as act

from ..ceilings import cpu_flush
from ..suite_act import KERNEL


def _torch_inplace(name: str):
    try:
        import torch
    except ImportError:
        return None
    ops = {
        "relu": lambda dy, v: torch.ops.aten.threshold_backward.grad_input(
            dy, v, 0.0, grad_input=dy
        ),
        "softplus": lambda dy, v: torch.ops.aten.softplus_backward.grad_input(
            dy, v, 1.0, 20.0, grad_input=dy
        ),
        "silu": lambda dy, v: torch.ops.aten.silu_backward.grad_input(dy, v, grad_input=dy),
        "gelu": lambda dy, v: torch.ops.aten.gelu_backward.grad_input(dy, v, grad_input=dy),
        "sigmoid": lambda dy, v: torch.ops.aten.sigmoid_backward.grad_input(dy, v, grad_input=dy),
    }
    fn = ops.get(name)
    if fn is None:
        return None
    return lambda dy, v: fn(torch.from_numpy(dy), torch.from_numpy(v))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1 << 24)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--kinds", default="relu,softplus,silu,gelu")
    ap.add_argument("--hot", type=int, default=0, help="no sweep; time this many calls in a row")
    args = ap.parse_args(argv)
    n = args.numel
    rng = np.random.default_rng(0)
    v = rng.standard_normal(n).astype(np.float32)
    pristine = rng.standard_normal(n).astype(np.float32)
    dy = pristine.copy()
    out = np.empty_like(v)
    flush = cpu_flush()
    run = act._backward_parallel if n >= act.PARALLEL_MIN else act._backward_serial
    for name in args.kinds.split(","):
        kind, a, b = KERNEL[name]
        a, b = np.float32(a), np.float32(b)  # as ops passes them for float32 arrays

        def form(dst, alias, pf, kind=kind, a=a, b=b):
            return lambda: run(kind, dy, v, dst, a, b, act.K32, alias, pf)

        forms = {
            "out pf=0": form(out, act.SEPARATE, False),
            "out pf=1": form(out, act.SEPARATE, True),
            "in pf=0": form(dy, act.OVER_FIRST, False),
            "in pf=1": form(dy, act.OVER_FIRST, True),
        }
        peer = _torch_inplace(name)
        if peer is not None:
            forms["torch in"] = lambda peer=peer: peer(dy, v)
        for fn in forms.values():
            fn()  # compile / warm
        times: dict[str, list[float]] = {k: [] for k in forms}
        for _ in range(args.rounds):
            for label, fn in forms.items():
                np.copyto(dy, pristine)
                if args.hot:
                    t0 = time.perf_counter()
                    for _ in range(args.hot):
                        fn()
                    times[label].append((time.perf_counter() - t0) / args.hot)
                    continue
                flush()
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
        cells = "  ".join(f"{k} {1e3 * float(np.median(t)):7.2f}" for k, t in times.items())
        print(f"{name:9s} {cells}", flush=True)


if __name__ == "__main__":
    main()
