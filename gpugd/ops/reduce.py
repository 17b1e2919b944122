"""Gradient statistics and clipping: ``tensor_norms``, ``global_norm``,
``clip_by_global_norm_``, ``clip_by_norm_``, ``clip_by_value_``.

One read-only pass over one array or a list of arrays gives, per tensor, Σ x² (float64),
the count of non-finite elements and the count of exact zeros, and from them the global L2
norm and a non-finite flag. Tensors may be float32, float64, float16 or bfloat16 (the
half-precision gradients of mixed-precision training: widened on load, summed in float64).
Deterministic: two stages without atomics on the GPU, fixed chunks summed in order on the
CPU (``kernels/reduce.cu``, ``gpugd/_cpu/reduce.py``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import _tensor_table as layout
from .. import _validate as v
from .._lazy import cpu

CUDA_KERNELS = (
    "gpugd_reduce_stats_partial_f32",
    "gpugd_reduce_stats_partial_f64",
    "gpugd_reduce_stats_partial_f16",
    "gpugd_reduce_stats_partial_bf16",
    "gpugd_reduce_stats_tensors",
    "gpugd_reduce_stats_finish",
    "gpugd_reduce_average_f32",
    "gpugd_reduce_average_f64",
)
CHUNK = 1 << 16  # elements per chunk task, both backends
FINISH_THREADS = 256
TORCH_EPS = 1e-6  # torch's clip_grad_norm_: coefficient max_norm / (norm + 1e-6)


class GradStats(NamedTuple):
    """What one pass over the tensors gives. On the GPU every field is a CuPy array (no
    host synchronization); on the CPU NumPy values."""

    norm: Any  # global L2 norm, float64 (0-d)
    norms: Any  # per-tensor L2 norms, float64 (T,)
    nonfinite: Any  # True when any element is NaN or ±Inf (0-d bool)
    nonfinite_counts: Any  # per tensor, int64 (T,)
    zero_counts: Any  # per tensor, int64 (T,); None when not asked for
    flag: Any  # int32 (1,): 1 when non-finite — the ``skip_if`` of the update kernels


class Reduction:
    """A validated list of arrays (or one array) with its tensor table, reusable: the
    optimizers keep one over their gradients and run it every step."""

    def __init__(self, xs: Any, name: str = "xs"):
        self.multi = isinstance(xs, list | tuple)
        arrays = list(xs) if self.multi else [xs]
        labelled = {(f"{name}[{i}]" if self.multi else name): a for i, a in enumerate(arrays)}
        self.backend = v.array_backend(**labelled) if labelled else "cpu"
        for label, a in labelled.items():
            v.float_array(label, a, half=True)
            if a.dtype != arrays[0].dtype:
                raise TypeError(
                    f"{label}: dtype {a.dtype} differs from {name}[0]'s {arrays[0].dtype}; "
                    "reduce each dtype separately"
                )
        self.arrays = arrays
        self.sizes = [int(a.size) for a in arrays]
        self.numel = sum(self.sizes)
        self._prepared: Any = None

    def run(self, zeros: bool = True) -> GradStats:
        """One pass. ``zeros=False`` skips the zero counts (``zero_counts`` is then None):
        the CPU's plain sum-of-squares loop, for clipping without monitoring."""
        if self.backend == "cpu":
            return self._run_cpu(zeros)
        return self._run_cuda(zeros)

    def _run_cpu(self, zeros: bool) -> GradStats:
        k = cpu("reduce")
        n = len(self.arrays)
        if not self.numel:
            head, norms, counts = np.zeros(1), np.zeros(n), np.zeros((2, n), np.int64)
            flag = np.zeros(1, np.int32)
            bad = flag != 0
        else:
            if self._prepared is None:
                self._prepared = (
                    layout.build([self.arrays], v.address),
                    layout.tasks(self.sizes, k.CHUNK),
                    cpu("precision").kernel_view(np.zeros(1, self.arrays[0].dtype)),
                    self.numel >= cpu("vector").PARALLEL_MIN,
                )
            table, tasks, like, parallel = self._prepared
            head, norms, counts, flag, bad = k.stats(table, tasks, like, parallel, zeros)
        return GradStats(
            norm=head[0],
            norms=norms,
            nonfinite=bad[0],
            nonfinite_counts=counts[0],
            zero_counts=counts[1] if zeros else None,
            flag=flag,
        )

    def cuda_buffers(self) -> tuple:
        """(table, chunks, chunk count, first chunk per tensor) in device memory, built on
        first use and kept."""
        if self._prepared is None:
            self._prepared = layout.on_device([self.arrays], CHUNK)
        return self._prepared

    def launch_cuda(self, partial: Any, per: Any, total: Any, flag: Any) -> None:
        """The two kernels of one pass into caller-owned device buffers (no allocation, so a
        CUDA graph can capture it): ``partial`` (chunks, 3), ``per`` (T, 3), ``total`` (3,)
        float64, ``flag`` (1,) int32."""
        from .. import _cuda

        table, chunks, nchunks, first = self.cuda_buffers()
        n = len(self.arrays)
        sfx = _cuda.dtype_suffix(self.arrays[0].dtype)
        name = f"gpugd_reduce_stats_partial_{sfx}"
        blocks = _cuda.chunk_grid("reduce", name, nchunks)
        _cuda.get_kernel("reduce", name)(
            (blocks,),
            (_cuda.THREADS,),
            (table, np.int64(n), chunks, np.int64(nchunks), np.int64(CHUNK), partial),
        )
        finish_cuda(first, n, partial, 3, per, total, flag)

    def _run_cuda(self, zeros: bool) -> GradStats:
        import cupy

        n = len(self.arrays)
        per = cupy.zeros((n, 3), cupy.float64)
        total = cupy.zeros(3, cupy.float64)
        flag = cupy.zeros(1, cupy.int32)
        if self.numel:
            partial = cupy.empty((self.cuda_buffers()[2], 3), cupy.float64)
            self.launch_cuda(partial, per, total, flag)
        return GradStats(
            norm=cupy.sqrt(total[0]),
            norms=cupy.sqrt(per[:, 0]),
            nonfinite=total[1] > 0,
            nonfinite_counts=per[:, 1].astype(cupy.int64),
            zero_counts=per[:, 2].astype(cupy.int64) if zeros else None,
            flag=flag,
        )


