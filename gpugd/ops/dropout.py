"""Inverted dropout with a counter-based mask: ``dropout``, ``dropout_backward``,
``dropout_mask``.

Element i of a call with (seed, offset) is kept with probability 1 − p, decided by a hash
of (seed, offset + i) (``kernels/dropout.cu``): the same (seed, offset) gives the same mask
on a backend, for any dtype, so the backward regenerates it and no mask is stored. Give
each step its own offset (for example step·numel) or seed. Kept elements are scaled by
1/(1 − p), so the expected output equals the input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _validate as v
from .._lazy import cpu

CUDA_KERNELS = ("gpugd_dropout_apply_f32", "gpugd_dropout_apply_f64", "gpugd_dropout_mask")


def _p(p: Any) -> float:
    f = v.real_scalar("p", p)
    if not (0.0 <= f < 1.0) or not math.isfinite(f):
        raise ValueError(f"p: expected a drop probability in [0, 1), got {p!r}")
    return f


def _uint(name: str, x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int | np.integer) or not 0 <= x < 2**64:
        raise ValueError(f"{name}: expected an integer in [0, 2**64), got {x!r}")
    return int(x)


def _threshold(p: float) -> np.uint64:
    return np.uint64(min(math.floor((1.0 - p) * 2**32), 2**32))


def _run(x: Any, out: Any, p: Any, seed: Any, offset: Any, name: str) -> Any:
    p = _p(p)
    seed, offset = _uint("seed", seed), _uint("offset", offset)
    be = v.array_backend(**{name: x})
    v.float_array(name, x)
    out = v.output(out, name, x, {name: x})
    if x.size == 0:
        return out
    key_of = cpu("dropout").key_of
    key, thr = key_of(seed), _threshold(p)
    scale = x.dtype.type(1.0 / (1.0 - p))
    if be == "cpu":
        k = cpu("dropout")
        k.apply(x.reshape(-1), out.reshape(-1), key, np.uint64(offset), thr, scale)
        return out
    from .. import _cuda

    name_k = f"gpugd_dropout_apply_{_cuda.dtype_suffix(x.dtype)}"
    args = (x, out, np.int64(x.size), key, np.uint64(offset), thr, scale)
    _cuda.launch("dropout", name_k, x.size, args)
    return out


def dropout(x: Any, p: float = 0.5, *, seed: int, offset: int = 0, out: Any = None) -> Any:
    """y = x·keep/(1 − p), keep ~ Bernoulli(1 − p) drawn from (seed, offset + index)."""
    return _run(x, out, p, seed, offset, "x")


def dropout_backward(
    grad_out: Any, p: float = 0.5, *, seed: int, offset: int = 0, out: Any = None
) -> Any:
    """dx = dy·keep/(1 − p) with the forward's (seed, offset): the mask is regenerated."""
    return _run(grad_out, out, p, seed, offset, "grad_out")


def dropout_mask(n: int, p: float = 0.5, *, seed: int, offset: int = 0, xp: Any = np) -> Any:
    """The keep mask (bool, length n) that ``dropout`` with these arguments applies."""
    p = _p(p)
    seed, offset, n = _uint("seed", seed), _uint("offset", offset), _uint("n", n)
    if xp is not np and getattr(xp, "__name__", None) != "cupy":
        raise TypeError(f"xp: expected the numpy or cupy module, got {xp!r}")
    key_of = cpu("dropout").key_of
    key, thr = key_of(seed), _threshold(p)
    if xp is np:
        k = cpu("dropout")
        return k.mask(n, key, np.uint64(offset), thr)
    from .. import _cuda

    m = xp.empty(n, xp.uint8)
    if n:
        args = (m, np.int64(n), key, np.uint64(offset), thr)
        _cuda.launch("dropout", "gpugd_dropout_mask", n, args)
    return m.astype(xp.bool_)


__all__ = ["dropout", "dropout_backward", "dropout_mask"]
