"""One-off experiments behind figures and choices in benchmarks/README.md; not part of
``gpugd bench``. Each runs as ``python -m benchmarks.experiments.<name> --help``."""

from collections.abc import Callable


def round_robin_ms(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median ms of each call, timed round-robin (a slow spell of the shared machine falls
    on every call alike), each call after a sweep of the last-level cache
    (``ceilings.cpu_flush``), one untimed call of each first."""
    import time

    import numpy as np

    from ..ceilings import cpu_flush

    flush = cpu_flush()
    for f in fns.values():
        f()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            flush()
            t = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1e3 for k, v in ts.items()}
