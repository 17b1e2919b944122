"""Optimizer classes with torch.optim's names, defaults and semantics, over the fused ops.

    params = gpugd.FlatParams({"w": (784, 128), "b": (128,)})
    opt = gpugd.optim.AdamW(params, lr=1e-3)                 # the whole arena, one group
    opt = gpugd.optim.AdamW(                                 # param groups, by name
        [{"params": params, "names": ["w"]},
         {"params": params, "names": ["b"], "weight_decay": 0.0}], lr=1e-3)
    opt = gpugd.optim.SGD(arrays, grads=grad_arrays, lr=0.1, momentum=0.9)  # plain lists

    loss = ...; (write gradients into params.grads / grad_arrays); opt.step(); opt.zero_grad()

Clipping and non-finite gradients: ``max_grad_norm=`` (torch's global-norm clipping, fused:
one read-only norm pass, then the coefficient enters the update kernel through its grad
scale; gradients are never rewritten), ``clip_value=`` (elementwise, inside the update
kernel), ``nonfinite="propagate" | "skip" | "error"``; ``last_report`` and
``skipped_steps`` tell what happened. ``gpugd.monitor.GradientMonitor`` records gradient
health from the same passes.

Mixed precision: parameters (and gradients) may be float16 or bfloat16 — a half-precision
arena (``FlatParams(..., dtype=ml_dtypes.bfloat16)``) or lists. States are then float32
(``state_dtype=``: or bfloat16); ``master_weights=True`` keeps fp32 copies of the
parameters (state "master", in the arena's layout), which the fused kernel updates and
rounds into the half-precision parameters in the same pass; ``rounding="stochastic"``
(bfloat16 parameters) rounds them stochastically, from ``seed`` and the step number.
``gpugd.amp.LossScaler`` adds dynamic loss scaling.

A param group is either names of a ``FlatParams`` arena or a list of arrays with a list of
gradient arrays beside it (``grads``), plus hyperparameter overrides. Each step is one
launch per group: one fused kernel over the group's span of the arena (its tensors merged
where they are adjacent, padding included), or the multi-tensor kernel over its list.
States live beside the parameters (arena: same layout, ``params.new_state``). The step
counter counts from 1 as torch's does; every group steps together.

Checkpoints: ``state_dict()``/``load_state_dict()`` as torch's (states as NumPy copies,
no parameters); ``save(path)`` writes parameters and optimizer state (and the attached
schedule's) to one ``.npz`` atomically (temporary file, fsync, rename); ``load(path)``
checks kind, names, shapes, dtypes and every hyperparameter before it writes anything, so
a refused checkpoint leaves the optimizer and parameters as they were, and a resumed run
continues bit for bit.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from . import _hostmem as hostmem
from . import _validate
from ._io import atomic_savez, load_npz
from .flat import FlatParams
from .ops import optim as _ops
from .ops import reduce as _reduce
from .reference import nadam_mu

FORMAT = "gpugd-checkpoint-1"
MASTER = "master"  # the state holding fp32 master weights (master_weights=True)
NONFINITE_POLICIES = ("propagate", "skip", "error")


class StepReport(NamedTuple):
    """What ``step()`` did: the step number it took (or tried), whether it was skipped, the
    global gradient norm before clipping (None when no norm pass ran), the clip
    coefficient applied, and the tensors with non-finite gradients (name → count)."""

    step: int
    skipped: bool
    grad_norm: float | None
    clip_coef: float
    nonfinite: dict[str, int]


class _Pending(NamedTuple):
    """A CUDA step queued with its outcome on the device: what ``_resolve`` needs to account
    for it. ``decides_count``: the outcome may be a skip, so the step count (and the
    scaler) wait for it."""

    t: int
    report: StepReport
    norm_pass: bool
    grad_scale: float
    decides_count: bool
    scaler: Any


def _positive(name: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float | np.floating | np.integer):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name}: expected a finite value > 0, got {x!r}")
    return float(x)


class CheckpointError(ValueError):
    """A checkpoint or state dict that does not fit this optimizer; nothing was changed."""


def _to_numpy(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.array(a, copy=True)


class _Group:
    """One param group: its tensors (names, parameter and gradient arrays), where its state
    lives, and the arrays the kernel is launched on (spans of the arena or the lists)."""

    def __init__(self, spec: Mapping[str, Any], index: int, first_name: int):
        params = spec["params"]
        self.flat: FlatParams | None = params if isinstance(params, FlatParams) else None
        if self.flat is not None:
            if "grads" in spec:
                raise TypeError(f"param_groups[{index}]: grads come from the FlatParams arena")
            names = list(spec.get("names", self.flat.names))
            for n in names:
                self.flat._slot(n)  # KeyError naming the missing parameter
            order = {n: k for k, n in enumerate(self.flat.names)}
            self.names = sorted(names, key=order.__getitem__)
            self.params = [self.flat[n] for n in self.names]
            self.grads = [self.flat.grads[n] for n in self.names]
            self.spans = self._spans(order)
        else:
            if not isinstance(params, list | tuple) or "grads" not in spec:
                raise TypeError(
                    f"param_groups[{index}]: expected a FlatParams, or a list of arrays under "
                    f"'params' with their gradients under 'grads'; got {type(params).__name__}"
                )
            self.params, self.grads = list(params), list(spec["grads"])
            if len(self.grads) != len(self.params):
                raise ValueError(
                    f"param_groups[{index}]: {len(self.params)} params but {len(self.grads)} grads"
                )
            default = [str(first_name + k) for k in range(len(self.params))]
            self.names = [str(n) for n in spec.get("names", default)]
            if len(self.names) != len(self.params):
                raise ValueError(f"param_groups[{index}]: names and params differ in length")
            self.spans = None
        if not self.names:
            raise ValueError(f"param_groups[{index}]: no parameters")
        self.hyper = {k: val for k, val in spec.items() if k not in ("params", "grads", "names")}
        self.tensors: _ops.Tensors | None = None
        self.tensors_key: tuple = ()
        self.extra: dict[str, float] = {}  # per-group scalars a rule carries (NAdam's Π μ)

    def _spans(self, order: dict[str, int]) -> list[tuple[int, int]]:
        """[lo, hi) element ranges of the arena covering the group; adjacent tensors merge
        (the zero padding between them is updated too and stays zero)."""
        assert self.flat is not None
        spans: list[tuple[int, int]] = []
        for n in self.names:
            off = self.flat._slots[n][0]
            k = order[n]
            nxt = (
                self.flat.numel
                if k + 1 == len(order)
                else self.flat._slots[self.flat.names[k + 1]][0]
            )
            if spans and spans[-1][1] == off:
                spans[-1] = (spans[-1][0], nxt)
            else:
                spans.append((off, nxt))
        return spans

    def kernel_arrays(self, buf: Any) -> Any:
        """The group's part of an arena buffer, or None for list groups."""
        assert self.spans is not None
        parts = [buf[lo:hi] for lo, hi in self.spans]
        return parts[0] if len(parts) == 1 else parts


