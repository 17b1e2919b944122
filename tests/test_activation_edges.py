"""Every activation and its backward on the extended real line, against mpmath (200 bits).

Inputs per dtype: ±0, subnormals, the smallest normal, values around each function's exp
overflow/underflow thresholds (|x| ≈ 88.7/103.9 in float32, 709.8/745.1 in float64, and
where erfc or e^(−2|z|) underflow), around softplus' threshold, ±max, ±Inf and NaN, for
every parameter setting; backward with dy ∈ {1, −1, 0.5, a subnormal, ±Inf, NaN}. Both
backends (the CUDA kernels run on the emulator without a GPU).

The value wanted (torch's, or the exact one where torch is wrong, see TORCH_DIFFERS):
- NaN anywhere in x (or y) or dy: NaN (torch's relu/leaky_relu/elu backward give dy·f'
  of the x > 0 branch for x = NaN; the derivative at NaN is NaN).
- relu's backward is torch's select: dy where x > 0, else +0 for every dy (threshold_backward).
- Otherwise dx = dy·f'(x) with f' exact; for dy = ±Inf it is dy ⊗ round(f'(x)) (±Inf, or
  NaN where f'(x) rounds to 0: Inf·0, as torch).
- Limits at ±Inf: gelu(−Inf) = silu(−Inf) = gelu_tanh(−Inf) = −0 (torch: NaN for silu and
  gelu in float32), f'(+Inf) = 1 and f'(−Inf) = −0 for gelu/gelu_tanh/silu (torch: NaN).
- A zero keeps its sign: f(±0) = ±0 (torch's relu(−0) = −0), a result that underflows has
  the sign of the exact value, an exact zero derivative times dy has IEEE's sign.
Exact for NaN-ness, infinities and zeros (sign included); otherwise within ULPS[name]
ulps of the exact value (max(ulp, least subnormal)), plus (1 + |x|)·|dy|·(least
subnormal) where a factor of the result is itself subnormal (σ(x), e^x) and rounds there.
"""

from __future__ import annotations

import functools
import math

import mpmath as mp
import numpy as np
import pytest
from conftest import to_numpy

from gpugd import ops
from gpugd import reference as ref

# function -> the parameter settings tried (the op's keyword arguments)
SETTINGS = {
    "sigmoid": [{}],
    "tanh": [{}],
    "relu": [{}],
    "leaky_relu": [{"negative_slope": s} for s in (0.01, 0.2, -0.5, 3.0)],
    "elu": [{"alpha": a} for a in (1.0, 0.3, 2.5, -0.5)],
    "selu": [{}],
    "gelu": [{"approximate": "none"}, {"approximate": "tanh"}],
    "softplus": [
        {"beta": b, "threshold": t} for b, t in ((1.0, 20.0), (2.0, 5.0), (0.25, 30.0), (8.0, -1.0))
    ],
    "silu": [{}],
}
# ulp bound per function, forward and backward (both backends; the CUDA-vs-Numba parity
# contract allows 16 for transcendental functions)
ULPS = {
    "sigmoid": 4,
    "tanh": 4,
    "relu": 0,
    "leaky_relu": 1,
    "elu": 4,
    "selu": 4,
    "gelu": 8,
    "softplus": 4,
    "silu": 8,
}
DYS = (1.0, -1.0, 0.5, "subnormal", math.inf, -math.inf, math.nan)
TINY = 2.0**-1000000  # a magnitude far below every subnormal: "nonzero, rounds to ±0"


def _k():
    """√(2/π) at the working precision (a module-level mpf would hold 53 bits)."""
    return mp.sqrt(2 / mp.pi)


def _c():
    return mp.mpf("0.044715")  # exact to the working precision, not to mpmath's default


