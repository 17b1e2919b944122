"""The optimizers: torch.optim's names, defaults and semantics over the fused ops."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .. import _validate
from ..ops import optim as _ops
from ..ops import optim8 as _ops8
from ..reference import nadam_mu
from ._base import Optimizer


class SGD(Optimizer):
    """torch.optim.SGD: weight decay, momentum, dampening, Nesterov (``gpugd.ops.sgd_``)."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False
    )

    def _state_fills(self, group):
        return {"momentum_buffer": 0.0} if group["momentum"] != 0 else {}

    def _kernel(self, group, step, grad_scale, g):
        h = {k: group[k] for k in self.DEFAULTS}
        return _ops.sgd_kernel(**h, step=step, grad_scale=grad_scale)

    def _op8(self, group, step):
        if group["momentum"] == 0:
            return None
        h = {k: group[k] for k in self.DEFAULTS}
        return _ops8.momentum8bit_, {"momentum_buffer": "momentum_buffer"}, {**h, "step": step}


class Adagrad(Optimizer):
    """torch.optim.Adagrad: lr_decay, initial_accumulator_value, eps (``gpugd.ops.adagrad_``)."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10
    )
    STATE_KEYS: ClassVar[dict[str, str]] = {"state_sum": "sum"}  # torch's name for it

    def _state_fills(self, group):
        return {"sum": float(group["initial_accumulator_value"])}

    def _kernel(self, group, step, grad_scale, g):
        iav = group["initial_accumulator_value"]
        if not isinstance(iav, int | float | np.floating | np.integer) or isinstance(iav, bool):
            raise TypeError(
                f"initial_accumulator_value: expected a real number, got {type(iav).__name__}"
            )
        if not (math.isfinite(iav) and iav >= 0):
            raise ValueError(f"initial_accumulator_value: expected a finite value ≥ 0, got {iav!r}")
        h = {k: group[k] for k in self.DEFAULTS if k != "initial_accumulator_value"}
        return _ops.adagrad_kernel(**h, step=step, grad_scale=grad_scale)

    def _op8(self, group, step):
        h = {k: group[k] for k in self.DEFAULTS if k != "initial_accumulator_value"}
        return _ops8.adagrad8bit_, {"state_sum": "sum"}, {**h, "step": step}


class RMSprop(Optimizer):
    """torch.optim.RMSprop: alpha, eps, momentum, centered (``gpugd.ops.rmsprop_``)."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False
    )

    def _state_fills(self, group):
        fills = {"square_avg": 0.0}
        if group["centered"]:
            fills["grad_avg"] = 0.0
        if group["momentum"] > 0:
            fills["momentum_buffer"] = 0.0
        return fills

    def _kernel(self, group, step, grad_scale, g):
        h = {k: group[k] for k in self.DEFAULTS}
        return _ops.rmsprop_kernel(**h, grad_scale=grad_scale)

    def _op8(self, group, step):
        if group["centered"] or group["momentum"] > 0:
            raise ValueError(
                "state_bits=8: RMSprop's 8-bit update is the plain rule; centered=True or "
                "momentum > 0 need state_bits=32"
            )
        h = {k: group[k] for k in ("lr", "alpha", "eps", "weight_decay")}
        return _ops8.rmsprop8bit_, {"square_avg": "square_avg"}, h


class Adam(Optimizer):
    """torch.optim.Adam (with amsgrad), coupled L2 weight decay (``gpugd.ops.adam_``)."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False
    )
    DECOUPLED = False

    def _state_fills(self, group):
        fills = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if group["amsgrad"]:
            fills["max_exp_avg_sq"] = 0.0
        return fills

    def _kernel(self, group, step, grad_scale, g):
        h = {k: group[k] for k in self.DEFAULTS}
        return _ops.adam_kernel(**h, decoupled=self.DECOUPLED, step=step, grad_scale=grad_scale)

    def _op8(self, group, step):
        if group["amsgrad"]:
            raise ValueError("state_bits=8: amsgrad=True needs state_bits=32 (no 8-bit AMSGrad)")
        h = {k: group[k] for k in ("lr", "betas", "eps", "weight_decay")}
        states = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
        return _ops8.adam8bit_, states, {**h, "decoupled": self.DECOUPLED, "step": step}


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, default 1e-2."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(Adam.DEFAULTS, weight_decay=1e-2)
    DECOUPLED = True


class NAdam(Optimizer):
    """torch.optim.NAdam: momentum_decay ψ, optional decoupled weight decay
    (``gpugd.ops.nadam_``); the running product Π μ is kept per group."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        lr=2e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        momentum_decay=4e-3,
        decoupled_weight_decay=False,
    )

    def _state_fills(self, group):
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}

    def _kernel(self, group, step, grad_scale, g):
        h = {k: group[k] for k in self.DEFAULTS if k != "decoupled_weight_decay"}
        return _ops.nadam_kernel(
            **h,
            decoupled=_validate.flag("decoupled_weight_decay", group["decoupled_weight_decay"]),
            step=step,
            mu_product=g.extra.get("mu_product", 1.0),
            grad_scale=grad_scale,
        )

    GROUP_STATE: ClassVar[dict[str, tuple[float, float]]] = {"mu_product": (0.0, 1.0)}

    def _after_step(self, t):
        for group, g in zip(self.param_groups, self._groups, strict=True):
            mu = nadam_mu(t, group["betas"][0], group["momentum_decay"])
            g.extra["mu_product"] = g.extra.get("mu_product", 1.0) * mu


class Lion(Optimizer):
    """Lion (Chen et al. 2023) with lion-pytorch's names and defaults, decoupled weight
    decay: p ← p·(1 − lr·wd) − lr·sign(β1·m + (1−β1)·g); m = β2·m + (1−β2)·g
    (``gpugd.ops.lion_``). One state, ``exp_avg``."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)

    def _state_fills(self, group):
        return {"exp_avg": 0.0}

    def _kernel(self, group, step, grad_scale, g):
        h = {k: group[k] for k in self.DEFAULTS}
        return _ops.lion_kernel(**h, grad_scale=grad_scale)

    def _op8(self, group, step):
        return _ops8.lion8bit_, {"exp_avg": "exp_avg"}, {k: group[k] for k in self.DEFAULTS}
