"""Fit of vmath's erfc polynomial: g(t) = erfc(z)·e^(z²)/t at t = 1/(1 + z/2).

g is smooth on t ∈ (0, 1] (1 at z = 0, 1/(2√π) as z → ∞), so a polynomial in t gives
erfc(z) = t·g(t)·e^(−z²) with relative accuracy everywhere, and GELU's backward shares the
e^(−z²) = e^(−x²/2) with the density term. Weighted (relative) least squares on Chebyshev
nodes of [0.15, 1] (z ≤ 11.3; beyond, e^(−z²) is 0 in float32), values from mpmath at 40
digits; prints the float32 coefficients (highest power first) and the maximum relative
error of float32 Horner evaluation with FMA on a dense grid.

    python tools/fit_erfc.py [--degree 9]      (needs mpmath: pip install mpmath)
"""

from __future__ import annotations

import argparse

import mpmath as mp
import numpy as np

LO = 0.15


def g(t: float) -> float:
    t = mp.mpf(t)
    z = 2 * (1 - t) / t
    return float(mp.erfc(z) * mp.exp(z * z) / t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--degree", type=int, default=9)
    ap.add_argument("--nodes", type=int, default=400)
    args = ap.parse_args()
    mp.mp.dps = 40
    k = np.arange(args.nodes)
    nodes = 0.5 * (1 + LO) + 0.5 * (1 - LO) * np.cos(np.pi * (k + 0.5) / args.nodes)
    gn = np.array([g(t) for t in nodes])
    vander = np.vander(nodes, args.degree + 1) / gn[:, None]
    coef = np.linalg.lstsq(vander, np.ones_like(gn), rcond=None)[0].astype(np.float32)
    dense = np.linspace(LO, 1, 4001)
    gd = np.array([g(t) for t in dense])
    t32 = dense.astype(np.float32)
    acc = np.full_like(t32, coef[0])
    for c in coef[1:]:  # an FMA: exact product, one rounding (float64 holds the product)
        acc = (acc.astype(np.float64) * t32 + np.float64(c)).astype(np.float32)
    for c in coef:
        print(repr(float(c)))
    print(f"max relative error (float32 Horner, FMA): {np.abs(acc / gd - 1).max():.2e}")


if __name__ == "__main__":
    main()