def _grid(dtype) -> np.ndarray:
    """The extreme inputs of one dtype (both signs)."""
    fi = np.finfo(dtype)
    f32 = dtype == np.float32
    exp_edges = (87.3, 88.72, 89.0, 103.0, 103.97, 104.0, 110.0) if f32 else ()
    exp_edges += (700.0, 708.4, 709.78, 710.0, 745.13, 746.0, 750.0)
    tails = (9.0, 10.0, 13.3, 14.0, 14.5, 26.0, 38.5, 39.0, *exp_edges)  # erfc, e^(−2z)
    mags = [
        float(fi.smallest_subnormal),
        float(fi.smallest_subnormal) * 3,
        1e-40 if f32 else 1e-310,
        float(fi.tiny),
        1e-20,
        2.0**-12,
        0.5,
        1.0,
        2.0,
        5.0,
        *tails,
        1e4,
        1e10,
        1e20,
        1e30,
        1e200,
        float(fi.max),
    ]
    pts = [0.0, math.inf, math.nan, *mags]
    with np.errstate(over="ignore"):
        x = np.array(pts + [-p for p in pts], np.float64).astype(dtype)  # 1e200 → Inf in f32
        return np.unique(
            np.concatenate([x, np.nextafter(x, dtype(0)), np.nextafter(x, dtype(np.inf))])
        )


def _softplus_edges(dtype, beta, threshold) -> np.ndarray:
    """x around softplus' switch βx = threshold (a few ulps either side)."""
    c = np.array([threshold / beta], dtype)
    lo, hi = c, c
    pts = [c]
    for _ in range(3):
        lo, hi = np.nextafter(lo, dtype(-np.inf)), np.nextafter(hi, dtype(np.inf))
        pts += [lo, hi]
    return np.concatenate(pts)


# ---- the exact values ---------------------------------------------------------------------
# Each returns an mpf (nonzero, finite, exact to 200 bits) or a float (±0, ±Inf, NaN: exact).


def _sig(v):
    return 1 / (1 + mp.exp(-v))


def _gelu_tanh_s(v):
    return _sig(2 * _k() * (v + _c() * v**3))  # ½(1 + tanh z) = σ(2z)


def _forward(name: str, p: dict, x: float):
    if x != x:
        return math.nan
    if name == "relu":
        return x if x > 0 or x == 0 else 0.0  # relu(−0) = −0 (torch)
    if name == "leaky_relu":
        s = p["negative_slope"]
        return x if x > 0 else (s * x if x == 0 or math.isinf(x) else mp.mpf(s) * x)
    if x == 0 and name not in ("sigmoid", "softplus"):
        if name in ("elu", "selu"):
            return p.get("alpha", 1.0) * x  # α·expm1(±0) = α·(±0)
        return x  # f(±0) = ±0
    if math.isinf(x):
        return _forward_inf(name, p, x > 0)
    v = mp.mpf(x)
    if name == "sigmoid":
        return _sig(v)
    if name == "tanh":
        return mp.tanh(v)
    if name in ("elu", "selu"):
        a, sc = (p["alpha"], 1) if name == "elu" else (ref.SELU_ALPHA, ref.SELU_SCALE)
        return sc * (v if v > 0 else a * mp.expm1(v))
    if name == "gelu":
        if v < -1e4:
            return -TINY  # x·Φ(x) ~ −e^(−x²/2)/√(2π): below every subnormal
        if p["approximate"] == "tanh":
            return v if v > 1e4 else v * _gelu_tanh_s(v)
        return v if v > 1e4 else v * mp.ncdf(v)
    if name == "softplus":
        b, t = p["beta"], p["threshold"]
        if b * x > t:
            return x  # the input itself (a float: −0 stays −0)
        return mp.log1p(mp.exp(b * v)) / b
    return v * _sig(v)  # silu


def _forward_inf(name: str, p: dict, pos: bool):
    if name == "sigmoid":
        return 1.0 if pos else 0.0
    if name == "tanh":
        return 1.0 if pos else -1.0
    if name == "elu":
        return math.inf if pos else -p["alpha"]
    if name == "selu":
        return math.inf if pos else -ref.SELU_ALPHA * ref.SELU_SCALE
    if name == "softplus":
        return math.inf if pos else 0.0
    return math.inf if pos else -0.0  # gelu, silu: x·(a factor → 0 faster than 1/x)


