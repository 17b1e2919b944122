"""Shared runner of the throughput suite: timing, rows, the table and the JSON file.

A row holds the DESIGN.md schema — ``kernel, backend, device, dtype, numel, tensors,
median_s, bytes, gbps, ceiling, ceiling_gbps, pct_of_ceiling, baselines`` — plus the tags
``versions`` and ``time``. ``bytes`` is the fewest bytes the op must move; ``gbps`` is
``bytes / median_s / 1e9``; ``baselines`` maps a peer to ``peer_median_s / gpugd_median_s``
(above 1: gpugd is faster). Ceilings are measured in the same run (``ceilings.py``).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import gpugd


@dataclass
class Timing:
    median_s: float
    samples: list[float]
    launches: int | None = None  # gpugd kernel launches per call (CUDA backend)


@dataclass
class Loop:
    """A ceiling loop: a plain reference loop, the bytes it moves, its timing samples."""

    fn: Callable[[], Any]
    nbytes: int
    numel: int
    samples: list[float] = field(default_factory=list)

    def gbps(self) -> float:
        return self.nbytes / statistics.median(self.samples) / 1e9


@dataclass
class Prepared:
    """A timed call with an untimed ``prepare`` run before the cache flush: e.g. restoring
    an input that the call overwrites in place, so every timed call sees the same data."""

    prepare: Callable[[], Any]
    fn: Callable[[], Any]

    def __call__(self) -> Any:
        return self.fn()


@dataclass
class Context:
    """What every suite needs: backend, the ceiling loops, tags, settings.

    Shared machines are noisy, so a kernel is never timed alone: ``measure`` runs it, its
    peers and the loops of its ceiling class round-robin, one call each per round, and
    takes medians. Every loop sample of the run feeds the ceilings, so a ceiling and the
    kernels held against it see the same conditions. On the CPU each timed call starts
    from a cold, clean cache (``flush``): otherwise a read-only kernel timed after a
    writing loop pays for that loop's dirty lines being written back.
    """

    backend: Any  # gpugd.backend.Backend
    quick: bool
    numel: int | None  # override of the suites' default sizes
    loops: dict[str, Loop] = field(default_factory=dict)
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # class -> loop names
    versions: dict[str, str] = field(default_factory=dict)
    time: str = ""
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)
    flush: Callable[[], Any] | None = None  # untimed, before every timed call

    @property
    def warmup(self) -> int:
        return 2 if self.quick else 3

    @property
    def repeats(self) -> int:
        return 9 if self.quick else 21

    def clock(self) -> Callable[[Callable[[], Any]], float]:
        return time_cuda_once if self.backend.name == "cuda" else time_cpu_once

    def measure(
        self, fns: dict[str, Callable[[], Any]], ceiling: str
    ) -> tuple[dict[str, Timing], float]:
        """Time ``fns`` round-robin with the loops of class ``ceiling``.

        Returns the median timing per name and the class's ceiling over these same rounds
        (best median GB/s of its loops), which is what the kernel is held against.
        """
        clock = self.clock()
        loops = {name: self.loops[name] for name in self.classes[ceiling]}
        samples: dict[str, list[float]] = {k: [] for k in [*fns, *loops]}
        launches: dict[str, int] = {}
        counter = _launch_counter(self.backend.name)
        for r in range(self.warmup + self.repeats):
            keep = r >= self.warmup
            for name, fn in [*fns.items(), *((k, lp.fn) for k, lp in loops.items())]:
                before = counter()
                t = self._timed(clock, fn)
                if r == 0 and name in fns and counter is not _no_count:
                    launches[name] = counter() - before
                if keep:
                    samples[name].append(t)
        for name, loop in loops.items():
            loop.samples += samples[name]
        here = max(lp.nbytes / statistics.median(samples[k]) / 1e9 for k, lp in loops.items())
        timings = {
            k: Timing(statistics.median(samples[k]), samples[k], launches.get(k)) for k in fns
        }
        return timings, here

    def _timed(self, clock: Callable[[Callable[[], Any]], float], fn: Callable[[], Any]) -> float:
        if isinstance(fn, Prepared):
            fn.prepare()
            fn = fn.fn
        if self.flush is not None:
            self.flush()
        return clock(fn)

    def ceiling_gbps(self) -> dict[str, float]:
        """Each class's ceiling: the best median bandwidth of its loops over the run."""
        return {
            cls: max(self.loops[n].gbps() for n in names if self.loops[n].samples)
            for cls, names in self.classes.items()
            if any(self.loops[n].samples for n in names)
        }


def _no_count() -> int:
    return 0


def _launch_counter(backend_name: str) -> Callable[[], int]:
    """gpugd's kernel launch count on the CUDA backend (``_cuda.launch_count``)."""
    if backend_name != "cuda":
        return _no_count
    from gpugd import _cuda

    return _cuda.launch_count


