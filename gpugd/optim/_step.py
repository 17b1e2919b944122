"""The training step (part of every ``gpugd.optim`` optimizer): the host-decided path (the
CPU, and the CUDA cases that must read on the host) and the CUDA path decided on the device
(``gpugd._step_decision``) whose outcome is settled lazily."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .. import quant8
from ..ops import optim as _ops
from ..ops import reduce as _reduce

_MASTER = "master"  # the fp32 master weights' state (``gpugd.optim.MASTER``)


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


class StepMixin:
    """``step()``, its report and counters, and the gradients' norm pass (of ``Optimizer``,
    which provides the groups, kernels and tensors)."""

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
        kernels = [k._replace(grad_scale=k.grad_scale * coef, clip=clip, key=key) for k in kernels]
        if self.state_bits == 8:
            before = [[w.copy() for w in self._updated(g)] for g in self._groups] if watch else None
            self._launch8(t, kernels, skip_if)
            if watch:
                update_stats = self._update_stats8(before)
        else:
            for gi, k in enumerate(kernels):
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

    # ---- 8-bit states (state_bits=8)

    def _launch8(self, t: int, kernels: list[Any], skip_if: Any) -> None:
        """One step of every group with 8-bit states: per group, the float32 kernel over its
        small tensors (one multi-tensor launch) and the group's ``gpugd.ops.optim8`` op on
        each tensor with 8-bit states, with the kernel's grad scale (clip coefficient
        folded in), clip value and ``skip_if``. Everything is validated before any launch."""
        from ..ops.optim8 import State8

        be = "cpu" if isinstance(self._groups[0].params[0], np.ndarray) else "cuda"
        sr = dict(rounding=self.rounding, seed=self.seed * (1 << 32) + t)  # _rounding_key(t)
        skip_if = _ops._skip_flag(skip_if, be)
        plans = []
        for gi, k in enumerate(kernels):
            g = self._groups[gi]
            op = self._op8(self.param_groups[gi], t)
            if op is None:  # no state (SGD without momentum): the float32 kernel as it is
                plans.append((k, self._tensors(gi, k), []))
                continue
            fn, args, hyper = op
            first = next(iter(args.values())) + quant8.ABSMAX
            small = [j for j, n in enumerate(g.names) if first not in self.state[n]]
            small_tensors = self._small_tensors(gi, k, small) if small else None
            clip = None if math.isinf(k.clip) else k.clip
            kw = dict(hyper, grad_scale=k.grad_scale, clip_value=clip, block_size=self.block_size)
            calls = []
            for j, n in enumerate(g.names):
                if j in small:
                    continue
                st = self.state[n]
                s8 = [State8(st[s + quant8.CODES], st[s + quant8.ABSMAX]) for s in args.values()]
                # the small tensors' table streams are 0 .. len(small) − 1, then these
                mix = dict(sr, master=st.get(_MASTER), stream=len(small) + len(calls))
                calls.append((fn, g.params[j], g.grads[j], s8, {**kw, **mix}))
            plans.append((k, small_tensors, calls))
        for k, tensors, calls in plans:
            if tensors is not None:
                k.launch(tensors, skip_if)
            for fn, p, gr, s8, kw in calls:
                fn(p, gr, *s8, **kw, skip_if=skip_if)

    def _updated(self, g: Any) -> list[Any]:
        """The arrays the rule updates in a group: p, or the fp32 master weights."""
        if not self.master_weights:
            return list(g.params)
        return [self.state[n][_MASTER] for n in g.names]

    def _update_stats8(self, before: list[list[Any]]) -> list[Any]:
        """Per group, (Σp², Σ(p − p_before)²) per tensor in float64, the monitor's figures
        that the fused float32 kernels sum on the way and the 8-bit ops do not: a recorded
        step with 8-bit states copies p (the masters, with master weights) before the update
        and reads them and the copy after."""
        out = []
        for g, old in zip(self._groups, before, strict=True):
            rows = []
            for p, p0 in zip(self._updated(g), old, strict=True):
                pf = p.reshape(-1).astype(np.float64)
                d = pf - p0.reshape(-1).astype(np.float64)
                rows.append((pf @ pf, d @ d))  # 0-d arrays: no host sync on CUDA
            xp = np if isinstance(g.params[0], np.ndarray) else __import__("cupy")
            out.append(xp.stack([xp.stack(r) for r in rows]))
        return out

    def _small_tensors(self, gi: int, k: Any, small: list[int]) -> Any:
        """The float32 kernel's arrays over a group's small tensors (cached)."""
        g = self._groups[gi]
        key = ("small8", *(why is not None for why in k.states.values()))
        if g.tensors is None or g.tensors_key != key:
            names = [g.names[j] for j in small]
            given = {
                arg: [self.state[n][self.STATE_KEYS.get(arg, arg)] for n in names]
                for arg, why in k.states.items()
                if why is not None
            }
            p, gr = [g.params[j] for j in small], [g.grads[j] for j in small]
            masters = [self.state[n][_MASTER] for n in names] if self.master_weights else None
            g.tensors, g.tensors_key = k.tensors(p, gr, given, masters), key
        return g.tensors

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
        from .._step_decision import StepDecision

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
        from .._step_decision import SKIPPED_BY_FLAG, SKIPPED_NONFINITE

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
