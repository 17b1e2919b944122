"""One ``gpugd bench`` suite that keeps what it measured if it is cut off (``run_gpu.sh``).

``python -m benchmarks.gpu_suite SUITE JSON [--backend cuda] [--quick] [--numel N]`` runs
``gpugd bench --suite SUITE --json JSON``; every row is written to ``JSON`` the moment it is
made (``{"meta": {"suite", "partial": true}, "ceilings": {}, "rows": [...]}``, atomically),
so a suite stopped by the budget (``timeout``'s SIGTERM, or SIGKILL) leaves its finished
rows; a suite that completes ends with the bench's own full file (``meta`` without
``partial``). Rows are caught where the suites make them (``harness.row``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import SUITES, harness


def recording_rows(path: Path, suite: str) -> list[dict[str, Any]]:
    """From now on, every ``harness.row`` a suite makes is appended to the returned list and
    the list written to ``path`` as a partial bench JSON."""
    real = harness.row
    rows: list[dict[str, Any]] = []

    def row(*args: Any, **kwargs: Any) -> dict[str, Any]:
        r = real(*args, **kwargs)
        rows.append(r)
        harness.write_json(path, {"suite": suite, "partial": True}, {}, rows)
        return r

    for mod in (harness, *SUITES.values()):
        if getattr(mod, "row", None) is real:
            mod.row = row
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__)
    ap.add_argument("suite", choices=sorted(SUITES))
    ap.add_argument("json", type=Path)
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--numel", type=int)
    args = ap.parse_args(argv)
    from gpugd import cli

    recording_rows(args.json, args.suite)
    bench = ["bench", "--backend", args.backend, "--suite", args.suite, "--json", str(args.json)]
    bench += ["--quick"] if args.quick else []
    bench += ["--numel", str(args.numel)] if args.numel else []
    return cli.main(bench)


if __name__ == "__main__":
    sys.exit(main())
