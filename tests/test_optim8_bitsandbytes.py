"""gpugd's 8-bit Adam against bitsandbytes' ``Adam8bit`` on the same inputs (issue 22).

Runs where bitsandbytes and its CPU build import (``pip install bitsandbytes``; 0.50 runs
``Adam8bit`` on CPU tensors); skipped otherwise, and CI does not install it. What it shows
(bitsandbytes 0.50.2, 2026-12-05): the code maps agree to 2 ulps (bitsandbytes builds them
in float32 arithmetic, gpugd rounds the exact float64 values once), so a few codes differ
from the first step and the trajectories part by a fraction of a percent of the distance
moved; both 8-bit trajectories stay the same distance from fp32 Adam.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpugd import ops, quant8
from gpugd.ops.optim8 import state8

torch = pytest.importorskip("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    bnb = pytest.importorskip("bitsandbytes")

N, B = 1 << 14, 256  # bitsandbytes' blockwise states use blocks of 256 on the CPU


def _bnb_adam(p0: np.ndarray):
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    return p, bnb.optim.Adam8bit([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, min_8bit_size=4096)


def test_code_maps_agree_to_two_ulps():
    from bitsandbytes.functional import create_dynamic_map

    for signed in (True, False):
        theirs = create_dynamic_map(signed=signed).numpy().astype(np.float32)
        ours = quant8.code_map(signed)
        assert theirs.shape == ours.shape == (256,)
        ulps = np.abs(theirs.view(np.int32).astype(np.int64) - ours.view(np.int32))
        assert ulps.max() <= 2, signed


def test_first_step_codes_and_scales_match_bitsandbytes():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(N).astype(np.float32)
    g = (rng.standard_normal(N) * 0.1).astype(np.float32)
    p, opt = _bnb_adam(p0)
    p.grad = torch.from_numpy(g.copy())
    opt.step()
    st = opt.state[p]
    q, m, v = p0.copy(), state8(N, True, B), state8(N, False, B)
    ops.adam8bit_(q, g, m, v, lr=1e-3, step=1, block_size=B)
    assert st["absmax1"].numpy().shape == m.absmax.shape  # the same blocks
    np.testing.assert_allclose(st["absmax1"].numpy(), m.absmax, rtol=1e-6)
    np.testing.assert_allclose(st["absmax2"].numpy(), v.absmax, rtol=1e-6)
    assert np.mean(st["state1"].numpy() == m.codes) >= 0.99
    assert np.mean(st["state2"].numpy() == v.codes) >= 0.95
    np.testing.assert_allclose(p.detach().numpy(), q, rtol=0, atol=1e-7)


def test_trajectories_stay_as_close_to_fp32_adam_as_bitsandbytes():
    """300 steps on a noisy quadratic: gpugd's and bitsandbytes' 8-bit paths end the same
    distance from fp32 Adam (relative to how far fp32 Adam moved), and near each other."""
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(N).astype(np.float32)
    p, opt = _bnb_adam(p0)
    pf = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt32 = torch.optim.Adam([pf], lr=1e-3)
    q, m, v = p0.copy(), state8(N, True, B), state8(N, False, B)
    for t in range(1, 301):
        g = (rng.standard_normal(N) * 0.1).astype(np.float32) + np.float32(0.01) * q
        p.grad, pf.grad = torch.from_numpy(g.copy()), torch.from_numpy(g.copy())
        opt.step()
        opt32.step()
        ops.adam8bit_(q, g, m, v, lr=1e-3, step=t, block_size=B)
    ref = pf.detach().numpy()
    moved = np.linalg.norm(ref - p0)
    theirs = np.linalg.norm(p.detach().numpy() - ref) / moved
    ours = np.linalg.norm(q - ref) / moved
    assert 0 < ours < 0.05 and ours <= 1.05 * theirs + 1e-3, (ours, theirs)
    assert np.linalg.norm(q - p.detach().numpy()) / moved < 0.02