def versions(backend_name: str) -> dict[str, str]:
    """Versions of Python and of every library a figure may depend on."""
    out = {"gpugd": gpugd.__version__, "python": platform.python_version(), "numpy": np.__version__}
    try:
        import numba

        out["numba"] = numba.__version__
        out["numba_threads"] = str(numba.get_num_threads())
    except ImportError:
        pass
    if backend_name == "cuda":
        import cupy

        out["cupy"] = cupy.__version__
        out["cuda_runtime"] = str(cupy.cuda.runtime.runtimeGetVersion())
        out["cuda_driver"] = str(cupy.cuda.runtime.driverGetVersion())
    torch = optional_torch()
    if torch is not None:
        out["torch"] = torch.__version__
    return out


def optional_torch():
    """torch when importable, else None (it is a peer, never a dependency)."""
    try:
        import torch
    except Exception:  # ImportError, or a broken install raising something else
        return None
    return torch


def time_cpu_once(fn: Callable[[], Any]) -> float:
    """Wall time of one ``fn()`` call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_cuda_once(fn: Callable[[], Any]) -> float:
    """GPU time of one ``fn()`` call: CUDA events recorded on the current stream before and
    after it (what ``cupyx.profiler.benchmark`` does for one repeat), in seconds."""
    import cupy

    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / 1e3


def row(
    ctx: Context,
    kernel: str,
    dtype: Any,
    numel: int,
    timing: Timing,
    nbytes: int,
    ceiling: str,
    ceiling_gbps: float,
    baselines: dict[str, float],
    tensors: int = 1,
) -> dict[str, Any]:
    """One result row of the schema; ``baselines`` maps peer → peer median seconds;
    ``ceiling_gbps`` is the class's ceiling measured in the same rounds as the kernel."""
    gbps = nbytes / timing.median_s / 1e9
    extra: dict[str, Any] = {}
    if timing.launches is not None:
        from .gpu_model import prediction

        extra = prediction(nbytes, timing.launches, timing.median_s, ceiling_gbps)
    return {
        "kernel": kernel,
        "backend": ctx.backend.name,
        "device": ctx.backend.device_name,
        "dtype": np.dtype(dtype).name,
        "numel": int(numel),
        "tensors": int(tensors),
        "median_s": timing.median_s,
        "bytes": int(nbytes),
        "gbps": gbps,
        "ceiling": ceiling,
        "ceiling_gbps": ceiling_gbps,
        "pct_of_ceiling": 100.0 * gbps / ceiling_gbps,
        "baselines": {k: t / timing.median_s for k, t in baselines.items()},
        "versions": ctx.versions,
        "time": ctx.time,
        **extra,
    }


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def format_ceilings(ceilings: dict[str, float], loops: dict[str, dict[str, Any]]) -> str:
    lines = [
        "ceilings (plain reference loops timed round-robin with the kernels; run-wide medians."
        " Each row is held against its class's ceiling from its own rounds)"
    ]
    for name, info in loops.items():
        lines.append(
            f"  loop {name:<10} {info['gbps']:8.1f} GB/s  ({info['bytes_per_elem']} B/elem"
            f", {info['numel']} elems, {info['samples']} samples)"
        )
    for cls, gbps in ceilings.items():
        lines.append(f"  ceiling {cls:<8} {gbps:8.1f} GB/s")
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    kw = max([16, *(len(r["kernel"]) for r in rows)])
    predicted = any("predicted_s" in r for r in rows)
    pred_head = f" {'launch':>6} {'pred ms':>8} {'meas/pred':>9}" if predicted else ""
    head = (
        f"{'kernel':<{kw}} {'dtype':<8} {'tensors':>7} {'numel':>10} {'median ms':>10} "
        f"{'GB/s':>8} {'ceiling':>8} {'% ceil':>7}{pred_head}  baselines (peer time / gpugd time)"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        base = ", ".join(f"{k} {v:.2f}x" for k, v in r["baselines"].items()) or "-"
        detail = f"; {r['detail']}" if r.get("detail") else ""
        pred = ""
        if predicted:
            pred = (
                f" {r['launches']:>6} {r['predicted_s'] * 1e3:>8.3f} "
                f"{r['measured_over_predicted']:>8.2f}x"
                if "predicted_s" in r
                else f" {'-':>6} {'-':>8} {'-':>9}"
            )
        out.append(
            f"{r['kernel']:<{kw}} {r['dtype']:<8} {r['tensors']:>7} {r['numel']:>10} "
            f"{r['median_s'] * 1e3:>10.3f} {r['gbps']:>8.1f} {r['ceiling']:>8} "
            f"{r['pct_of_ceiling']:>6.1f}%{pred}  {base}{detail}"
        )
    return "\n".join(out)


def write_json(path: Path, meta: dict[str, Any], ceilings: dict[str, Any], rows: list) -> None:
    """Write ``{"meta", "ceilings", "rows"}`` atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "ceilings": ceilings, "rows": rows}, indent=2))
    tmp.replace(path)
