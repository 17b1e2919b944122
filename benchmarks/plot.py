"""``gpugd bench --plot PATH``: each suite's rows as bars of % of their ceiling, peers beside.

A peer's bar is the same op's bytes over the peer's time, against the same ceiling:
``pct_of_ceiling / ratio`` with ``ratio = peer_time / gpugd_time`` (the row's baselines).
Also ``python -m benchmarks.plot RESULT.json OUT.png`` for a saved run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def suites_of(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by suite (``meta["suites"]``; one group "all" for older files)."""
    rows = result["rows"]
    groups = result.get("meta", {}).get("suites")
    if not groups:
        return {"all": rows}
    return {name: [rows[i] for i in idx] for name, idx in groups.items() if idx}


def bars(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[float]]]:
    """Labels and, per series ("gpugd" and each peer), % of ceiling per row (NaN: no peer)."""
    labels = [f"{r['kernel']} {r['dtype']}" for r in rows]
    peers = sorted({p for r in rows for p in r["baselines"]})
    series = {"gpugd": [r["pct_of_ceiling"] for r in rows]}
    for p in peers:
        series[p] = [
            r["pct_of_ceiling"] / r["baselines"][p] if r["baselines"].get(p) else float("nan")
            for r in rows
        ]
    return labels, series


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Draw the figure into ``path`` (PNG); needs matplotlib (``pip install 'gpugd[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "gpugd bench --plot: needs matplotlib (pip install 'gpugd[plot]')"
        ) from None
    groups = suites_of(result)
    heights = [
        max(1.5, 0.32 * len(rows) * (1 + len(bars(rows)[1])) ** 0.5) for rows in groups.values()
    ]
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(9, sum(heights) + 1), squeeze=False, height_ratios=heights
    )
    meta = result.get("meta", {})
    for ax, (name, rows) in zip(axes[:, 0], groups.items(), strict=True):
        labels, series = bars(rows)
        width = 0.8 / len(series)
        for k, (who, vals) in enumerate(series.items()):
            ys = [i + (k - (len(series) - 1) / 2) * width for i in range(len(rows))]
            ax.barh(ys, vals, height=width, label=who)
        ax.axvline(100, color="black", lw=0.8, ls="--")
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ceilings = ", ".join(sorted({r["ceiling"] for r in rows}))
        ax.set_title(f"{name}  (ceiling: {ceilings})", fontsize=9, loc="left")
        ax.set_xlabel("% of ceiling (dashed: the ceiling)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"gpugd bench · {meta.get('backend', '?')} · {meta.get('device', '?')} · "
        f"{meta.get('time', '')}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.plot RESULT.json OUT.png``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m benchmarks.plot RESULT.json OUT.png", file=sys.stderr)
        return 2
    print(plot(json.loads(Path(args[0]).read_text()), args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