def finish_cuda(
    first: Any, ntensors: int, partial: Any, ncols: int, per: Any, total: Any, flag: Any
) -> None:
    """Stage 2 of a chunked pass (kernels/reduce.cu): per tensor, the sums of its chunks'
    ``ncols`` partials (a block per tensor, fixed trees), then the totals over tensors and
    the non-finite flag (``flag``: an int32 device array, or np.uint64(0) for none)."""
    from .. import _cuda

    blocks = max(1, min(ntensors, _cuda.max_blocks("reduce", "gpugd_reduce_stats_tensors")))
    _cuda.get_kernel("reduce", "gpugd_reduce_stats_tensors")(
        (blocks,),
        (FINISH_THREADS,),
        (first, np.int64(ntensors), partial, np.int32(ncols), per),
    )
    _cuda.get_kernel("reduce", "gpugd_reduce_stats_finish")(
        (1,), (FINISH_THREADS,), (per, np.int64(ntensors), np.int32(ncols), total, flag)
    )


def tensor_norms(xs: Any) -> GradStats:
    """Per-tensor and global L2 norms, non-finite and zero counts of one array or a list of
    arrays, in one read-only pass. An empty list gives norm 0."""
    return Reduction(xs).run()


def global_norm(xs: Any) -> Any:
    """‖xs‖₂ over every element of one array or a list (float64; 0-d CuPy on the GPU)."""
    return Reduction(xs).run(zeros=False).norm


def _max_norm(name: str, x: Any) -> float:
    f = v.real_scalar(name, x)
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name}: expected a finite value > 0, got {x!r}")
    return f


def _writable_list(grads: Any) -> list:
    """The gradients a clipping op rewrites: accepted arrays (``_validate.array_kind``) on
    one backend, writable float arrays, no two sharing a byte (a tensor listed twice, or
    two overlapping views, would be scaled twice)."""
    multi = isinstance(grads, list | tuple)
    arrays = list(grads) if multi else [grads]
    labelled = {(f"grads[{i}]" if multi else "grads"): a for i, a in enumerate(arrays)}
    if labelled:
        v.array_backend(**labelled)
    for label, a in labelled.items():
        v.float_array(label, a, writable=True)
    v.disjoint(labelled)
    return arrays


def clip_coefficient(norm: float, max_norm: float) -> float:
    """torch's clip_grad_norm_ factor: min(1, max_norm / (norm + 1e-6)); NaN for a NaN norm
    and 0 for an infinite one, as torch computes them."""
    c = max_norm / (norm + TORCH_EPS)
    return c if (c < 1.0 or c != c) else 1.0


