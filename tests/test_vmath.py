"""The vectorizable exp/expm1 of the Numba kernels against long-double NumPy: ulps over the
whole finite range, overflow/underflow where libm has them, NaN kept."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from gpugd._cpu.vmath import K32, vexp, vexpm1


@njit(error_model="numpy")
def _exp(x, y, c):
    for i in range(x.size):
        y[i] = vexp(x[i], c)


@njit(error_model="numpy")
def _expm1(x, y, c):
    for i in range(x.size):
        y[i] = vexpm1(x[i], c)


def _ulps(got, want, dtype):
    with np.errstate(over="ignore"):
        ok = np.isfinite(want.astype(dtype)) & (np.abs(want) > np.finfo(dtype).tiny)
    return np.abs((got[ok] - want[ok]) / want[ok]).max() / np.finfo(dtype).eps


@pytest.mark.parametrize(("dtype", "lim"), [(np.float32, 100.0), (np.float64, 750.0)])
def test_exp_is_within_two_ulps_and_saturates_like_libm(dtype, lim):
    x = np.concatenate(
        [np.linspace(-lim, lim, 400_001), np.random.default_rng(0).normal(0, 5, 10**5)]
    )
    x = x.astype(dtype)
    y = np.empty_like(x)
    _exp(x, y, K32)
    want = np.exp(x.astype(np.longdouble))
    assert _ulps(y, want, dtype) < 2
    with np.errstate(over="ignore"):
        ref = want.astype(dtype)
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    assert (y[ref == 0] == 0).all()
    z = np.array([np.nan], dtype)
    _exp(z, z, K32)
    assert np.isnan(z[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_expm1_is_within_two_ulps_near_zero_and_beyond(dtype):
    x = np.concatenate(
        [np.geomspace(1e-30, 0.5, 10**5), np.linspace(0.4, 20, 10**5), [0.49999, 0.5, 0.50001]]
    )
    x = np.concatenate([x, -x]).astype(dtype)
    y = np.empty_like(x)
    _expm1(x, y, K32)
    assert _ulps(y, np.expm1(x.astype(np.longdouble)), dtype) < 2
