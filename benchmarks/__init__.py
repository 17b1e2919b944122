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
) -> dict[str, Any]:
    """Measure the ceilings, run the chosen suites, print the tables, write JSON if asked."""
    if suite != "all" and suite not in SUITES:
        raise ValueError(
            f"--suite {suite!r} is not a suite; expected 'all' or one of {sorted(SUITES)}"
        )
    if numel is not None and numel < 1:
        raise ValueError(f"--numel must be positive, got {numel}")
    ctx = harness.Context(backend=backend, quick=quick, numel=numel)
    ctx.versions = harness.versions(backend.name)
    ctx.time = harness.now()
    ceilings.setup(ctx)
    chosen = SUITES.values() if suite == "all" else [SUITES[suite]]
    rows: list[dict[str, Any]] = []
    for mod in chosen:
        rows += mod.run(ctx)
    classes, loops = ceilings.report(ctx)
    echo(f"gpugd bench · backend {backend.name} · {backend.device_name} · {ctx.time}")
    echo(harness.format_ceilings(classes, loops))
    echo("")
    echo(harness.format_table(rows))
    meta = {
        "backend": backend.name,
        "device": backend.device_name,
        "time": ctx.time,
        "quick": quick,
        "versions": ctx.versions,
    }
    ceil = {"classes": classes, "loops": loops}
    if json_path is not None:
        harness.write_json(Path(json_path), meta, ceil, rows)
        echo(f"\nwrote {json_path}")
    return {"meta": meta, "ceilings": ceil, "rows": rows}
