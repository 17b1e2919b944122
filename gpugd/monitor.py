"""Gradient-health telemetry from the passes a step already makes.

    opt = gpugd.optim.SGD(params, lr=0.1, max_grad_norm=1.0)
    mon = gpugd.monitor.GradientMonitor(opt)
    ... opt.step() ...
    mon.events          # vanishing / exploding / non-finite flags, with step and tensor
    mon.to_csv("grads.csv"); mon.plot("grads.png")

Per named tensor and step: the gradient norm (before clipping, after ``grad_scale``), the
parameter norm after the update, the update-to-parameter ratio ‖Δp‖/‖p‖, the fraction of
exactly-zero gradient elements (dead ReLU units) and the count of non-finite ones. The
gradient figures come from the optimizer's read-only norm pass, the parameter and update
norms from the fused update kernel itself (it sums p² and Δp² per chunk while the data
is in registers or cache), so monitoring adds no pass over memory; what is kept is
O(number of tensors) per recorded step. With 8-bit states (``state_bits=8``) the update
ops do not sum p² and Δp²: a recorded step copies p before the update and reads p and the
copy after it (two passes over p, on recorded steps only). ``every=k`` records every k-th
step only; the other steps run exactly as without a monitor.

Flags, per step and tensor:
* vanishing: gradient norm below ``vanishing_ratio`` × the reference tensor's (by default
  the last tensor: the layer next to the loss), or below ``vanishing_floor``;
* exploding: gradient norm above ``exploding_norm``, or grown by more than
  ``exploding_growth`` since the previous recorded step;
* nonfinite: NaN or Inf elements (with nonfinite="skip", the skipped step is recorded).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("grad_norm", "param_norm", "update_ratio", "zero_fraction", "nonfinite")


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


class GradientMonitor:
    """Attach to a ``gpugd.optim`` optimizer; every step it takes is recorded."""

    def __init__(
        self,
        optimizer: Any,
        *,
        vanishing_ratio: float = 1e-3,
        vanishing_floor: float = 1e-10,
        exploding_norm: float = 1e3,
        exploding_growth: float = 100.0,
        reference: str | None = None,
        every: int = 1,
    ):
        from .optim import Optimizer

        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a gpugd.optim optimizer, got {optimizer!r}")
        if optimizer.monitor is not None:
            raise ValueError("optimizer: already has a monitor")
        for name, val in (
            ("vanishing_ratio", vanishing_ratio),
            ("vanishing_floor", vanishing_floor),
            ("exploding_norm", exploding_norm),
            ("exploding_growth", exploding_growth),
        ):
            if not (isinstance(val, int | float) and math.isfinite(val) and val > 0):
                raise ValueError(f"{name}: expected a finite value > 0, got {val!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every: expected an integer ≥ 1, got {every!r}")
        self.names = optimizer.names
        if reference is not None and reference not in self.names:
            raise KeyError(f"reference: no tensor named {reference!r}; have {self.names}")
        self.reference = reference if reference is not None else self.names[-1]
        self.sizes = np.asarray(optimizer.sizes, np.int64)
        self.vanishing_ratio, self.vanishing_floor = vanishing_ratio, vanishing_floor
        self.exploding_norm, self.exploding_growth = exploding_norm, exploding_growth
        self.every = every
        self.steps: list[int] = []
        self.history: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
        self.events: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        optimizer.monitor = self
        for g in optimizer._groups:  # switch the arena groups to per-tensor launches
            g.tensors = None

    # ---- called by the optimizer

    def wants(self, step: int) -> bool:
        """Whether ``step`` is recorded (every ``every``-th, from step 1): the optimizer
        takes the extra statistics only then."""
        return (step - 1) % self.every == 0

    def _record(self, step: int, gstats: Any, grad_scale: float, update_stats: list) -> None:
        grad = _host(gstats.norms) * grad_scale
        upd = np.concatenate([_host(u) for u in update_stats], axis=0)
        pnorm = np.sqrt(upd[:, 0])
        dnorm = np.sqrt(upd[:, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(pnorm > 0, dnorm / pnorm, 0.0)
        zeros = _host(gstats.zero_counts) / np.maximum(self.sizes, 1)
        nonfinite = _host(gstats.nonfinite_counts)
        row = dict(
            grad_norm=grad,
            param_norm=pnorm,
            update_ratio=ratio,
            zero_fraction=zeros,
            nonfinite=nonfinite,
        )
        prev = self.history["grad_norm"][-1] if self.steps else None
        self.steps.append(step)
        for m in METRICS:
            self.history[m].append(row[m])
        self._flag(step, grad, prev, nonfinite)

    def _record_skip(self, step: int, bad: dict[str, int]) -> None:
        self.skipped.append({"step": step, "nonfinite": dict(bad)})
        for name, count in bad.items():
            self.events.append(
                {"step": step, "tensor": name, "kind": "nonfinite", "value": count, "skipped": True}
            )

    def _flag(self, step: int, grad: np.ndarray, prev: np.ndarray | None, nonfinite) -> None:
        ref = grad[self.names.index(self.reference)]
        for i, name in enumerate(self.names):
            g = float(grad[i])
            if nonfinite[i]:
                self._event(step, name, "nonfinite", int(nonfinite[i]), "NaN/Inf elements")
                continue
            if g > self.exploding_norm:
                self._event(step, name, "exploding", g, f"norm above {self.exploding_norm:g}")
            elif prev is not None and prev[i] > 0 and g / prev[i] > self.exploding_growth:
                self._event(step, name, "exploding", g, f"grew ×{g / prev[i]:.3g} in one step")
            if self.sizes[i] and g < self.vanishing_floor:
                self._event(step, name, "vanishing", g, f"norm below {self.vanishing_floor:g}")
            elif name != self.reference and ref > 0 and g < self.vanishing_ratio * ref:
                self._event(step, name, "vanishing", g, f"{g / ref:.2e} × {self.reference}'s norm")

    def _event(self, step: int, name: str, kind: str, value: float, detail: str) -> None:
        self.events.append(
            {"step": step, "tensor": name, "kind": kind, "value": value, "detail": detail}
        )

    # ---- reading it

    def series(self, metric: str) -> np.ndarray:
        """(recorded steps, tensors) array of one metric."""
        if metric not in METRICS:
            raise KeyError(f"metric: expected one of {METRICS}, got {metric!r}")
        rows = self.history[metric]
        return np.array(rows) if rows else np.zeros((0, len(self.names)))

    def latest(self) -> dict[str, dict[str, float]]:
        """name → the last recorded value of each metric."""
        if not self.steps:
            return {}
        return {
            n: {m: float(self.history[m][-1][i]) for m in METRICS} for i, n in enumerate(self.names)
        }

    def to_csv(self, path: str | os.PathLike) -> Path:
        """One row per step and tensor: step, tensor, and every metric."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "tensor", *METRICS])
            for k, step in enumerate(self.steps):
                for i, name in enumerate(self.names):
                    w.writerow([step, name, *(repr(float(self.history[m][k][i])) for m in METRICS)])
        return path

    def to_json(self, path: str | os.PathLike) -> Path:
        """``{"names", "steps", <metric>: [[per tensor] per step], "events", "skipped"}``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "names": self.names,
            "steps": self.steps,
            **{m: self.series(m).tolist() for m in METRICS},
            "events": self.events,
            "skipped": self.skipped,
        }
        path.write_text(json.dumps(data, default=float))
        return path

    def plot(self, path: str | os.PathLike, *, title: str = "gradient norm per tensor") -> Path:
        """PNG of every tensor's gradient norm over the recorded steps (log scale), first
        tensors in dark, last in light colours, so vanishing early layers stand out."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            import matplotlib.ticker
        except ImportError:
            raise ImportError(
                "plot needs matplotlib: pip install 'gpugd[plot]' (or pip install matplotlib)"
            ) from None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        grad = self.series("grad_norm")
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        cmap = plt.get_cmap("viridis")
        n = len(self.names)
        for i, name in enumerate(self.names):
            y = np.where(grad[:, i] > 0, grad[:, i], np.nan) if len(grad) else []
            ax.plot(self.steps, y, color=cmap(i / max(n - 1, 1)), lw=1.2, label=name)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("‖gradient‖₂")
        ax.set_title(title)
        if n <= 12:
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


__all__ = ["METRICS", "GradientMonitor"]
