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
import re
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
        """Bytes moved per median sample, in GB/s."""
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
        """Untimed rounds before the timed ones."""
        return 2 if self.quick else 3

    @property
    def repeats(self) -> int:
        """Timed rounds (each figure is their median)."""
        return 9 if self.quick else 21

    def clock(self) -> Callable[[Callable[[], Any]], float]:
        """The one-call timer of the backend (wall time on the CPU, CUDA events on the GPU)."""
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


def optional_torch(backend: str = "cpu"):
    """torch when importable and able to run beside ``backend`` (for "cuda": a torch built
    with CUDA that sees a device, so it can share CuPy's arrays through DLPack), else None
    (it is a peer, never a dependency)."""
    try:
        import torch
    except Exception:  # ImportError, or a broken install raising something else
        return None
    if backend == "cuda" and not torch.cuda.is_available():
        return None  # a CPU-only torch (or the CUDA emulator's stand-in arrays)
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
    """The run's UTC time stamp (ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def format_ceilings(ceilings: dict[str, float], loops: dict[str, dict[str, Any]]) -> str:
    """The ceiling loops' run-wide figures and each class's ceiling, as printed."""
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
    """Rows as a fixed-width table (with launches and prediction columns on the GPU);
    a row's ``mark`` is printed after its % of ceiling."""
    kw = max([16, *(len(r["kernel"]) for r in rows)])
    predicted = any("predicted_s" in r for r in rows)
    pred_head = f" {'launch':>6} {'pred ms':>8} {'meas/pred':>9}" if predicted else ""
    head = (
        f"{'kernel':<{kw}} {'dtype':<8} {'tensors':>7} {'numel':>10} {'median ms':>10} "
        f"{'GB/s':>8} {'ceiling':>8} {'% ceil':>7}{pred_head}  baselines (peer time / gpugd time)"
    )
    out = [head, "-" * len(head)]
    mw = max((len(r.get("mark", "")) for r in rows), default=0)
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
            f"{r['pct_of_ceiling']:>6.1f}%{r.get('mark', ''):<{mw}}{pred}  {base}{detail}"
        )
    return "\n".join(out)


# What each ceiling class is (the name in a row's ``ceiling`` column).
CEILING_NOTES = {
    "inplace": "best of the copy, triad and in-place loops (streams that read and write)",
    "read": "the read loop (one array summed, nothing written)",
    "matmul": "the step's matrix products alone (suite_train): % = matmul time / step time",
}


def ceiling_note(name: str) -> str:
    """What a row's ceiling is: a class (``CEILING_NOTES``), a loop over the kernel's own
    buffers with its traffic mix (``r2w1``: two arrays read, one written fresh; ``a+b``: two
    passes) or a compute bound (``...math``)."""
    if name in CEILING_NOTES:
        return CEILING_NOTES[name]
    if "math" in name:
        from .ceilings import MIX_NOTES

        return MIX_NOTES["math"]
    mix = re.fullmatch(r"(?:[rmw]\d+)+(?:\+(?:[rmw]\d+)+)*", name)
    if mix is None:
        return "see the suite module"
    passes = []
    for part in name.split("+"):
        words = {"r": "read", "m": "rewritten in place", "w": "written fresh"}
        passes.append(", ".join(f"{k} {words[c]}" for c, k in re.findall(r"([rmw])(\d+)", part)))
    what = "; then ".join(passes)
    return f"a loop over the kernel's own buffers with its traffic (arrays): {what}"


# Why a row can read above 100% of its ceiling, by cause (footnotes under a suite's table).
OVER_CEILING = {
    "cache": "its working set is under half the ceiling loops' and fits in the last-level "
    "cache: its written lines can stay there past the timed call, the loops' cannot",
    "matmul": "the products alone are timed after a cache flush; inside the step they find "
    "their operands in cache, so the step can take less than its products did alone",
    "memory": "the ceiling is the best loop over arrays of its own; on these machines arrays "
    "placed in different memory stream up to ~20% apart (ceilings.py, "
    "benchmarks/experiments/placement.py), and a kernel with more reads per write than the "
    "loops' mix streams faster than they do; on a shared machine a loop and a kernel in the "
    "same rounds still meet different interference (compare runs)",
}


