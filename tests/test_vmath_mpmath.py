"""The vectorizable math of the Numba kernels (``gpugd._cpu.vmath``) against mpmath over
the whole float32 and float64 ranges: a strided sweep of every bit pattern (both signs,
subnormals, ±Inf, NaN) plus dense sweeps where the function is neither 0, 1 nor Inf,
and the edge values, which must equal the correctly rounded value (torch's, where torch
has it right; checked beside it when torch is importable).

Bounds (ulps of the correctly rounded result, subnormal results in units of the smallest
subnormal), as stated in ``vmath``'s docstring:

    vexp     float32 ≤ 1 ulp (0.90 seen), float64 ≤ 1.5 ulps (1.33 seen)
    vexp_neg as vexp, over x ≤ 0
    vexpm1   float32 ≤ 2 ulps (1.61 seen), float64 ≤ 1.5 ulps (1.35 seen)
    vphi     float32 ≤ 6 ulps of Φ(x) (5.12 seen; the erfc fit, relative 1.4e-7);
             float64 is libm's erfc, not tested here
    vlog1p_unit float32 ≤ 1.5 ulps over its domain 0 ≤ e ≤ 1 (1.16 seen); float64 is
             libm's log1p, not tested here
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from numba import njit

from gpugd._cpu.vmath import K32, vexp, vexp_neg, vexpm1, vlog1p_unit, vphi

ULPS = {
    ("exp", np.float32): 1.0,
    ("exp", np.float64): 1.5,
    ("exp_neg", np.float32): 1.0,
    ("exp_neg", np.float64): 1.5,
    ("expm1", np.float32): 2.0,
    ("expm1", np.float64): 1.5,
    ("phi", np.float32): 6.0,
    ("log1p_unit", np.float32): 1.5,
}


@njit(error_model="numpy")
def _exp(x, y, c):
    for i in range(x.size):
        y[i] = vexp(x[i], c)


@njit(error_model="numpy")
def _exp_neg(x, y, c):
    for i in range(x.size):
        y[i] = vexp_neg(x[i], c)


@njit(error_model="numpy")
def _expm1(x, y, c):
    for i in range(x.size):
        y[i] = vexpm1(x[i], c)


@njit(error_model="numpy")
def _phi(x, y, c):
    for i in range(x.size):
        y[i] = vphi(x[i], c)


@njit(error_model="numpy")
def _log1p_unit(x, y, c):
    for i in range(x.size):
        y[i] = vlog1p_unit(x[i], c)


KERNELS = {
    "exp": _exp,
    "exp_neg": _exp_neg,
    "expm1": _expm1,
    "phi": _phi,
    "log1p_unit": _log1p_unit,
}
EXACT = {
    "exp": mpmath.exp,
    "exp_neg": mpmath.exp,
    "expm1": mpmath.expm1,
    "phi": lambda x: mpmath.ncdf(x),
    "log1p_unit": mpmath.log1p,
}


def _bit_sweep(dtype, count: int) -> np.ndarray:
    """``count`` bit patterns spread evenly over all of them (both signs, NaN and Inf
    patterns included) of ``dtype``."""
    ity = np.uint32 if dtype == np.float32 else np.uint64
    top = 1 << (8 * np.dtype(dtype).itemsize)
    return (np.arange(count, dtype=np.float64) * (top / count)).astype(ity).view(dtype)


def _exact(name, x, dtype):
    """The correctly rounded value (as float64/longdouble beside its ulp in dtype)."""
    prec = 80 if dtype == np.float32 else 140
    fi = np.finfo(dtype)
    out, ulp = np.empty(x.size, np.longdouble), np.empty(x.size, np.longdouble)
    with mpmath.workprec(prec), np.errstate(over="ignore"):
        for i, v in enumerate(x):
            e = EXACT[name](mpmath.mpf(float(v)))
            out[i] = np.longdouble(mpmath.nstr(e, 30)) if e else 0.0
            if abs(e) > fi.max:
                ulp[i] = np.inf
                continue
            k = int(mpmath.floor(mpmath.log(abs(e), 2))) if e else -100000
            ulp[i] = np.ldexp(np.longdouble(1), max(k - fi.nmant, int(fi.minexp) - fi.nmant))
    return out, ulp


def _check(name, dtype, x):
    x = x[np.isfinite(x)].astype(dtype)
    if name == "exp_neg":
        x = x[x <= 0]  # its domain
    if name == "log1p_unit":
        x = x[(x >= 0) & (x <= 1)]
    y = np.empty_like(x)
    KERNELS[name](x, y, K32)
    want, ulp = _exact(name, x, dtype)
    big = ~np.isfinite(ulp)  # the exact value is past the largest finite one
    assert np.isinf(y[big]).all() and (y[big] > 0).all()
    err = np.abs(y[~big].astype(np.longdouble) - want[~big]) / ulp[~big]
    worst = int(np.argmax(err)) if err.size else 0
    assert err.size == 0 or err.max() <= ULPS[name, dtype], (
        f"{name} {np.dtype(dtype).name}: {err.max():.2f} ulps at x = {x[~big][worst]!r}"
    )
    return err


RANGES = {
    ("exp", np.float32): (-104.0, 89.0),
    ("exp", np.float64): (-746.0, 710.0),
    ("exp_neg", np.float32): (-104.0, 0.0),
    ("exp_neg", np.float64): (-746.0, 0.0),
    ("expm1", np.float32): (-18.0, 89.0),
    ("expm1", np.float64): (-38.0, 710.0),
    ("phi", np.float32): (-14.5, 6.0),
    ("log1p_unit", np.float32): (0.0, 1.0),
}


@pytest.mark.parametrize(("name", "dtype"), list(ULPS))
def test_within_the_stated_ulps_over_the_whole_range(name, dtype):
    lo, hi = RANGES[name, dtype]
    dense = np.linspace(lo, hi, 4_001)
    tiny = np.geomspace(np.finfo(dtype).smallest_subnormal, 1.0, 401)
    x = np.concatenate([_bit_sweep(dtype, 1 << 12), dense, tiny, -tiny])
    _check(name, dtype, x.astype(dtype))


def _edges(dtype):
    fi = np.finfo(dtype)
    lo_exp = -103.97208 if dtype == np.float32 else -745.1332191019412
    hi_exp = 88.72283 if dtype == np.float32 else 709.782712893384
    return np.array(
        [
            -0.0,
            0.0,
            fi.smallest_subnormal,
            -fi.smallest_subnormal,
            fi.tiny,
            -fi.tiny,
            np.nextafter(hi_exp, np.inf, dtype=dtype),
            hi_exp,
            np.nextafter(hi_exp, -np.inf, dtype=dtype),
            lo_exp,
            np.nextafter(lo_exp, -np.inf, dtype=dtype),
            np.nextafter(lo_exp, np.inf, dtype=dtype),
            -87.33655 if dtype == np.float32 else -708.3964185322641,  # ln of the least normal
            fi.max,
            -fi.max,
        ],
        dtype,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["exp", "expm1"])
def test_edges_are_the_correctly_rounded_values(name, dtype):
    """±0 (sign kept by expm1), subnormal inputs and results, both sides of the overflow
    and underflow thresholds, ±max, ±Inf, NaN: each the correctly rounded value, bit for
    bit (and torch's, when torch is importable)."""
    x = _edges(dtype)
    y = np.empty_like(x)
    KERNELS[name](x, y, K32)
    with mpmath.workprec(200):
        want = np.array([float(EXACT[name](mpmath.mpf(float(v)))) for v in x], np.float64)
    with np.errstate(over="ignore"):
        want = want.astype(dtype)  # float64 → float32 rounds once more: exact at these
    if name == "expm1":
        want[x == 0] = x[x == 0]  # expm1(±0) = ±0
    np.testing.assert_array_equal(y.view(np.uint8), want.view(np.uint8))
    special = np.array([np.inf, -np.inf, np.nan], dtype)
    got = np.empty_like(special)
    KERNELS[name](special, got, K32)
    np.testing.assert_array_equal(got, [np.inf, 0.0 if name == "exp" else -1.0, np.nan])
    torch = pytest.importorskip("torch")
    ref = getattr(torch, name)(torch.from_numpy(np.concatenate([x, special]))).numpy()
    np.testing.assert_array_equal(np.concatenate([y, got]), ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_neg_is_vexp_bit_for_bit_over_its_domain(dtype):
    """vexp_neg's contract: vexp's values, bit for bit, for every x ≤ 0 — a sweep of 2^22
    evenly spaced bit patterns from −0 to −Inf (float32: every 512th float), the edges
    (subnormal results, the underflow threshold, −max), −Inf and NaN; so the stated ulps and
    edges of vexp hold for it."""
    ity = np.uint32 if dtype == np.float32 else np.uint64
    sign = 1 << (8 * np.dtype(dtype).itemsize - 1)
    inf_bits = int(np.array(np.inf, dtype).view(ity))
    neg = (sign + np.linspace(0, inf_bits, 1 << 22)).astype(ity).view(dtype)
    edges = _edges(dtype)
    x = np.concatenate([neg, edges[edges <= 0], np.array([-np.inf, np.nan], dtype)])
    assert (x[~np.isnan(x)] <= 0).all()
    y, y_neg = np.empty_like(x), np.empty_like(x)
    _exp(x, y, K32)
    _exp_neg(x, y_neg, K32)
    np.testing.assert_array_equal(y_neg.view(ity), y.view(ity))


def test_log1p_unit_every_64th_float32_of_its_domain():
    """vlog1p_unit over every 64th float32 bit pattern from 0 to 1 (16.6 million, both
    branches and the √2 switch between them), and every float32 within 4096 ulps of the
    switch: within ULPS of log1p. The reference is float64 log1p, whose own error
    (≤ 1 ulp of float64) is 2^-29 of a float32 ulp; the mpmath sweep above checks the
    same bound against an arbitrary-precision value."""
    top = int(np.array(1.0, np.float32).view(np.uint32))
    switch = int(np.array(np.sqrt(2.0) - 1.0, np.float32).view(np.uint32))
    bits = np.concatenate([np.arange(0, top + 1, 64), np.arange(switch - 4096, switch + 4097)])
    x = bits.astype(np.uint32).view(np.float32)
    y = np.empty_like(x)
    _log1p_unit(x, y, K32)
    want = np.log1p(x.astype(np.float64))
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)  # at the rounded value
    err = np.abs(y.astype(np.float64) - want) / ulp
    worst = int(np.argmax(err))
    assert err.max() <= ULPS["log1p_unit", np.float32], f"{err.max():.2f} ulps at {x[worst]!r}"


def test_log1p_unit_edges():
    """0, subnormal and tiny inputs give themselves (log1p(e) = e to within far below half an
    ulp), 1 gives ln 2 correctly rounded, NaN stays NaN: bit for bit."""
    fi = np.finfo(np.float32)
    x = np.array([0.0, fi.smallest_subnormal, 1e-40, fi.tiny, 2.0**-30, 1.0, np.nan], np.float32)
    y = np.empty_like(x)
    _log1p_unit(x, y, K32)
    with mpmath.workprec(200):
        want = [float(mpmath.log1p(mpmath.mpf(float(v)))) for v in x[:-1]]
    want = np.array([*want, np.nan]).astype(np.float32)
    np.testing.assert_array_equal(y.view(np.uint32)[:-1], want.view(np.uint32)[:-1])
    assert np.isnan(y[-1])