def clip_by_global_norm_(grads: Any, max_norm: float, *, error_if_nonfinite: bool = False) -> float:
    """torch.nn.utils.clip_grad_norm_: scale every gradient by min(1, max_norm/(‖g‖ + 1e-6))
    where ‖g‖ is the global norm; returns ‖g‖ before clipping (a Python float: reading it
    synchronizes the GPU). With ``error_if_nonfinite`` a NaN/Inf norm raises and nothing is
    written. The fused alternative that never rewrites gradients: the optimizers'
    ``max_grad_norm=``."""
    max_norm = _max_norm("max_norm", max_norm)
    error_if_nonfinite = v.flag("error_if_nonfinite", error_if_nonfinite)
    arrays = _writable_list(grads)
    norm = float(Reduction(arrays, "grads").run(zeros=False).norm)
    if error_if_nonfinite and not math.isfinite(norm):
        raise FloatingPointError(f"the global gradient norm is {norm}; nothing was clipped")
    coef = clip_coefficient(norm, max_norm)
    if coef != 1.0:  # includes NaN: torch multiplies by it too
        for a in arrays:
            a *= a.dtype.type(coef)
    return norm


def clip_by_norm_(grads: Any, max_norm: float) -> Any:
    """Keras ``clipnorm`` / tf.clip_by_norm per tensor: g ← g · max_norm / max(‖g‖, max_norm).
    Returns the per-tensor norms before clipping (float64 array on the arrays' backend)."""
    max_norm = _max_norm("max_norm", max_norm)
    arrays = _writable_list(grads)
    norms = Reduction(arrays, "grads").run(zeros=False).norms
    host = norms.get() if hasattr(norms, "get") else norms
    for a, nrm in zip(arrays, host, strict=True):
        if nrm > max_norm:
            a *= a.dtype.type(max_norm / nrm)
    return norms


def clip_by_value_(grads: Any, clip_value: float) -> None:
    """Keras ``clipvalue`` / torch clip_grad_value_: g ← clamp(g, −c, c) elementwise, NaN
    kept. The fused alternative: the optimizers' ``clip_value=``."""
    c = _max_norm("clip_value", clip_value)
    for a in _writable_list(grads):
        xp = np if isinstance(a, np.ndarray) else __import__("cupy")
        xp.clip(a, -c, c, out=a)


def average_(out: Any, buffers: list) -> Any:
    """out ← (b₀ + … + b_{K−1})/K in one pass over memory: the mean of K local gradient
    buffers (a worker that split its batch into micro-batches). ``out`` may be one of the
    buffers, once or more (each place counts its value before the call); same shape and
    dtype for all, one backend. Returns ``out``."""
    if not isinstance(buffers, list | tuple):
        raise TypeError(f"buffers: expected a list of arrays, got {type(buffers).__name__}")
    if not buffers:
        raise ValueError("buffers: expected a non-empty list of arrays")
    be = v.array_backend(out=out, **{f"buffers[{i}]": b for i, b in enumerate(buffers)})
    v.float_array("out", out, writable=True)
    for i, b in enumerate(buffers):
        v.float_array(f"buffers[{i}]", b)
        v.same_layout("out", out, f"buffers[{i}]", b)
    for i, b in enumerate(buffers):
        v.no_partial_overlap(f"buffers[{i}]", b, "out", out)
    if out.size == 0:
        return out
    flat = [b.reshape(-1) for b in buffers]
    if be == "cpu":
        k = cpu("reduce")
        address = v.address
        at = address(out)
        same = [i for i, b in enumerate(flat) if address(b) == at]
        if len(same) > 1:
            # The Numba kernel accumulates into out, so a second read of out would see the
            # partial sum: read the places of out from a copy of its values (the CUDA
            # kernel loads every input of an element before storing it and needs none).
            before = out.reshape(-1).copy()
            flat = [before if i in same else b for i, b in enumerate(flat)]
        elif same:
            # an input that is out itself goes first: the kernel writes out from the first
            j = same[0]
            flat = [flat[j], *flat[:j], *flat[j + 1 :]]
        k.average(out.reshape(-1), flat, address)
        return out
    import cupy

    from .. import _cuda

    ptrs = cupy.asarray(np.array([b.data.ptr for b in flat], np.int64))
    t = out.dtype.type
    name = f"gpugd_reduce_average_{_cuda.dtype_suffix(out.dtype)}"
    args = (ptrs, np.int32(len(flat)), out, np.int64(out.size), t(1.0 / len(flat)))
    _cuda.launch("reduce", name, out.size, args)
    return out


__all__ = [
    "GradStats",
    "Reduction",
    "average_",
    "clip_by_global_norm_",
    "clip_by_norm_",
    "clip_by_value_",
    "clip_coefficient",
    "global_norm",
    "tensor_norms",
]
