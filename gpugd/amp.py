"""Dynamic loss scaling for half-precision gradients: ``LossScaler`` (torch.amp.GradScaler's
behaviour, fused into gpugd's step).

    opt = gpugd.optim.Adam(params16, lr=1e-3, master_weights=True)   # bf16/fp16 params
    scaler = gpugd.amp.LossScaler(opt)                 # attaches itself to the optimizer
    loss = scaler.scale(loss)                          # backward of the scaled loss → grads
    report = scaler.step()                             # = opt.step(): unscale, check, update

The loss is multiplied by the scale S before the backward pass, so small gradients stay
representable in float16; the step divides them by S again. Nothing is rewritten for that:
1/S enters the fused update kernels through ``grad_scale``, and the non-finite check is the
norm pass the optimizer runs anyway (one read of the gradients, which also gives the
global norm for clipping — of the unscaled gradients). When the gradients hold an Inf or
NaN (the scaled loss overflowed), the step is skipped: no parameter or state is touched,
the step counter does not advance, the step is reported (``StepReport.skipped``) and
counted (``skipped_steps`` here and on the optimizer), and S is multiplied by
``backoff_factor``. After ``growth_interval`` consecutive steps without overflow S is
multiplied by ``growth_factor``. The scale update happens inside every ``opt.step()``
while a scaler is attached (there is no separate ``update()`` call to forget), and the
scaler's state is part of the optimizer's ``state_dict()`` and checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _factor(name: str, x: Any, lo: float, hi: float) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float | np.floating | np.integer):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    if not (math.isfinite(x) and lo < x < hi):
        raise ValueError(f"{name}: expected a finite value in ({lo}, {hi}), got {x!r}")
    return float(x)


class LossScaler:
    """GradScaler's dynamic loss scale for one gpugd optimizer (attached on creation).

    Defaults are torch's: ``init_scale=2**16``, ``growth_factor=2``, ``backoff_factor=0.5``,
    ``growth_interval=2000``. ``enabled=False`` keeps the scale at 1 and checks nothing
    beyond the optimizer's own policy, so one training loop serves both precisions."""

    def __init__(
        self,
        optimizer: Any,
        *,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ):
        from .optim import Optimizer

        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer: expected a gpugd.optim optimizer, got {type(optimizer).__name__}"
            )
        if optimizer.loss_scaler is not None:
            raise ValueError("optimizer: already has a LossScaler attached")
        self.init_scale = _factor("init_scale", init_scale, 0.0, math.inf)
        self.growth_factor = _factor("growth_factor", growth_factor, 1.0, math.inf)
        self.backoff_factor = _factor("backoff_factor", backoff_factor, 0.0, 1.0)
        if (
            isinstance(growth_interval, bool)
            or not isinstance(growth_interval, int | np.integer)
            or growth_interval < 1
        ):
            raise ValueError(f"growth_interval: expected an integer ≥ 1, got {growth_interval!r}")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled: expected a bool, got {enabled!r}")
        self.growth_interval = int(growth_interval)
        self.enabled = enabled
        self.optimizer = optimizer
        self._scale_value = self.init_scale if enabled else 1.0
        self._growth_tracker = 0  # consecutive steps without overflow since the last change
        self._skipped_steps = 0
        optimizer.loss_scaler = self

    # ---- the state, settled first when the optimizer's last CUDA step is still pending
    # (its overflow check is on the device until read: gpugd.optim.Optimizer.step)

    @property
    def scale_value(self) -> float:
        """S (reading it settles a pending CUDA step of the optimizer)."""
        self.optimizer._resolve()
        return self._scale_value

    @scale_value.setter
    def scale_value(self, value: float) -> None:
        self.optimizer._resolve()
        self._scale_value = value

    @property
    def growth_tracker(self) -> int:
        """Consecutive steps without overflow since the scale last changed."""
        self.optimizer._resolve()
        return self._growth_tracker

    @growth_tracker.setter
    def growth_tracker(self, value: int) -> None:
        self.optimizer._resolve()
        self._growth_tracker = value

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for overflow."""
        self.optimizer._resolve()
        return self._skipped_steps

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self.optimizer._resolve()
        self._skipped_steps = value

    # ---- the training-loop API

    @property
    def scale_factor(self) -> float:
        """S, the current scale (1 when disabled)."""
        return self.scale_value

    def scale(self, loss: Any) -> Any:
        """``loss · S``: backpropagate this, not the loss."""
        return loss * self.scale_value

    def unscale_factor(self) -> float:
        """1/S: what the step multiplies the gradients by (through ``grad_scale``)."""
        return 1.0 / self.scale_value

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """``optimizer.step(...)``; returns its ``StepReport`` (``skipped`` on overflow)."""
        self.optimizer.step(*args, **kwargs)
        return self.optimizer.last_report

    def _update(self, found_inf: bool) -> None:
        """After every step of the optimizer: back off on overflow, grow on schedule."""
        if not self.enabled:
            return
        if found_inf:
            self._scale_value *= self.backoff_factor
            self._growth_tracker = 0
            self._skipped_steps += 1
            return
        self._growth_tracker += 1
        if self._growth_tracker == self.growth_interval:
            self._scale_value *= self.growth_factor
            self._growth_tracker = 0

    # ---- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "LossScaler",
            "scale": self.scale_value,
            "growth_tracker": self.growth_tracker,
            "skipped_steps": self.skipped_steps,
            "init_scale": self.init_scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "enabled": self.enabled,
        }

    def _check_state_dict(self, sd: Any) -> None:
        """Raise ValueError naming the first field that does not fit this scaler."""
        if not isinstance(sd, dict) or sd.get("kind") != "LossScaler":
            raise ValueError(f"loss scaler: expected a LossScaler state, got {sd!r:.80}")
        for key in ("growth_factor", "backoff_factor", "growth_interval", "enabled"):
            if sd.get(key) != getattr(self, key):
                raise ValueError(
                    f"loss scaler: {key} is {sd.get(key)!r} in the state, {getattr(self, key)!r} "
                    "here"
                )
        scale, tracker = sd.get("scale"), sd.get("growth_tracker")
        if not isinstance(scale, int | float) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"loss scaler: scale must be finite and > 0, got {scale!r}")
        if (
            isinstance(tracker, bool)
            or not isinstance(tracker, int)
            or not 0 <= tracker < self.growth_interval
        ):
            raise ValueError(f"loss scaler: growth_tracker out of range: {tracker!r}")
        skipped = sd.get("skipped_steps", 0)
        if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
            raise ValueError(f"loss scaler: skipped_steps must be an integer ≥ 0, got {skipped!r}")
        if isinstance(scale, bool):
            raise ValueError(f"loss scaler: scale must be a real number, got {scale!r}")

    def load_state_dict(self, sd: Any) -> None:
        self._check_state_dict(sd)
        self.scale_value = float(sd["scale"])
        self.growth_tracker = int(sd["growth_tracker"])
        self.skipped_steps = int(sd.get("skipped_steps", 0))


__all__ = ["LossScaler"]