def _derivative(name: str, p: dict, v: float):
    """f'(x) (or, for sigmoid/tanh, f' written in the output y); relu's is a select."""
    if v != v or name == "relu":
        return math.nan
    if name == "sigmoid":
        return v * (1 - v) if v == 0 or math.isinf(v) else mp.mpf(v) * (1 - mp.mpf(v))
    if name == "tanh":
        if math.isinf(v) or abs(v) == 1:
            return 1 - v * v
        return 1 - mp.mpf(v) ** 2
    if name == "leaky_relu":
        return 1.0 if v > 0 else p["negative_slope"]
    if name in ("elu", "selu"):
        a, sc = (p["alpha"], 1.0) if name == "elu" else (ref.SELU_ALPHA, ref.SELU_SCALE)
        if v > 0:
            return sc
        return a * sc * 0.0 if v == -math.inf else a * sc * mp.exp(v)  # torch: x ≤ 0 → α
    if name == "softplus":
        b, t = p["beta"], p["threshold"]
        if b * v > t:
            return 1.0
        return 0.0 if v == -math.inf else _sig(b * mp.mpf(v))
    # gelu, gelu_tanh, silu: → 1 at +Inf; → −0 at −Inf (f' < 0 for x < −0.75)
    if math.isinf(v):
        return 1.0 if v > 0 else -0.0
    x = mp.mpf(v)
    if name == "silu":
        s = _sig(x)
        return s * (1 + x * (1 - s))
    if abs(x) > 1e4:
        return 1.0 if x > 0 else -TINY
    if p["approximate"] == "tanh":
        s = _gelu_tanh_s(x)
        return s + x * 2 * s * (1 - s) * _k() * (1 + 3 * _c() * x**2)
    return mp.ncdf(x) + x * mp.npdf(x)


def _round(r, dtype) -> float:
    """r rounded to dtype (via float64; its double rounding is far inside the bounds)."""
    return float(np.float64(float(r)).astype(dtype)) if isinstance(r, mp.mpf) else r


def _times(dy: float, d, dtype) -> float | mp.mpf:
    """dy·f'(x): exact for finite dy; dy ⊗ round(f'(x)) for dy = ±Inf; IEEE's sign of zero."""
    if dy != dy:
        return math.nan
    if isinstance(d, mp.mpf) and d == 0:
        d = 0.0  # an exact +0 (y·(1 − y) at y = 1): mpmath's zero has no sign, IEEE's has
    if isinstance(d, float) or math.isinf(dy) or dy == 0:
        return dy * _round(d, dtype)
    return mp.mpf(dy) * d


@functools.cache
def _cases(name: str, pi: int, dtype):
    """The grid and what is wanted, all as dtype: (x, forward, its masks, v, dy, backward,
    its masks); a mask pair is (inexact: the exact value is nonzero and finite, so a 0 is a
    rounding; either: dy = ±Inf times an f'(x) within the subnormal slack of 0, where NaN
    and the signed Inf are both the product of a correctly bounded f' with dy)."""
    p = SETTINGS[name][pi]
    x = _grid(dtype)
    if name == "softplus":
        x = np.unique(np.concatenate([x, _softplus_edges(dtype, p["beta"], p["threshold"])]))
    tiny = mp.mpf(float(np.finfo(dtype).smallest_subnormal))
    with mp.workprec(200):
        fwd_exact = [_forward(name, p, float(t)) for t in x]
        fwd = np.array([_round(r, dtype) for r in fwd_exact], dtype)
        fwd_inexact = np.array([isinstance(r, mp.mpf) for r in fwd_exact])
        # sigmoid and tanh take their output: the exact outputs and the edge outputs
        v = x
        if name in ("sigmoid", "tanh"):
            extra = [0.0, -0.0, 1.0, -1.0, 0.5, np.finfo(dtype).smallest_subnormal]
            v = np.unique(np.concatenate([fwd, np.array(extra, dtype), np.array([1.0], dtype)]))
            v = np.concatenate([v, np.nextafter(np.array([1.0, -1.0], dtype), dtype(0))])
        dys = [np.finfo(dtype).smallest_subnormal * 5 if d == "subnormal" else d for d in DYS]
        vv = np.repeat(v, len(dys))
        gg = np.tile(np.array(dys, dtype), len(v))
        derivs = np.repeat(np.array([_derivative(name, p, float(t)) for t in v], object), len(dys))
        bwd, inexact, either = [], [], []
        for t, g, d in zip(vv, gg, derivs, strict=True):
            near0 = isinstance(d, mp.mpf) and abs(d) <= (ULPS[name] + 1 + abs(float(t))) * tiny
            either.append(bool(math.isinf(g) and near0))
            if name == "relu":
                bwd.append(math.nan if t != t or g != g else (float(g) if t > 0 else 0.0))
                inexact.append(False)
            elif either[-1]:
                bwd.append(float(g) * (1.0 if d > 0 else -1.0))  # the Inf; NaN also passes
                inexact.append(False)
            else:
                r = _times(float(g), d, dtype)
                bwd.append(_round(r, dtype))
                inexact.append(isinstance(r, mp.mpf))
    return (
        (x, fwd, fwd_inexact, np.zeros(len(x), bool)),
        (vv, gg, np.array(bwd, dtype), np.array(inexact), np.array(either)),
    )


