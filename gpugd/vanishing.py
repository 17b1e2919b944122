"""The lecture notes' vanishing-gradient experiment, and its mitigations, side by side.

A 9-layer, 10-unit sigmoid network on two moons (250 samples, noise 0.05, the notes'
``make_moons(..., random_state=42)``) learns almost nothing: every sigmoid multiplies the
backward signal by σ'(z) ≤ 1/4, so the first layer's gradient is orders of magnitude
below the last layer's. The variants add, one at a time, the notes' remedies: ReLU with He
initialization, batch normalization, Adam, and residual connections
(``gpugd train --preset vanishing``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ._io import atomic_write_text
from .train import TrainConfig, run

DEPTH, WIDTH = 9, 10

VARIANTS: dict[str, dict[str, Any]] = {
    "sigmoid": dict(activation="sigmoid", init="glorot_uniform", optimizer="sgd", lr=0.1),
    "relu+he": dict(activation="relu", init="he_normal", optimizer="sgd", lr=0.1),
    "+batchnorm": dict(
        activation="relu", init="he_normal", optimizer="sgd", lr=0.1, batch_norm=True
    ),
    "+adam": dict(activation="relu", init="he_normal", optimizer="adam", lr=1e-2, batch_norm=True),
    "+residual": dict(
        activation="relu",
        init="he_normal",
        optimizer="adam",
        lr=1e-2,
        batch_norm=True,
        residual=True,
    ),
}


def config(
    variant: str,
    *,
    epochs: int = 100,
    seed: int = 42,
    backend_dtype: str = "float32",
    batch_size: int = 32,
) -> TrainConfig:
    """The TrainConfig of one variant: the notes' data and split (80/20, unstandardized),
    9 hidden layers of 10 units, mini-batches of 32 (Keras' default)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {tuple(VARIANTS)}, got {variant!r}")
    return TrainConfig(
        data="moons",
        n_samples=250,
        noise=0.05,
        val_fraction=0.2,
        standardize=False,
        hidden=(WIDTH,) * DEPTH,
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        dtype=backend_dtype,
        **VARIANTS[variant],
    )


def experiment(
    *,
    epochs: int = 100,
    seed: int = 42,
    backend: str = "cpu",
    dtype: str = "float32",
    run_dir: str | os.PathLike | None = None,
    variants: tuple[str, ...] = tuple(VARIANTS),
    progress: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """Train every variant on the same data and budget. Per variant: the mean over all
    steps of each Dense layer's gradient norm (first = the input layer, last = the output
    layer), their ratio, and the final validation accuracy. Writes vanishing.json and
    vanishing.png into ``run_dir`` when given."""
    rows = []
    for name in variants:
        cfg = config(name, epochs=epochs, seed=seed, backend_dtype=dtype)
        if progress is not None:
            progress.write(
                f"[vanishing] {name}: {cfg.activation}, init={cfg.init}, "
                f"{cfg.optimizer} lr={cfg.lr}"
                + (", batch norm" if cfg.batch_norm else "")
                + (", residual" if cfg.residual else "")
                + "\n"
            )
            progress.flush()
        res = run(cfg, None, backend=backend, progress=None, plots=False)
        h, s = res["history"], res["summary"]
        layers = [k for k in h if k.startswith("grad/")]
        profile = [float(np.nanmean(h[k])) for k in layers]
        rows.append(
            {
                "variant": name,
                "layers": [k.removeprefix("grad/") for k in layers],
                "grad_profile": profile,
                "grad_first": profile[0],
                "grad_last": profile[-1],
                "ratio": profile[0] / max(profile[-1], 1e-300),
                "val_acc": s["val_acc"],
                "train_acc": s["train_acc"],
                "val_loss": s["val_loss"],
                "val_acc_curve": h["val_acc"],
                "steps": s["steps"],
                "time_s": s["time_s"],
            }
        )
    result = {
        "epochs": epochs,
        "seed": seed,
        "backend": backend,
        "dtype": dtype,
        "depth": DEPTH,
        "width": WIDTH,
        "variants": rows,
    }
    if run_dir is not None:
        rd = Path(run_dir)
        atomic_write_text(rd / "vanishing.json", json.dumps(result, indent=1, default=float))
        result["plot"] = plot(result, rd / "vanishing.png")
    return result


def table(result: dict[str, Any]) -> str:
    """The comparison ``gpugd train --preset vanishing`` prints."""
    head = f"{'variant':<12} {'‖∇W₁‖':>10} {'‖∇W_out‖':>10} {'first/last':>11} {'val acc':>8}"
    lines = [
        f"two moons (250, noise 0.05), {result['depth']}×{result['width']} hidden, "
        f"{result['epochs']} epochs, gradient norms averaged over all steps",
        head,
        "-" * len(head),
    ]
    for r in result["variants"]:
        lines.append(
            f"{r['variant']:<12} {r['grad_first']:>10.3g} {r['grad_last']:>10.3g} "
            f"{r['ratio']:>11.3g} {r['val_acc']:>8.3f}"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> str | None:
    """Left: mean gradient norm per layer for each variant (log scale): the sigmoid
    network's profile falls towards the input; right: validation accuracy per epoch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for r in result["variants"]:
        prof = np.asarray(r["grad_profile"])
        a1.plot(
            np.arange(1, len(prof) + 1),
            np.where(prof > 0, prof, math.nan),
            marker="o",
            label=r["variant"],
        )
        a2.plot(np.arange(1, len(r["val_acc_curve"]) + 1), r["val_acc_curve"], label=r["variant"])
    a1.set_yscale("log")
    a1.set_xlabel("Dense layer (1 = input side)")
    a1.set_ylabel("mean ‖∂L/∂W‖₂ over training")
    a1.set_title("gradient reaching each layer")
    a1.legend(fontsize=8)
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation accuracy")
    a2.set_ylim(0.3, 1.02)
    a2.set_title("learning")
    a2.legend(fontsize=8)
    fig.suptitle(
        f"vanishing gradients: {result['depth']}×{result['width']} network on two "
        "moons, and the mitigations"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return str(path)


__all__ = ["VARIANTS", "config", "experiment", "plot", "table"]