def over_ceiling_cause(r: dict[str, Any], cache_bytes: int, loop_bytes: int) -> str:
    """The OVER_CEILING key that explains a row above 100% of its ceiling: ``cache_bytes``
    is the last-level cache (0: unknown), ``loop_bytes`` the smallest ceiling loop's."""
    if r["ceiling"] == "matmul":
        return "matmul"
    if cache_bytes and r["bytes"] <= cache_bytes and 2 * r["bytes"] <= loop_bytes:
        return "cache"
    return "memory"


def format_suite(
    name: str, rows: list[dict[str, Any]], cache_bytes: int = 0, loop_bytes: int = 0
) -> str:
    """One suite's table: a title, the rows, and a footnote for every row above 100% of its
    ceiling saying which ceiling it is held against and why it can exceed it."""
    if not rows:
        return f"== {name}: no rows"
    marks: dict[str, str] = {}
    marked = []
    for r in rows:
        if r["pct_of_ceiling"] > 100.0:
            cause = over_ceiling_cause(r, cache_bytes, loop_bytes)
            mark = marks.setdefault(cause, "*" * (len(marks) + 1))
            marked.append({**r, "mark": mark})
        else:
            marked.append(r)
    used = sorted({r["ceiling"] for r in rows})
    lines = [f"== {name} ({len(rows)} rows)", format_table(marked)]
    for c in used:
        lines.append(f"  ceiling {c}: {ceiling_note(c)}")
    for cause, mark in marks.items():
        lines.append(f"  {mark} above 100%: {OVER_CEILING[cause]}")
    return "\n".join(lines)


# Seconds a suite took, measured with the command beside each entry; the start-of-run
# estimate (refresh from a run's JSON: meta["suite_s"]). Keys: (backend, quick).
SUITE_SECONDS: dict[tuple[str, bool], dict[str, float]] = {
    # gpugd bench --quick --json q.json on the 2-core Intel Xeon CI VM, 2026-12-03, while
    # other jobs shared it (5 min 52 s in all; 2 min 42 s has been seen on a quiet one)
    ("cpu", True): {
        "vector": 28.3,
        "optim": 38.6,
        "amp": 82.2,
        "clip": 25.8,
        "act": 68.1,  # its two forward rows added: gpugd bench --quick --suite act, 2026-12-07
        "bn": 37.3,
        "parallel": 23.3,
        "train": 45.2,
    },
}
FULL_OVER_QUICK = 2.5  # a full run's repeats and dtypes over --quick's (rough)


def estimate_s(backend: str, names: list[str], quick: bool, scale: float = 1.0) -> dict:
    """Estimated seconds per suite (None where nothing was measured), from SUITE_SECONDS;
    ``scale`` is the run's elements over the default (bandwidth-bound: time ∝ bytes)."""
    table = SUITE_SECONDS.get((backend, quick))
    factor = scale
    if table is None and not quick:
        table, factor = SUITE_SECONDS.get((backend, True)), scale * FULL_OVER_QUICK
    return {n: None if not table or n not in table else table[n] * factor for n in names}