def _check(got, want, inexact, either, x, dy, dtype, name: str, what: str) -> None:
    """NaN-ness, infinities and exact zeros (sign included) exactly; a nonzero finite value,
    or a 0 that rounds a nonzero exact value, within ULPS[name] ulps (max(ulp, least
    subnormal)) plus the subnormal slack; ``either``: NaN or the signed Inf."""
    got = to_numpy(got)
    tiny = np.finfo(dtype).smallest_subnormal
    with np.errstate(invalid="ignore", over="ignore"):
        bad = np.isnan(got) != np.isnan(want)
        exact = ~np.isfinite(want) | ((want == 0) & ~inexact)
        differ = (got != want) | (np.signbit(got) != np.signbit(want))
        bad |= exact & ~np.isnan(want) & differ
        fin = np.isfinite(want) & ~exact
        slack = (1 + np.abs(x.astype(np.float64))) * np.abs(dy.astype(np.float64)) * tiny
        sp = np.spacing(np.abs(want))
        sp = np.where(np.isinf(sp), np.spacing(np.nextafter(np.abs(want), dtype(0))), sp)
        ulp = np.maximum(sp, tiny).astype(np.float64)
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        bad |= fin & ~(err <= ULPS[name] * ulp + np.where(ULPS[name] > 1, slack, 0))
        # a rounded-to-zero or subnormal result keeps the sign of the exact value
        sign = np.signbit(got) != np.signbit(want)
        bad |= fin & (np.abs(want) < np.finfo(dtype).tiny) & sign & ((got != 0) | (want == 0))
        bad = np.where(either, ~(np.isnan(got) | (got == want)), bad)
    if bad.any():
        rows = [
            f"  x={x[i]!r} dy={dy[i]!r} got={got[i]!r} want={want[i]!r}"
            for i in np.flatnonzero(bad)[:12]
        ]
        raise AssertionError(
            f"{name} {what} {np.dtype(dtype)}: {bad.sum()} bad\n" + "\n".join(rows)
        )


def _ids():
    return [(n, i) for n in SETTINGS for i in range(len(SETTINGS[n]))]


def _call(name: str, p: dict, suffix: str, *args):
    fn = getattr(ops, name + suffix)
    if name in ("leaky_relu", "elu"):
        return fn(*args, *p.values())  # positional, as torch's functional
    return fn(*args, **p)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "pi"), _ids(), ids=[f"{n}-{SETTINGS[n][i]}" for n, i in _ids()])
def test_edges_forward_and_backward_against_mpmath(xp, name, pi, dtype):
    p = SETTINGS[name][pi]
    (x, fwd, fi, fe), (v, dy, bwd, bi, be) = _cases(name, pi, dtype)
    with np.errstate(all="ignore"):
        y = _call(name, p, "", xp.asarray(x))
        _check(y, fwd, fi, fe, x, np.ones_like(x), dtype, name, f"{p} forward")
        dx = _call(name, p, "_backward", xp.asarray(dy), xp.asarray(v))
        _check(dx, bwd, bi, be, v, dy, dtype, name, f"{p} backward")
