"""Learning-rate schedules for ``gpugd.optim`` optimizers, with torch.optim.lr_scheduler's
conventions: a schedule reads each group's starting ``lr`` as its base, sets the lr for
step 0 when created, and ``step()`` (called after ``optimizer.step()``, per iteration or
per epoch as you choose) moves it on. A schedule attaches itself to its optimizer
(``optimizer.scheduler``), so its state travels in the optimizer's state dict and
checkpoints and a resumed run continues on the same curve.

    opt = gpugd.optim.AdamW(params, lr=3e-4)
    sched = gpugd.schedules.CosineWithWarmup(opt, warmup_steps=100, total_steps=10_000)
    for batch in batches: ...; opt.step(); sched.step()

``StepLR``          lr = base · γ^⌊k / step_size⌋
``ExponentialLR``   lr = base · γ^k
``LinearWarmup``    lr = base · (s + (e − s) · min(k, K)/K)       (torch's LinearLR)
``CosineWithWarmup`` linear from base·s to base over W steps, then
                    lr = min_lr + (base − min_lr) · ½(1 + cos(π · min(1, (k − W)/(T − W))))
``ReduceLROnPlateau`` lr ← max(lr · factor, min_lr) after ``patience`` steps without
                    improvement of the metric passed to ``step(metric)`` (torch's rules:
                    rel/abs threshold, cooldown, eps)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from .optim import CheckpointError, Optimizer


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected an integer ≥ 1, got {v!r}")
    return v


def _in_range(name: str, v: Any, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> float:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name}: expected a finite value in {lb}{lo}, {hi}{rb}, got {v!r}")
    return float(v)


class Schedule:
    """Base: attaches to the optimizer, keeps the base lrs and the step count ``last_step``.
    Subclasses give ``factor(k)`` (lr = base · factor) and their configuration ``CONFIG``."""

    CONFIG: ClassVar[tuple[str, ...]] = ()

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a gpugd.optim optimizer, got {optimizer!r}")
        if optimizer.scheduler is not None:
            raise ValueError(
                f"optimizer: already driven by {type(optimizer.scheduler).__name__}; "
                "one schedule per optimizer"
            )
        self.optimizer = optimizer
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_step = 0
        optimizer.scheduler = self
        self._apply()

    def factor(self, k: int) -> float:
        raise NotImplementedError

    def lr_at(self, k: int) -> list[float]:
        """The lr of every group after ``k`` schedule steps."""
        f = self.factor(k)
        return [b * f for b in self.base_lrs]

    def _apply(self) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_step), strict=True):
            g["lr"] = lr

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    # ---- state

    def _config(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.CONFIG}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": type(self).__name__,
            "config": self._config(),
            "base_lrs": list(self.base_lrs),
            "last_step": self.last_step,
            **self._extra_state(),
        }

    def _check_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("kind") != type(self).__name__:
            raise CheckpointError(
                f"schedule: the state is {sd.get('kind')}'s, this one is {type(self).__name__}"
            )
        if sd.get("config") != self._config():
            raise CheckpointError(
                f"schedule: configuration {sd.get('config')} differs from {self._config()}"
            )
        if len(sd.get("base_lrs", [])) != len(self.base_lrs):
            raise CheckpointError("schedule: base_lrs do not match the param groups")
        k = sd.get("last_step")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise CheckpointError(f"schedule: last_step must be an integer ≥ 0, got {k!r}")
        for i, b in enumerate(sd["base_lrs"]):
            _loaded_real(f"schedule: base_lrs[{i}]", b, positive=True)
        for name, now in self._extra_state().items():
            val = sd.get(name)
            if isinstance(now, int) and not isinstance(now, bool):
                if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                    raise CheckpointError(f"schedule: {name} must be an integer ≥ 0, got {val!r}")
            else:  # a float: ±inf allowed (ReduceLROnPlateau's best before any metric)
                ok = isinstance(val, int | float) and not isinstance(val, bool)
                if not ok or val != val:
                    raise CheckpointError(f"schedule: {name} must be a real number, got {val!r}")

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self._check_state_dict(sd)
        self.base_lrs = [float(b) for b in sd["base_lrs"]]
        self.last_step = int(sd["last_step"])
        for k in self._extra_state():
            setattr(self, k, sd[k])


def _loaded_real(what: str, x: Any, positive: bool) -> None:
    """A learning rate read from a state dict: a finite real, > 0 (``positive``) or ≥ 0."""
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    if not ok or x < 0 or (positive and x == 0):
        raise CheckpointError(
            f"{what} must be a finite real {'> 0' if positive else '≥ 0'}, got {x!r}"
        )


class StepLR(Schedule):
    """lr = base · γ^⌊k / step_size⌋ (torch.optim.lr_scheduler.StepLR)."""

    CONFIG = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = _in_range("gamma", gamma, 0.0, 1.0, lo_open=True, hi_open=False)
        super().__init__(optimizer)

    def factor(self, k: int) -> float:
        return self.gamma ** (k // self.step_size)


class ExponentialLR(Schedule):
    """lr = base · γ^k (torch.optim.lr_scheduler.ExponentialLR)."""

    CONFIG = ("gamma",)

    def __init__(self, optimizer: Optimizer, gamma: float):
        self.gamma = _in_range("gamma", gamma, 0.0, 1.0, lo_open=True, hi_open=False)
        super().__init__(optimizer)

    def factor(self, k: int) -> float:
        return self.gamma**k


class LinearWarmup(Schedule):
    """lr = base · (s + (e − s) · min(k, K)/K): torch's LinearLR, by default a warm-up from
    a third of the base lr over 5 steps."""

    CONFIG = ("start_factor", "end_factor", "total_iters")

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
    ):
        self.start_factor = _in_range(
            "start_factor", start_factor, 0, 1, lo_open=True, hi_open=False
        )
        self.end_factor = _in_range("end_factor", end_factor, 0, 1, lo_open=False, hi_open=False)
        self.total_iters = _positive_int("total_iters", total_iters)
        super().__init__(optimizer)

    def factor(self, k: int) -> float:
        frac = min(k, self.total_iters) / self.total_iters
        return self.start_factor + (self.end_factor - self.start_factor) * frac


class CosineWithWarmup(Schedule):
    """Linear warm-up from base·``warmup_start_factor`` to base over ``warmup_steps``, then
    cosine decay to ``min_lr`` at ``total_steps`` (held there after)."""

    CONFIG = ("warmup_steps", "total_steps", "min_lr", "warmup_start_factor")

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        min_lr: float = 0.0,
        warmup_start_factor: float = 0.0,
    ):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected an integer ≥ 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.total_steps = _positive_int("total_steps", total_steps)
        if total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps: must exceed warmup_steps ({warmup_steps}), got {total_steps}"
            )
        self.min_lr = _in_range("min_lr", min_lr, 0, math.inf, lo_open=False, hi_open=True)
        self.warmup_start_factor = _in_range(
            "warmup_start_factor", warmup_start_factor, 0, 1, lo_open=False, hi_open=False
        )
        super().__init__(optimizer)

    def lr_at(self, k: int) -> list[float]:
        w, s = self.warmup_steps, self.warmup_start_factor
        if k < w:
            return [b * (s + (1 - s) * k / w) for b in self.base_lrs]
        progress = min(1.0, (k - w) / (self.total_steps - w))
        c = 0.5 * (1 + math.cos(math.pi * progress))
        return [self.min_lr + (b - self.min_lr) * c for b in self.base_lrs]


class ReduceLROnPlateau(Schedule):
    """torch's ReduceLROnPlateau: ``step(metric)``; after more than ``patience`` steps with
    no improvement (rel: better than best·(1 ∓ threshold); abs: best ∓ threshold), every lr
    is multiplied by ``factor`` (not below ``min_lr``; changes under ``eps`` are dropped),
    then ``cooldown`` steps pass before counting again."""

    CONFIG = (
        "mode",
        "factor",
        "patience",
        "threshold",
        "threshold_mode",
        "cooldown",
        "min_lr",
        "eps",
    )

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode: expected 'rel' or 'abs', got {threshold_mode!r}")
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor_ = _in_range("factor", factor, 0, 1, lo_open=True, hi_open=True)
        for name, val in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise ValueError(f"{name}: expected an integer ≥ 0, got {val!r}")
        self.patience, self.cooldown = patience, cooldown
        self.threshold = _in_range("threshold", threshold, 0, math.inf, lo_open=False, hi_open=True)
        self.min_lr = _in_range("min_lr", min_lr, 0, math.inf, lo_open=False, hi_open=True)
        self.eps = _in_range("eps", eps, 0, math.inf, lo_open=False, hi_open=True)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_steps = 0
        self.cooldown_counter = 0
        super().__init__(optimizer)

    def _config(self) -> dict[str, Any]:
        c = {k: getattr(self, k) for k in self.CONFIG if k != "factor"}
        return {**c, "factor": self.factor_}

    def _extra_state(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "num_bad_steps": self.num_bad_steps,
            "cooldown_counter": self.cooldown_counter,
        }

    def _apply(self) -> None:  # the lr changes only in step(metric)
        pass

    def _better(self, a: float) -> bool:
        t = self.threshold
        if self.mode == "min":
            return a < (self.best * (1 - t) if self.threshold_mode == "rel" else self.best - t)
        return a > (self.best * (1 + t) if self.threshold_mode == "rel" else self.best + t)

    def step(self, metric: float) -> None:  # type: ignore[override]
        m = float(metric)
        if not math.isfinite(m):
            raise ValueError(f"metric: expected a finite number, got {metric!r}")
        self.last_step += 1
        if self._better(m):
            self.best, self.num_bad_steps = m, 0
        else:
            self.num_bad_steps += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_steps = 0
        if self.num_bad_steps > self.patience:
            for g in self.optimizer.param_groups:
                new = max(g["lr"] * self.factor_, self.min_lr)
                if g["lr"] - new > self.eps:
                    g["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lrs": self.get_last_lr()}

    def _check_state_dict(self, sd: dict[str, Any]) -> None:
        super()._check_state_dict(sd)
        if len(sd.get("lrs", [])) != len(self.base_lrs):
            raise CheckpointError("schedule: lrs do not match the param groups")
        for i, lr in enumerate(sd["lrs"]):
            _loaded_real(f"schedule: lrs[{i}]", lr, positive=False)

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        super().load_state_dict(sd)
        for g, lr in zip(self.optimizer.param_groups, sd["lrs"], strict=True):
            g["lr"] = float(lr)


__all__ = [
    "CosineWithWarmup",
    "ExponentialLR",
    "LinearWarmup",
    "ReduceLROnPlateau",
    "Schedule",
    "StepLR",
]
