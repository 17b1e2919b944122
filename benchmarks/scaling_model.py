"""Alpha-beta model of data-parallel training with ring allreduce.

A ring allreduce of S bytes over p ranks takes T(p, S) = 2(p − 1)·α + 2·(p − 1)/p · S/B
(α: per-message latency, B: per-link bandwidth); the step takes C (compute) + T (no
overlap: the conservative case) or max(C, T) (communication fully hidden behind the
backward pass), and the scaling efficiency is C / step time. Weak scaling: each rank keeps
its batch, so C stays fixed while p grows.

    python -m benchmarks.scaling_model [--plot PATH] [--json PATH]

Defaults: ResNet-50 (25.6 M fp32 parameters = 102 MB of gradients), C = 100 ms per step,
α = 5 µs, links of 100, 200 and 400 Gb/s, 8 to 1,024 ranks; a 1.3 B-parameter model in
bf16 (2.6 GB) beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RANKS = (8, 16, 32, 64, 128, 256, 512, 1024)
LINKS_GBIT = (100, 200, 400)
MODELS = {"ResNet-50 fp32 (102 MB)": 25_557_032 * 4, "1.3B bf16 (2.6 GB)": 1_300_000_000 * 2}


def ring_allreduce_s(p: int, nbytes: float, alpha_s: float, link_gbit: float) -> float:
    """T = 2(p − 1)·α + 2(p − 1)/p · S/B."""
    bw = link_gbit * 1e9 / 8
    return 2 * (p - 1) * alpha_s + 2 * (p - 1) / p * nbytes / bw


def table(compute_s: float, alpha_s: float) -> list[dict]:
    rows = []
    for model, nbytes in MODELS.items():
        for link in LINKS_GBIT:
            for p in RANKS:
                t = ring_allreduce_s(p, nbytes, alpha_s, link)
                rows.append(
                    {
                        "model": model,
                        "link_gbit": link,
                        "ranks": p,
                        "allreduce_s": t,
                        "efficiency_no_overlap": compute_s / (compute_s + t),
                        "efficiency_full_overlap": compute_s / max(compute_s, t),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compute-ms", type=float, default=100.0)
    ap.add_argument("--alpha-us", type=float, default=5.0)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = table(args.compute_ms / 1e3, args.alpha_us / 1e6)
    print(f"ring allreduce, α = {args.alpha_us} µs, compute {args.compute_ms} ms per step")
    print(
        f"{'model':<24} {'link':>8} {'ranks':>6} {'allreduce ms':>13} {'eff (no overlap)':>17} "
        f"{'eff (overlap)':>14}"
    )
    for r in rows:
        print(
            f"{r['model']:<24} {r['link_gbit']:>5} Gb {r['ranks']:>6} "
            f"{r['allreduce_s'] * 1e3:>13.2f} {r['efficiency_no_overlap']:>17.1%} "
            f"{r['efficiency_full_overlap']:>14.1%}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"compute_ms": args.compute_ms, "alpha_us": args.alpha_us, "rows": rows}, indent=1
            )
        )
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise SystemExit("--plot needs matplotlib: pip install 'gpugd[plot]'") from None
        fig, axes = plt.subplots(1, len(MODELS), figsize=(11, 4.2), dpi=110, sharey=True)
        for ax, model in zip(axes, MODELS, strict=True):
            for link in LINKS_GBIT:
                sel = [r for r in rows if r["model"] == model and r["link_gbit"] == link]
                ax.plot(
                    [r["ranks"] for r in sel],
                    [r["efficiency_no_overlap"] for r in sel],
                    marker="o",
                    label=f"{link} Gb/s",
                )
            ax.set_xscale("log", base=2)
            ax.set_title(model, fontsize=10)
            ax.set_xlabel("ranks")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("scaling efficiency (no overlap)")
        axes[0].legend()
        fig.suptitle(f"ring allreduce, α = {args.alpha_us} µs, {args.compute_ms:g} ms compute/step")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
