"""The eager CUDA step decided on the device: no host synchronization before the update.

An optimizer step with clipping, a non-finite policy or a caller's ``skip_if`` needs a
decision between the gradients' norm pass and the update: the clip coefficient, and whether
to update at all. On the host that is a read of the norm (``float(norm)``): the host waits
for the GPU to drain its queue, then the GPU waits while the host launches the update. Here
the one-thread kernel ``gpugd_optim_step_decide`` (kernels/optim.cu) takes the pass's totals
on the device and writes

    out = [√Σg², coef = min(1, max_norm / (√Σg²·|s| + 1e-6)), s·coef, non-finite count, outcome]

(``s`` the step's grad scale; outcome 0 update, 1 skipped for non-finite gradients, 2 skipped
by ``skip_if``) and the update kernels' skip flag; the update kernels read ``s·coef`` from
device memory (their ``dev_scale``). ``out`` (and the per-tensor non-finite counts, when a
skip can name them) are copied to pinned host memory asynchronously behind the update, with
an event; ``read()`` waits for that event only — the work queued after the step (the next
forward and backward pass) keeps running. The optimizer reads it when its report is asked
for, or at the start of its next step when the outcome decides the step count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .ops import reduce as _reduce

NOUT = 5  # out: raw norm, clip coefficient, grad scale · coef, non-finite count, outcome
UPDATED, SKIPPED_NONFINITE, SKIPPED_BY_FLAG = 0, 1, 2


class StepDecision:
    """Device buffers, pinned host buffers, the event and the kernels of one optimizer's
    device-decided steps (allocated once; one step in flight at a time)."""

    def __init__(self, reduction: _reduce.Reduction):
        import cupy

        from . import _cuda

        self.cupy = cupy
        self.reduction = reduction
        self.ntensors = len(reduction.arrays)
        self.out = cupy.zeros(NOUT, cupy.float64)
        self.skip = cupy.zeros(1, cupy.int32)
        nchunks = reduction.cuda_buffers()[2]
        self.partial = cupy.zeros((max(1, nchunks), 3), cupy.float64)
        self.per = cupy.zeros((self.ntensors, 3), cupy.float64)
        self.total = cupy.zeros(3, cupy.float64)
        self.flag = cupy.zeros(1, cupy.int32)
        count = NOUT + 3 * self.ntensors
        self._pinned = cupy.cuda.alloc_pinned_memory(8 * count)
        host = np.frombuffer(self._pinned, np.float64, count)
        self.host_out, self.host_per = host[:NOUT], host[NOUT:].reshape(self.ntensors, 3)
        self.event = cupy.cuda.Event(disable_timing=True)
        self.kernel = _cuda.get_kernel("optim", "gpugd_optim_step_decide")
        self.dev_scale = self.out[2:3]

    def decide(
        self,
        norm_pass: bool,
        grad_scale: float,
        max_norm: float | None,
        skip_nonfinite: bool,
        skip_if: Any,
    ) -> None:
        """Queue the norm pass (when ``norm_pass``) and the decision kernel."""
        null = np.uint64(0)
        if norm_pass and sum(self.reduction.sizes):
            self.reduction.launch_cuda(self.partial, self.per, self.total, self.flag)
        self.kernel(
            (1,),
            (32,),
            (
                self.total if norm_pass else null,
                np.float64(grad_scale),
                np.float64(-1.0 if max_norm is None else max_norm),
                np.int32(skip_nonfinite),
                null if skip_if is None else skip_if,
                self.out,
                self.skip,
            ),
        )

    def copy_back(self, per_tensor: bool) -> None:
        """Queue the asynchronous copies to the host after the update, and the event."""
        self.out.get(out=self.host_out, blocking=False)
        if per_tensor:
            self.per.get(out=self.host_per, blocking=False)
        self.event.record()

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(out, per-tensor non-finite counts) of the last decided step: waits for that
        step's event, not for the work queued after it."""
        self.event.synchronize()
        return self.host_out.copy(), self.host_per[:, 1].astype(np.int64)