class Optimizer:
    """Base class: param groups, state, ``step``, ``zero_grad``, state dicts, checkpoints.
    Subclasses give ``DEFAULTS`` (torch's), ``STATES`` and ``_kernel``."""

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    STATE_KEYS: ClassVar[dict[str, str]] = {}  # op argument → state name, where they differ

    def __init__(
        self,
        params: Any,
        grads: Sequence[Any] | None = None,
        *,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        nonfinite: str = "propagate",
        master_weights: bool = False,
        state_dtype: Any = None,
        rounding: str = "nearest",
        seed: int = 0,
        **hyper: Any,
    ):
        self.max_grad_norm = (
            None if max_grad_norm is None else _positive("max_grad_norm", max_grad_norm)
        )
        self.clip_value = None if clip_value is None else _positive("clip_value", clip_value)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite: expected one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        unknown = sorted(set(hyper) - set(self.DEFAULTS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown or unsupported hyperparameter(s) {unknown}; "
                f"have {sorted(self.DEFAULTS)}"
            )
        self.defaults = {**self.DEFAULTS, **hyper}
        if isinstance(params, FlatParams):
            specs: list[Mapping[str, Any]] = [{"params": params}]
        elif isinstance(params, list | tuple) and params and isinstance(params[0], Mapping):
            if grads is not None:
                raise TypeError("grads: give each param group its own 'grads' instead")
            specs = list(params)
        elif isinstance(params, list | tuple):
            if grads is None:
                raise TypeError("grads: required when params is a list of arrays")
            specs = [{"params": params, "grads": grads}]
        else:
            raise TypeError(
                f"params: expected a FlatParams, a list of arrays or a list of param-group "
                f"dicts, got {type(params).__name__}"
            )
        groups: list[_Group] = []
        for i, spec in enumerate(specs):
            groups.append(_Group(spec, i, sum(len(g.names) for g in groups)))
            unknown = sorted(set(groups[-1].hyper) - set(self.DEFAULTS))
            if unknown:
                raise TypeError(f"param_groups[{i}]: unknown hyperparameter(s) {unknown}")
        names = [n for g in groups for n in g.names]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"params: tensors {dup} appear in more than one param group")
        arenas = {id(g.flat) for g in groups if g.flat is not None}
        if len(arenas) > 1:
            raise ValueError("params: all FlatParams groups must share one arena")
        # one tensor in two groups (an arena group and a list group viewing it, or two
        # overlapping list views) would be updated twice per step
        _validate.disjoint(
            {
                f"param_groups[{i}] tensor {n!r}": p
                for i, g in enumerate(groups)
                for n, p in zip(g.names, g.params, strict=True)
                if isinstance(p, np.ndarray) or hasattr(p, "__cuda_array_interface__")
            }
        )
        self._groups = groups
        self._precision(master_weights, state_dtype, rounding, seed)
        self.param_groups: list[dict[str, Any]] = [
            {**self.defaults, **g.hyper, "names": g.names} for g in groups
        ]
        self._pending: _Pending | None = None  # a CUDA step whose outcome is on the device
        self._decision: Any = None  # its buffers (gpugd._step_decision.StepDecision)
        self._step_count = 0
        self.scheduler: Any = None  # set by a schedule from gpugd.schedules
        self.monitor: Any = None  # set by gpugd.monitor.GradientMonitor
        self.loss_scaler: Any = None  # set by gpugd.amp.LossScaler
        self._skipped_steps = 0  # steps skipped for non-finite gradients (nonfinite="skip")
        self._last_report: StepReport | None = None
        self._grad_reduction: _reduce.Reduction | None = None
        for gi, group in enumerate(self.param_groups):
            self._kernel(group, 1, 1.0, self._groups[gi])  # validate every hyperparameter now
        self._allocate()

    # ---- precision policy

    def _precision(self, master_weights: Any, state_dtype: Any, rounding: str, seed: Any) -> None:
        """Check and record the precision policy: the parameters' dtype (one for every
        group), the states' dtype, fp32 master weights, the rounding of the parameters."""
        dtypes = {np.dtype(p.dtype) for g in self._groups for p in g.params}
        if len(dtypes) != 1:
            raise TypeError(
                f"params: one parameter dtype for all groups, got {sorted(map(str, dtypes))}"
            )
        pdt = dtypes.pop()
        self.param_dtype = pdt
        half = pdt.name in ("float16", "bfloat16")
        if not isinstance(master_weights, bool):
            raise TypeError(f"master_weights: expected a bool, got {master_weights!r}")
        _ops.rounding_key(rounding, seed)  # validates both
        if state_dtype is None:
            sdt = np.dtype(np.float32) if half else pdt
        else:
            try:
                sdt = np.dtype(state_dtype)
            except TypeError:
                raise TypeError(f"state_dtype: not a dtype: {state_dtype!r}") from None
        if not half:
            if master_weights:
                raise ValueError(
                    f"master_weights: fp32 master weights are for float16 or bfloat16 "
                    f"parameters; these are {pdt}"
                )
            if sdt != pdt:
                raise ValueError(f"state_dtype: with {pdt} parameters states are {pdt}, got {sdt}")
            if rounding != "nearest":
                raise ValueError(
                    f"rounding: stochastic rounding is for bfloat16 parameters, not {pdt}"
                )
        else:
            if sdt.name not in ("float32", "bfloat16"):
                raise ValueError(
                    f"state_dtype: beside {pdt} parameters states are float32 or bfloat16, "
                    f"got {sdt}"
                )
            if rounding != "nearest" and pdt.name != "bfloat16":
                raise ValueError(
                    f"rounding: stochastic rounding is for bfloat16 parameters, not {pdt}"
                )
        self.state_dtype = sdt
        self.master_weights = master_weights
        self.rounding, self.seed = rounding, int(seed)

    def _rounding_key(self, t: int) -> int | None:
        """This step's stochastic-rounding key (a new stream every step), or None."""
        return _ops.rounding_key(self.rounding, self.seed * (1 << 32) + t)

    # ---- per optimizer

    def _kernel(self, group: dict[str, Any], step: int, grad_scale: float, g: _Group) -> Any:
        raise NotImplementedError

    def _state_fills(self, group: dict[str, Any]) -> dict[str, float]:
        """State name → initial value, for the states this group's configuration uses."""
        raise NotImplementedError

    # ---- state

    def _all_state_names(self) -> list[str]:
        seen: list[str] = []
        for group in self.param_groups:
            for k in self._state_fills(group):
                if k not in seen:
                    seen.append(k)
        return seen

    def _allocate(self) -> None:
        self.state: dict[str, dict[str, Any]] = {n: {} for g in self._groups for n in g.names}
        self._buffers: dict[str, Any] = {}
        arena = next((g.flat for g in self._groups if g.flat is not None), None)
        for sname in self._all_state_names():
            if arena is not None:
                self._buffers[sname] = arena.new_state(dtype=self.state_dtype)
            for group, g in zip(self.param_groups, self._groups, strict=True):
                fill = self._state_fills(group).get(sname)
                if fill is None:
                    continue
                if g.flat is not None:
                    views = self._buffers[sname]
                    for lo, hi in g.spans:
                        views.data[lo:hi] = fill
                    for n in g.names:
                        self.state[n][sname] = views[n]
                else:
                    for n, p in zip(g.names, g.params, strict=True):
                        self.state[n][sname] = _full_like(p, fill, self.state_dtype)
        if self.master_weights:
            self._copy_masters(arena)
        for g in self._groups:
            g.tensors = None

    def _copy_masters(self, arena: FlatParams | None) -> None:
        """fp32 master weights: copies of the parameters (state "master"), in the arena's
        layout beside an arena."""
        if arena is not None:
            self._buffers[MASTER] = arena.new_state(dtype=np.float32)
            self._buffers[MASTER].data[...] = arena.data
        for g in self._groups:
            for n, p in zip(g.names, g.params, strict=True):
                if g.flat is not None:
                    self.state[n][MASTER] = self._buffers[MASTER][n]
                else:
                    self.state[n][MASTER] = hostmem.copy_of(p, np.float32)

    def sync_master_weights(self) -> None:
        """Copy the parameters into the fp32 master weights (after writing parameters by
        hand; ``load`` and ``load_state_dict`` restore the masters themselves)."""
        if not self.master_weights:
            raise ValueError("sync_master_weights: this optimizer keeps no master weights")
        for g in self._groups:
            for n, p in zip(g.names, g.params, strict=True):
                self.state[n][MASTER][...] = p

    def _tensors(self, gi: int, kernel: _ops.Kernel) -> _ops.Tensors:
        """The group's validated arrays for this kernel configuration (cached)."""
        g = self._groups[gi]
        per_name = self.monitor is not None  # per-tensor update statistics need the list path
        key = (*(why is not None for why in kernel.states.values()), per_name)
        if g.tensors is None or g.tensors_key != key:
            given = {}
            for arg, why in kernel.states.items():
                if why is None:
                    continue
                sname = self.STATE_KEYS.get(arg, arg)
                if sname not in self.state[g.names[0]]:
                    raise ValueError(
                        f"param_groups[{gi}]: the configuration now needs state {sname!r}, "
                        "which this optimizer was not created with; build a new optimizer"
                    )
                if g.flat is not None and not per_name:
                    given[arg] = g.kernel_arrays(self._buffers[sname].data)
                else:
                    given[arg] = [self.state[n][sname] for n in g.names]
            master = None
            if g.flat is not None and not per_name:
                p, gr = g.kernel_arrays(g.flat.data), g.kernel_arrays(g.flat.grad_data)
                if self.master_weights:
                    master = g.kernel_arrays(self._buffers[MASTER].data)
            else:
                p, gr = g.params, g.grads
                if self.master_weights:
                    master = [self.state[n][MASTER] for n in g.names]
            g.tensors = kernel.tensors(p, gr, given, master)
            g.tensors_key = key
        return g.tensors

    # ---- the training-loop API

    def step(
        self,
        closure: Callable[[], Any] | None = None,
        *,
        grad_scale: float = 1.0,
        skip_if: Any = None,
    ) -> Any:
        """One update of every group (one launch each). ``grad_scale`` multiplies every
        gradient (loss scaling); ``skip_if`` as in ``gpugd.ops``. A skipped step touches no
        state and does not advance the step counter. With ``max_grad_norm``, a non-finite
        policy other than "propagate", or a monitor, one read-only pass over the gradients
        comes first (norms, non-finite counts); the clip coefficient then enters the update
        through its grad scale, so gradients are never rewritten. ``last_report`` tells what
        happened. Returns the closure's loss when a closure is given.

        Host synchronization on CUDA: none in the step itself, except for ``nonfinite=
        "error"`` (it must raise before the update) and a monitor's recorded steps. The clip
        coefficient and the skip decision are made on the device (``gpugd._step_decision``)
        and read back when ``last_report``, ``step_count`` or ``skipped_steps`` is read, or,
        when a step may have been skipped (``nonfinite="skip"``, a loss scaler, ``skip_if``),
        at the start of the next step, which waits for this step's update only, not for the
        work queued after it. The CPU decides on the host, with the same numbers."""
        loss = closure() if closure is not None else None
        if self._pending is not None and self._pending.decides_count:
            self._resolve()
        t = self._step_count + 1
        scaler = (
            self.loss_scaler if self.loss_scaler is not None and self.loss_scaler.enabled else None
        )
        policy = self.nonfinite
        if scaler is not None:
            grad_scale = grad_scale * scaler.unscale_factor()
            policy = "skip"  # an overflow of the scaled loss is expected: skip and back off
        kernels = [
            self._kernel(group, t, grad_scale, g)
            for group, g in zip(self.param_groups, self._groups, strict=True)
        ]
        report = StepReport(step=t, skipped=False, grad_norm=None, clip_coef=1.0, nonfinite={})
        coef = 1.0
        gstats = None
        watch = self.monitor is not None and self.monitor.wants(t)
        norm_pass = self.max_grad_norm is not None or policy != "propagate"
        if (
            self._on_cuda()
            and not watch
            and policy != "error"
            and (norm_pass or skip_if is not None)
        ):
            self._step_on_device(t, kernels, report, grad_scale, norm_pass, policy, skip_if)
            return loss
        self._pending = None  # a report this step supersedes
        if norm_pass or watch:
            gstats = self._gradients().run(zeros=watch)
            if policy != "propagate" and bool(gstats.nonfinite):
                bad = self._nonfinite_names(gstats)
                if scaler is not None:
                    scaler._update(found_inf=True)
                if policy == "error":
                    raise FloatingPointError(
                        f"step {t}: non-finite gradients in {bad} (elements per tensor); "
                        "nothing was changed"
                    )
                self._skipped_steps += 1
                self._last_report = report._replace(
                    skipped=True, grad_norm=float(gstats.norm), nonfinite=bad
                )
                if self.monitor is not None:
                    self.monitor._record_skip(t, bad)
                return loss
            norm = float(gstats.norm) * abs(grad_scale)
            report = report._replace(grad_norm=norm)
            if self.max_grad_norm is not None:
                coef = _reduce.clip_coefficient(norm, self.max_grad_norm)
                report = report._replace(clip_coef=coef)
        clip = math.inf if self.clip_value is None else self.clip_value
        key = self._rounding_key(t)
        update_stats = []
        for gi, k in enumerate(kernels):
            k = k._replace(grad_scale=k.grad_scale * coef, clip=clip, key=key)
            update_stats.append(k.launch(self._tensors(gi, k), skip_if, stats=watch))
        if skip_if is not None and int(skip_if.reshape(-1)[0]) != 0:
            self._last_report = report._replace(skipped=True)
            return loss  # skipped: no state touched, the step counter not advanced
        self._after_step(t)
        self._step_count = t
        self._last_report = report
        if scaler is not None:
            scaler._update(found_inf=False)
        if watch:
            self.monitor._record(t, gstats, abs(grad_scale), update_stats)
        return loss

    # ---- the CUDA step decided on the device

    _device_decides = True  # False: the host decides on CUDA too (the tests' reference)

    def _on_cuda(self) -> bool:
        return self._device_decides and hasattr(
            self._groups[0].params[0], "__cuda_array_interface__"
        )

    def _step_on_device(
        self,
        t: int,
        kernels: list[Any],
        report: StepReport,
        grad_scale: float,
        norm_pass: bool,
        policy: str,
        skip_if: Any,
    ) -> None:
        """Queue norm pass, decision and update with no host synchronization; the outcome
        stays pending (``_resolve``)."""
        from ._step_decision import StepDecision

        skip_if = _ops._skip_flag(skip_if, "cuda")
        clip = math.inf if self.clip_value is None else self.clip_value
        key = self._rounding_key(t)
        launches = [(k._replace(clip=clip, key=key), gi) for gi, k in enumerate(kernels)]
        tensors = [self._tensors(gi, k) for k, gi in launches]  # validated before any launch
        if self._decision is None:
            self._decision = StepDecision(self._gradients())
        dec = self._decision
        self._pending = None  # superseded: its outcome could not change the step count
        dec.decide(norm_pass, grad_scale, self.max_grad_norm, policy == "skip", skip_if)
        for (k, _), ts in zip(launches, tensors, strict=True):
            k.launch(ts, dec.skip, dev_scale=dec.dev_scale)
        can_skip = policy == "skip" or skip_if is not None
        dec.copy_back(per_tensor=policy == "skip")
        scaler = (
            self.loss_scaler if self.loss_scaler is not None and self.loss_scaler.enabled else None
        )
        self._pending = _Pending(t, report, norm_pass, grad_scale, can_skip, scaler)
        if not can_skip:
            self._after_step(t)
            self._step_count = t

    def _resolve(self) -> None:
        """Read a pending CUDA step's outcome (waits for that step's event) and account for
        it as the host path does: report, step count, skips, scaler, monitor."""
        p = self._pending
        if p is None:
            return
        self._pending = None
        from ._step_decision import SKIPPED_BY_FLAG, SKIPPED_NONFINITE

        out, counts = self._decision.read()
        raw, coef, outcome = float(out[0]), float(out[1]), int(out[4])
        report = p.report
        if outcome == SKIPPED_NONFINITE:
            bad = {n: int(c) for n, c in zip(self.names, counts, strict=True) if c}
            if p.scaler is not None:
                p.scaler._update(found_inf=True)
            self._skipped_steps += 1
            self._last_report = report._replace(skipped=True, grad_norm=raw, nonfinite=bad)
            if self.monitor is not None:
                self.monitor._record_skip(p.t, bad)
            return
        if p.norm_pass:
            report = report._replace(grad_norm=raw * abs(p.grad_scale))
            if self.max_grad_norm is not None:
                report = report._replace(clip_coef=coef)
        if outcome == SKIPPED_BY_FLAG:
            self._last_report = report._replace(skipped=True)
            return
        if p.decides_count:
            self._after_step(p.t)
            self._step_count = p.t
        if p.scaler is not None:
            p.scaler._update(found_inf=False)
        self._last_report = report

    @property
    def step_count(self) -> int:
        """Steps taken (skipped ones not counted); reading it settles a pending CUDA step."""
        self._resolve()
        return self._step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        self._resolve()
        self._step_count = value

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for non-finite gradients (``nonfinite="skip"`` or a loss scaler)."""
        self._resolve()
        return self._skipped_steps

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._resolve()
        self._skipped_steps = value

    @property
    def last_report(self) -> StepReport | None:
        """The last step's ``StepReport`` (None before the first step)."""
        self._resolve()
        return self._last_report

    def _gradients(self) -> _reduce.Reduction:
        """The reduction over every gradient tensor, in group and name order (cached)."""
        if self._grad_reduction is None:
            arrays = [a for g in self._groups for a in g.grads]
            self._grad_reduction = _reduce.Reduction(arrays, "grads")
        return self._grad_reduction

    def _nonfinite_names(self, gstats: Any) -> dict[str, int]:
        counts = gstats.nonfinite_counts
        counts = counts.get() if hasattr(counts, "get") else counts
        names = [n for g in self._groups for n in g.names]
        return {n: int(c) for n, c in zip(names, counts, strict=True) if c}

    @property
    def names(self) -> list[str]:
        """Every tensor's name, in group order."""
        return [n for g in self._groups for n in g.names]

    @property
    def sizes(self) -> list[int]:
        return [int(p.size) for g in self._groups for p in g.params]

    def _after_step(self, t: int) -> None:
        """Per-group bookkeeping after a step (NAdam's running product of μ)."""

    def zero_grad(self) -> None:
        """Zero every gradient: one fill of the arena's gradient buffer, or each array."""
        arena = next((g.flat for g in self._groups if g.flat is not None), None)
        if arena is not None:
            arena.zero_grad()
        for g in self._groups:
            if g.flat is None:
                for a in g.grads:
                    a.fill(0)

    # ---- state dicts

    def _hyper_of(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            k: (list(val) if isinstance(val, tuple) else val)
            for k, val in group.items()
            if k != "names"
        }

    def state_dict(self) -> dict[str, Any]:
        """torch-like: ``{"kind", "step", "param_groups", "layout", "state", "group_state",
        "scheduler"}``; arrays are NumPy copies, so it can be saved or sent anywhere."""
        layout = {}
        for g in self._groups:
            for n, p in zip(g.names, g.params, strict=True):
                layout[n] = {"shape": list(p.shape), "dtype": str(p.dtype)}
        return {
            "kind": type(self).__name__,
            "step": self.step_count,
            "param_groups": [
                {**self._hyper_of(gr), "names": list(gr["names"])} for gr in self.param_groups
            ],
            "layout": layout,
            "state": {n: {k: _to_numpy(a) for k, a in st.items()} for n, st in self.state.items()},
            "group_state": [dict(g.extra) for g in self._groups],
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "loss_scaler": None if self.loss_scaler is None else self.loss_scaler.state_dict(),
        }

    def _check_state_dict(self, sd: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every check of ``load_state_dict``; returns the new param groups. Raises
        CheckpointError naming the first difference."""
        for key in ("kind", "step", "param_groups", "layout", "state"):
            if key not in sd:
                raise CheckpointError(f"state dict: missing {key!r}")
        if sd["kind"] != type(self).__name__:
            raise CheckpointError(
                f"state dict: written by {sd['kind']}, this optimizer is {type(self).__name__}"
            )
        step = sd["step"]
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise CheckpointError(f"state dict: step must be a non-negative integer, got {step!r}")
        skipped = sd.get("skipped_steps", 0)
        if isinstance(skipped, bool) or not isinstance(skipped, int | np.integer) or skipped < 0:
            raise CheckpointError(
                f"state dict: skipped_steps must be a non-negative integer, got {skipped!r}"
            )
        if not isinstance(sd["layout"], Mapping) or not isinstance(sd["state"], Mapping):
            raise CheckpointError("state dict: layout and state must be mappings")
        if not isinstance(sd["param_groups"], list | tuple):
            raise CheckpointError("state dict: param_groups must be a list")
        layout = sd["layout"]
        mine_names = [n for g in self._groups for n in g.names]
        if list(layout) != mine_names:
            raise CheckpointError(
                f"state dict: tensors {list(layout)[:6]}… do not match this optimizer's "
                f"{mine_names[:6]}…; first difference: "
                + _first_difference(list(layout), mine_names)
            )
        for g in self._groups:
            for n, p in zip(g.names, g.params, strict=True):
                want = {"shape": list(p.shape), "dtype": str(p.dtype)}
                got = {"shape": list(layout[n]["shape"]), "dtype": str(layout[n]["dtype"])}
                if got != want:
                    raise CheckpointError(f"state dict: tensor {n!r} is {got}, expected {want}")
        groups = sd["param_groups"]
        if len(groups) != len(self._groups):
            raise CheckpointError(
                f"state dict: {len(groups)} param groups, this optimizer has {len(self._groups)}"
            )
        new_groups = []
        for gi, (gd, g) in enumerate(zip(groups, self._groups, strict=True)):
            if not isinstance(gd, Mapping):
                raise CheckpointError(f"state dict: param_groups[{gi}] is not a mapping")
            if list(gd.get("names", [])) != g.names:
                raise CheckpointError(f"state dict: param_groups[{gi}] names differ")
            hyper = {k: val for k, val in gd.items() if k != "names"}
            if set(hyper) != set(self.DEFAULTS):
                raise CheckpointError(
                    f"state dict: param_groups[{gi}] hyperparameters {sorted(hyper)} differ "
                    f"from {type(self).__name__}'s {sorted(self.DEFAULTS)}"
                )
            if "betas" in hyper:
                hyper["betas"] = tuple(hyper["betas"])
            group = {**hyper, "names": g.names}
            try:
                self._kernel(group, max(int(step), 1), 1.0, g)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"state dict: param_groups[{gi}]: {exc}") from None
            if self._state_fills(group).keys() != self._state_fills(self.param_groups[gi]).keys():
                raise CheckpointError(
                    f"state dict: param_groups[{gi}] needs states "
                    f"{sorted(self._state_fills(group))}, this optimizer holds "
                    f"{sorted(self._state_fills(self.param_groups[gi]))}"
                )
            new_groups.append(group)
        for n, st in self.state.items():
            got = sd["state"].get(n)
            if got is None or set(got) != set(st):
                raise CheckpointError(
                    f"state dict: tensor {n!r} carries states {sorted(got or {})}, "
                    f"expected {sorted(st)}"
                )
            for k, a in st.items():
                b = np.asarray(got[k])
                if b.shape != a.shape or b.dtype != a.dtype:
                    raise CheckpointError(
                        f"state dict: {n!r}.{k} is {b.dtype}{list(b.shape)}, expected "
                        f"{a.dtype}{list(a.shape)}"
                    )
                _check_values(f"state dict: {n!r}.{k}", b, nonnegative=k in SQUARED_STATES)
        gstate = sd.get("group_state", [{} for _ in self._groups])
        if not isinstance(gstate, list | tuple) or len(gstate) != len(self._groups):
            raise CheckpointError("state dict: group_state does not match the param groups")
        for gi, extra in enumerate(gstate):
            self._check_group_state(gi, extra)
        sched = sd.get("scheduler")
        if (sched is None) != (self.scheduler is None):
            have = "no schedule" if self.scheduler is None else type(self.scheduler).__name__
            raise CheckpointError(
                f"state dict: carries {'no schedule' if sched is None else sched.get('kind')}, "
                f"this optimizer has {have}; attach the same schedule before loading"
            )
        if sched is not None:
            self.scheduler._check_state_dict(sched)
        scaler = sd.get("loss_scaler")
        if (scaler is None) != (self.loss_scaler is None):
            raise CheckpointError(
                f"state dict: carries {'no' if scaler is None else 'a'} loss scaler, this "
                f"optimizer has {'none' if self.loss_scaler is None else 'one'}; attach the "
                "same LossScaler before loading"
            )
        if scaler is not None:
            try:
                self.loss_scaler._check_state_dict(scaler)
            except ValueError as exc:
                raise CheckpointError(f"state dict: {exc}") from None
        return new_groups

    GROUP_STATE: ClassVar[dict[str, tuple[float, float]]] = {}  # name -> [lo, hi]: NAdam's Π μ

    def _check_group_state(self, gi: int, extra: Any) -> None:
        """A group's scalars (``group_state``): known names, real, finite, in range."""
        if not isinstance(extra, Mapping):
            raise CheckpointError(f"state dict: group_state[{gi}] is not a mapping")
        for k, val in extra.items():
            if k not in self.GROUP_STATE:
                raise CheckpointError(
                    f"state dict: group_state[{gi}] has {k!r}; {type(self).__name__} keeps "
                    f"{sorted(self.GROUP_STATE) or 'none'}"
                )
            lo, hi = self.GROUP_STATE[k]
            ok = isinstance(val, int | float | np.floating) and not isinstance(val, bool)
            if not ok or not (math.isfinite(val) and lo <= val <= hi):
                raise CheckpointError(
                    f"state dict: group_state[{gi}][{k!r}] must be a real in [{lo}, {hi}], "
                    f"got {val!r}"
                )

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``; everything is checked first, so a state dict that does
        not fit raises ``CheckpointError`` and changes nothing."""
        new_groups = self._check_state_dict(sd)
        for n, st in self.state.items():
            for k, a in st.items():
                a[...] = _like(a, np.asarray(sd["state"][n][k]))
        self.param_groups = new_groups
        for g, extra in zip(self._groups, sd.get("group_state", []), strict=False):
            g.extra = {k: float(val) for k, val in extra.items()}
        self.step_count = int(sd["step"])
        self.skipped_steps = int(sd.get("skipped_steps", 0))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(sd["scheduler"])
        if self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(sd["loss_scaler"])

    # ---- checkpoints on disk

    def save(self, path: str | os.PathLike, *, params: bool = True) -> Path:
        """Write parameters (unless ``params=False``) and the state dict to ``path`` (.npz)
        atomically: a temporary file in the same directory, fsync, then rename."""
        path = Path(path)
        sd = self.state_dict()
        arrays: dict[str, np.ndarray] = {}
        for n, st in sd.pop("state").items():
            for k, a in st.items():
                arrays[f"state/{n}/{k}"] = a
        if params:
            for g in self._groups:
                for n, p in zip(g.names, g.params, strict=True):
                    arrays[f"param/{n}"] = _to_numpy(p)
        meta = {"format": FORMAT, "params": params, **sd}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        atomic_savez(path, arrays)
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Load a checkpoint written by ``save``: parameters (when it has them) and state.
        Everything is validated before anything is written (``CheckpointError``)."""
        path = Path(path)
        try:
            files = load_npz(path)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable gpugd checkpoint ({exc})") from None
        if not isinstance(files.get("meta"), np.ndarray) or files["meta"].dtype != np.uint8:
            files.pop("meta", None)
        if "meta" not in files:
            raise CheckpointError(f"{path}: no 'meta' record; not a gpugd checkpoint")
        try:
            meta = json.loads(files.pop("meta").tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable 'meta' record ({exc})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: 'meta' is not a JSON object")
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        state: dict[str, dict[str, np.ndarray]] = {n: {} for n in meta.get("layout", {})}
        param_arrays: dict[str, np.ndarray] = {}
        for key, a in files.items():
            kind, _, rest = key.partition("/")
            if kind == "state":
                n, _, k = rest.rpartition("/")
                state.setdefault(n, {})[k] = a
            elif kind == "param":
                param_arrays[rest] = a
        sd = {**meta, "state": state}
        try:
            self._check_state_dict(sd)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        if not isinstance(meta.get("params"), bool):
            raise CheckpointError(f"{path}: 'params' must be true or false in 'meta'")
        if meta["params"]:
            for g in self._groups:
                for n, p in zip(g.names, g.params, strict=True):
                    a = param_arrays.get(n)
                    if a is None or a.shape != p.shape or a.dtype != p.dtype:
                        raise CheckpointError(f"{path}: parameter {n!r} missing or mismatched")
                    try:
                        _check_values(f"parameter {n!r}", a)
                    except CheckpointError as exc:
                        raise CheckpointError(f"{path}: {exc}") from None
            for g in self._groups:
                for n, p in zip(g.names, g.params, strict=True):
                    p[...] = _like(p, param_arrays[n])
        self.load_state_dict(sd)


# states that are sums or averages of squares: never negative (a negative one would put a
# NaN into the next step's square root)
SQUARED_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg"})


def _check_values(what: str, a: np.ndarray, nonnegative: bool = False) -> None:
    """A loaded float array: finite (a checkpoint to resume from holds no NaN or Inf), and
    ≥ 0 where ``nonnegative``."""
    if a.dtype.kind not in "fV" and a.dtype.name != "bfloat16":
        return
    x = a.astype(np.float64, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        raise CheckpointError(
            f"{what} holds {int(bad.sum())} non-finite value(s) (first at flat index "
            f"{int(np.flatnonzero(bad.ravel())[0])}); not a state to resume from"
        )
    if nonnegative and (x < 0).any():
        raise CheckpointError(f"{what} holds negative values; it is a sum of squares")


def _first_difference(a: list[str], b: list[str]) -> str:
    for k, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"position {k}: {x!r} in the checkpoint, {y!r} here"
    return f"{len(a)} tensors in the checkpoint, {len(b)} here"


def _like(target: Any, host: np.ndarray) -> Any:
    """``host`` on ``target``'s backend."""
    if isinstance(target, np.ndarray):
        return host
    import cupy

    return cupy.asarray(host)


def _full_like(a: Any, fill: float, dtype: Any) -> Any:
    """A state beside ``a``: ``a``'s shape, ``dtype``, every element ``fill`` (on the host
    from ``gpugd._hostmem``: large states on huge pages)."""
    out = hostmem.zeros_like(a, dtype) if isinstance(a, np.ndarray) else a.astype(dtype)
    if fill or not isinstance(a, np.ndarray):
        out.fill(fill)
    return out


# ---- the optimizers ---------------------------------------------------------------------


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
            decoupled=group["decoupled_weight_decay"],
            step=step,
            mu_product=g.extra.get("mu_product", 1.0),
            grad_scale=grad_scale,
        )

    GROUP_STATE: ClassVar[dict[str, tuple[float, float]]] = {"mu_product": (0.0, 1.0)}

    def _after_step(self, t):
        for group, g in zip(self.param_groups, self._groups, strict=True):
            mu = nadam_mu(t, group["betas"][0], group["momentum_decay"])
            g.extra["mu_product"] = g.extra.get("mu_product", 1.0) * mu


__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "CheckpointError",
    "NAdam",
    "Optimizer",
    "RMSprop",
    "StepReport",
]
