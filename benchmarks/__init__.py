"""gpugd's throughput suite, run by ``gpugd bench``: ceilings first, then each suite.

Each suite module has ``NAME`` and ``run(ctx) -> rows``; add a family by adding a module
and listing it in ``SUITES``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import (
    ceilings,
    harness,
    suite_act,
    suite_amp,
    suite_bn,
    suite_clip,
    suite_optim,
    suite_parallel,
    suite_train,
    suite_vector,
)

SUITES = {
    m.NAME: m
    for m in (
        suite_vector,
        suite_optim,
        suite_amp,
        suite_clip,
        suite_act,
        suite_bn,
        suite_parallel,
        suite_train,
    )
}


def run(
    backend: Any,
    suite: str = "all",
    quick: bool = False,
    numel: int | None = None,
    json_path: str | Path | None = None,
    echo=print,
    plot_path: str | Path | None = None,
) -> dict[str, Any]:
    """Measure the ceilings, run the chosen suites, print one table per suite, write JSON
    (and the plot) if asked: what ``gpugd bench`` runs (``harness.run_suites``)."""
    return harness.run_suites(
        SUITES, ceilings, backend, suite, quick, numel, json_path, plot_path, echo=echo
    )
