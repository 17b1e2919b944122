"""CUDA-graph-captured training steps: ``CapturedStep`` (Adam and AdamW on CuPy arrays).

A model with hundreds of small tensors spends its GPU step in launch and Python overhead,
not in memory traffic. ``CapturedStep(opt)`` records the whole optimizer step once —
gradients' norm pass (global norm and non-finite check), the loss-scale and clipping
decisions, the bias-corrected step sizes, the fused update of every param group and
``zero_grad`` — in one CUDA graph, and each call replays it with one launch:

    opt = gpugd.optim.AdamW(params, lr=1e-3, max_grad_norm=1.0, master_weights=True)
    scaler = gpugd.amp.LossScaler(opt)
    step = gpugd.graph.CapturedStep(opt)       # captures; nothing runs yet
    for batch in data:
        loss = forward_backward(batch, scale=scaler.scale_factor)   # grads → params.grads
        step()                                 # one graph launch, no host synchronization
    step.sync()                                # step count, skips, scale back on the host

Everything a step depends on lives in device memory: the step count t, the loss scale S
and its growth tracker, the skipped-step counts, this step's norm and clip coefficient
(``state``), and per param group the step sizes lr/(1−β1^t), 1/√(1−β2^t), the gradient
multiplier coef/S and the stochastic-rounding key (``scalars``), written by the one-thread
kernel ``gpugd_optim_adam_prepare`` between the norm pass and the update. Its formulas are
the eager path's, in the same order, so replayed steps equal eager steps bit for bit
(``tests/test_graph.py``, cuda marker).

The learning rate lives in device memory too: ``step.set_lr(lr)`` writes it for the next
replays (drive a schedule by hand with it; an attached ``gpugd.schedules`` object steps on
the host and is refused).

Limits (each refused with a clear error at capture): Adam/AdamW only, CuPy float32 or
mixed-precision parameters (float64 has no graph kernel), no attached schedule, no
monitor, and ``nonfinite`` "propagate" or "skip" ("error" needs the host). The loss scale
is read back only by ``sync()``: use ``scale_factor()`` (one synchronization) when the host
needs it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

STATE_FIELDS = (
    "step",
    "scale",
    "growth_tracker",
    "skipped_steps",
    "grad_norm",
    "clip_coef",
    "scaler_skipped_steps",
)


class CaptureError(ValueError):
    """This optimizer configuration cannot be captured in a CUDA graph (why: the message)."""


class CapturedStep:
    """An Adam/AdamW step (norm, clip, loss scaling, update, zero_grad) in one CUDA graph."""

    def __init__(self, optimizer: Any, *, zero_grad: bool = True):
        from .optim import Adam

        if not isinstance(optimizer, Adam):
            raise CaptureError(
                f"optimizer: graph capture supports Adam and AdamW, got {type(optimizer).__name__}"
            )
        if optimizer.scheduler is not None:
            raise CaptureError(
                "optimizer: a schedule changes the learning rate on the host every step; "
                "detach it and drive the captured step with CapturedStep.set_lr(lr)"
            )
        if optimizer.monitor is not None:
            raise CaptureError("optimizer: a monitor reads statistics on the host every step")
        if optimizer.nonfinite == "error":
            raise CaptureError('nonfinite: "error" raises on the host; use "skip" in a graph')
        if not isinstance(zero_grad, bool):
            raise TypeError(f"zero_grad: expected a bool, got {zero_grad!r}")
        self.optimizer = optimizer
        self.zero_grad = zero_grad
        self.replays = 0
        self._capture()

    def _capture(self) -> None:
        """Validate the groups, allocate the device buffers and record the graph from the
        optimizer's configuration now (hyperparameters, clipping, scaler) and its host state."""
        optimizer = self.optimizer
        self._slot: dict[int, int] = {}  # optimizer group index -> this graph's group slot
        groups = []
        for gi, (group, g) in enumerate(
            zip(optimizer.param_groups, optimizer._groups, strict=True)
        ):
            kernel = optimizer._kernel(group, 1, 1.0, g)
            tensors = optimizer._tensors(gi, kernel)
            if tensors.backend != "cuda":
                raise CaptureError(f"param_groups[{gi}]: graph capture needs CuPy arrays")
            if tensors.policy == "f64":
                raise CaptureError(f"param_groups[{gi}]: float64 parameters have no graph kernel")
            if not sum(tensors.sizes):
                continue
            self._slot[gi] = len(groups)
            groups.append((group, tensors))
        import cupy

        from . import _cuda

        self.cupy = cupy
        self._groups = groups
        scaler = optimizer.loss_scaler
        self._scaler = scaler if scaler is not None and scaler.enabled else None
        self._norm = (
            optimizer.max_grad_norm is not None
            or optimizer.nonfinite == "skip"
            or self._scaler is not None
        )
        # device buffers, allocated now: nothing is allocated while capturing
        self.state = cupy.asarray(self._host_state(), dtype=cupy.float64)
        # per group (lr, β1, β2, decoupled weight decay): the prepare kernel forms
        # decay_mul = 1 − lr·wd on the device from the lr a schedule writes
        hyper = [
            (g["lr"], *g["betas"], g["weight_decay"] if optimizer.DECOUPLED else 0.0)
            for g, _ in groups
        ]
        self._hyper = cupy.asarray(np.asarray(hyper or [(0.0, 0.0, 0.0, 0.0)], np.float64).ravel())
        self.scalars = cupy.zeros(8 * max(1, len(groups)), cupy.float32)
        self.skip = cupy.zeros(1, cupy.int32)
        if self._norm:
            red = optimizer._gradients()
            self._reduction = red
            nchunks = red.cuda_buffers()[2]
            self._partial = cupy.zeros((max(1, nchunks), 3), cupy.float64)
            self._per = cupy.zeros((len(red.arrays), 3), cupy.float64)
            self._total = cupy.zeros(3, cupy.float64)
            self._flag = cupy.zeros(1, cupy.int32)
        for _, t in groups:
            t.cuda_table()
            _cuda.get_kernel("optim", f"gpugd_optim_adam_graph_{t.policy}")
        self._prepare = _cuda.get_kernel("optim", "gpugd_optim_adam_prepare")
        if self._norm:
            _cuda.get_kernel("reduce", "gpugd_reduce_stats_tensors")
            _cuda.get_kernel("reduce", "gpugd_reduce_stats_finish")
        cupy.cuda.get_current_stream().synchronize()
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            self._body()
            self.graph = stream.end_capture()

    def _host_state(self) -> list[float]:
        opt, sc = self.optimizer, self.optimizer.loss_scaler
        scale = sc.scale_value if sc is not None and sc.enabled else 1.0
        tracker = sc.growth_tracker if sc is not None else 0
        sskip = sc.skipped_steps if sc is not None else 0
        return [
            float(opt.step_count),
            scale,
            float(tracker),
            float(opt.skipped_steps),
            0.0,
            1.0,
            float(sskip),
        ]

    def _body(self) -> None:
        """The step's kernels, in order, on the current stream (captured once)."""
        from . import _cuda
        from .ops.optim import CUDA_CHUNK, _moment_scalars

        opt = self.optimizer
        null = np.uint64(0)
        if self._norm:
            self._reduction.launch_cuda(self._partial, self._per, self._total, self._flag)
        sc = self._scaler
        max_norm = -1.0 if opt.max_grad_norm is None else float(opt.max_grad_norm)
        seed_base = np.uint64((opt.seed * (1 << 32)) % (1 << 64))
        self._prepare(
            (1,),
            (32,),
            (
                self._total if self._norm else null,
                self.state,
                np.int32(len(self._groups)),
                self._hyper,
                np.float64(max_norm),
                np.int32(opt.nonfinite == "skip"),
                np.int32(sc is not None),
                np.float64(sc.growth_factor if sc else 1.0),
                np.float64(sc.backoff_factor if sc else 1.0),
                np.int32(sc.growth_interval if sc else 1),
                seed_base,
                self.scalars,
                self.skip,
            ),
        )
        clip = math.inf if opt.clip_value is None else opt.clip_value
        for gi, (group, t) in enumerate(self._groups):
            table, chunks, nchunks, _ = t.cuda_table()
            # the eager kernel's leading scalars (decay_mul comes from the device's lr)
            *moments, _ = _moment_scalars(
                *group["betas"], group["eps"], group["lr"], group["weight_decay"], opt.DECOUPLED
            )
            name = f"gpugd_optim_adam_graph_{t.policy}"
            blocks = _cuda.chunk_grid("optim", name, nchunks)
            _cuda.get_kernel("optim", name)(
                (blocks,),
                (_cuda.THREADS,),
                (
                    table,
                    np.int64(len(t.sizes)),
                    chunks,
                    np.int64(nchunks),
                    np.int64(CUDA_CHUNK),
                    *(np.float32(x) for x in moments),  # β1, 1−β1, β2, 1−β2, ε, wd_c
                    np.float32(clip),
                    np.int32(bool(group["amsgrad"])),
                    self.scalars[8 * gi :],
                    np.int32(opt.rounding == "stochastic"),
                    self.skip,
                ),
            )
        if self.zero_grad:
            opt.zero_grad()

    def __call__(self) -> None:
        """One step: one graph launch on the current stream; nothing is read back."""
        self.graph.launch(self.cupy.cuda.get_current_stream())
        self.replays += 1

    def read_state(self) -> dict[str, float]:
        """The device-side step state (one synchronization)."""
        return dict(zip(STATE_FIELDS, self.state.get().tolist(), strict=True))

    def scale_factor(self) -> float:
        """The current loss scale S (one synchronization)."""
        return float(self.state[1].get())

    def set_lr(self, lr: float, group: int | None = None) -> None:
        """Write a new learning rate (every group, or param group ``group``) into device
        memory for the next replays — how a schedule drives a captured step:
        ``step.set_lr(value)`` each step, an asynchronous copy, no synchronization. Also
        sets the optimizer's ``param_groups`` so eager steps and checkpoints agree."""
        from .ops.optim import _hyper

        lr = _hyper("lr", lr)
        n = len(self.optimizer.param_groups)
        if group is not None and not (isinstance(group, int) and 0 <= group < n):
            raise IndexError(f"group: expected an index into the {n} param groups, got {group!r}")
        for gi in range(n) if group is None else [group]:
            self.optimizer.param_groups[gi]["lr"] = lr
            if gi in self._slot:
                self._hyper[4 * self._slot[gi]] = lr

    def refresh(self) -> None:
        """Capture the step again from the optimizer as it is now: its host-side state (step
        count, skips, scale) and its configuration (learning rates, betas, eps, weight decay,
        clipping, scaler settings: the graph holds them as launch arguments). Call it after
        eager steps, ``optimizer.load``/``load_state_dict`` or any change of a param group
        between replays."""
        self._capture()

    def sync(self) -> dict[str, float]:
        """Copy the device-side state back into the optimizer and its scaler (step count,
        skipped steps, scale, growth tracker) and return it."""
        st = self.read_state()
        opt = self.optimizer
        opt.step_count = int(st["step"])
        opt.skipped_steps = int(st["skipped_steps"])
        if self._scaler is not None:
            self._scaler.scale_value = st["scale"]
            self._scaler.growth_tracker = int(st["growth_tracker"])
            self._scaler.skipped_steps = int(st["scaler_skipped_steps"])
        return st


__all__ = ["CaptureError", "CapturedStep"]