class Progress:
    """The run's progress on stderr: on a terminal a tqdm bar over the suites (elapsed, ETA
    from the estimates, the suite's current step beside it); elsewhere one line per suite.
    The suites' own per-row lines are not repeated (the tables hold them); lines that say
    something was skipped are."""

    def __init__(self, stream: Any, names: list[str], estimates: dict[str, float | None]):
        self.stream, self.names, self.est = stream, names, estimates
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.bar: Any = None
        known = [v for v in estimates.values() if v is not None]
        self.total = sum(known) if len(known) == len(names) else None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=round(self.total) if self.total else len(names),
                unit="s" if self.total else "suite",
                file=stream,
                leave=False,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| [{elapsed}<{remaining}] {postfix}",
            )
        self.current, self.t0 = "", time.perf_counter()

    def start_text(self, backend: str, quick: bool) -> str:
        """The first line: suites and how long they will take (or that no timing exists)."""
        if self.total is not None:
            return (
                f"gpugd bench: {len(self.names)} suite(s), about {_duration(self.total)} "
                f"({', '.join(f'{n} {_duration(self.est[n])}' for n in self.names)})"
            )
        return (
            f"gpugd bench: {len(self.names)} suite(s); no timing measured yet for backend "
            f"{backend}{' --quick' if quick else ''}: progress is shown per suite"
        )

    def begin(self, k: int, name: str) -> None:
        """Suite ``name`` (the k-th) starts."""
        self.current, self.t0 = name, time.perf_counter()
        est = self.est.get(name)
        text = f"[{k}/{len(self.names)}] {name}" + (f" (about {_duration(est)})" if est else "")
        if self.bar is not None:
            self.bar.set_description(text)
        else:
            print(text, file=self.stream, flush=True)

    def log(self, line: str) -> None:
        """A suite's own log line: shown beside the bar on a terminal; skips always shown."""
        if "skipped" in line:
            (self.bar.write if self.bar is not None else print)(line.strip(), file=self.stream)
        elif self.bar is not None:
            self.bar.set_postfix_str(line.strip()[:60])

    def say(self, text: str, echo: Callable[[str], Any]) -> None:
        """``echo(text)`` (stdout) with the bar cleared first and redrawn after it."""
        if self.bar is None:
            echo(text)
            return
        with self.bar.external_write_mode(file=self.stream):
            echo(text)

    def end(self, name: str) -> float:
        """Suite ``name`` ended; returns the seconds it took."""
        took = time.perf_counter() - self.t0
        if self.bar is not None:
            self.bar.update(round(self.est.get(name) or 0) if self.total else 1)
        return took

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def run_suites(
    suites: dict[str, Any],
    ceilings_mod: Any,
    backend: Any,
    suite: str = "all",
    quick: bool = False,
    numel: int | None = None,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    echo: Callable[[str], Any] = print,
    stream: Any = None,
) -> dict[str, Any]:
    """``gpugd bench``: say how long the run will take, run the chosen suites with
    progress on ``stream`` (stderr), print one table per suite as it ends (rows above
    their ceiling footnoted), then the ceilings; write JSON / the plot if asked."""
    if suite != "all" and suite not in suites:
        raise ValueError(
            f"--suite {suite!r} is not a suite; expected 'all' or one of {sorted(suites)}"
        )
    if numel is not None and numel < 1:
        raise ValueError(f"--numel must be positive, got {numel}")
    stream = sys.stderr if stream is None else stream
    ctx = Context(backend=backend, quick=quick, numel=numel)
    ctx.versions = versions(backend.name)
    ctx.time = now()
    names = list(suites) if suite == "all" else [suite]
    scale = 1.0
    if numel is not None:
        scale = numel / ceilings_mod.default_numel(Context(backend, quick, None))
    progress = Progress(stream, names, estimate_s(backend.name, names, quick, scale))
    print(progress.start_text(backend.name, quick), file=stream, flush=True)
    ctx.log = progress.log
    cache = ceilings_mod.last_level_cache_bytes() if backend.name == "cpu" else 0
    echo(f"gpugd bench · backend {backend.name} · {backend.device_name} · {ctx.time}")
    rows: list[dict[str, Any]] = []
    by_suite: dict[str, list[int]] = {}
    took: dict[str, float] = {}
    try:
        ceilings_mod.setup(ctx)
        for k, name in enumerate(names, 1):
            progress.begin(k, name)
            got = suites[name].run(ctx)
            took[name] = progress.end(name)
            by_suite[name] = list(range(len(rows), len(rows) + len(got)))
            rows += got
            loop_bytes = min((lp.nbytes for lp in ctx.loops.values()), default=0)
            progress.say("\n" + format_suite(name, got, cache, loop_bytes), echo)
    finally:
        progress.close()
    classes, loops = ceilings_mod.report(ctx)
    echo("")
    echo(format_ceilings(classes, loops))
    meta = {
        "backend": backend.name,
        "device": backend.device_name,
        "time": ctx.time,
        "quick": quick,
        "versions": ctx.versions,
        "suites": by_suite,
        "suite_s": took,
    }
    ceil = {"classes": classes, "loops": loops}
    if json_path is not None:
        write_json(Path(json_path), meta, ceil, rows)
        echo(f"\nwrote {json_path}")
    result = {"meta": meta, "ceilings": ceil, "rows": rows}
    if plot_path is not None:
        from .plot import plot

        echo(f"wrote {plot(result, plot_path)}")
    return result


def write_json(path: Path, meta: dict[str, Any], ceilings: dict[str, Any], rows: list) -> None:
    """Write ``{"meta", "ceilings", "rows"}`` atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "ceilings": ceilings, "rows": rows}, indent=2))
    tmp.replace(path)
