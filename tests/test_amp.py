"""Precision policies of the optimizer classes and dynamic loss scaling (``gpugd.amp``).

References: the same classes over a float32 arena (master weights in fp32 make the
bf16/fp16 run an fp32 run fed half-precision gradients, so it must equal the fp32 run fed
the same gradients bit for bit — the kernels are the same fp32 rule); torch.amp.GradScaler
for the loss-scale schedule (when torch is importable); planted overflows for skipping.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from conftest import to_numpy
from test_optimizers import CLASSES, NAMES, SHAPES

import gpugd
from gpugd import amp, optim

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)


def _arena(xp, dtype, seed=0):
    flat = gpugd.FlatParams(SHAPES, dtype, xp)
    rng = np.random.default_rng(seed)
    for n, s in SHAPES.items():
        flat[n][...] = xp.asarray(rng.standard_normal(s).astype(dtype))
    return flat


def _half_grads(rng, dtype, scale=1.0):
    return {n: (rng.standard_normal(s) * scale).astype(dtype) for n, s in SHAPES.items()}


@pytest.mark.parametrize("pdt", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("kind", NAMES)
def test_master_weights_run_is_the_fp32_run_on_the_same_gradients(xp, kind, pdt):
    """Master weights hold exactly what an fp32 arena holds after the same steps (same
    initial values, same half-precision gradients); the half parameters are their rounding."""
    hp = CLASSES[kind][0]
    half = _arena(xp, pdt)
    full = gpugd.FlatParams(SHAPES, np.float32, xp)  # padding differs: compare by name
    for n in SHAPES:
        full[n][...] = half[n].astype(np.float32)
    oh = getattr(optim, kind)(half, master_weights=True, **hp)
    of = getattr(optim, kind)(full, **hp)
    rng = np.random.default_rng(1)
    for _ in range(5):
        for n, g in _half_grads(rng, pdt).items():
            half.grads[n][...] = xp.asarray(g)
            full.grads[n][...] = xp.asarray(g.astype(np.float32))
        oh.step()
        of.step()
    for n in SHAPES:
        master = to_numpy(oh.state[n]["master"])
        np.testing.assert_array_equal(master, to_numpy(full[n]))
        np.testing.assert_array_equal(
            to_numpy(half[n]).view(np.uint16), master.astype(pdt).view(np.uint16)
        )
        for k in of.state[n]:
            np.testing.assert_array_equal(to_numpy(oh.state[n][k]), to_numpy(of.state[n][k]))


def test_list_params_with_master_weights_and_bf16_states():
    rng = np.random.default_rng(2)
    ps = [rng.standard_normal(s).astype(BF16) for s in SHAPES.values()]
    gs = [np.zeros(s, BF16) for s in SHAPES.values()]
    opt = optim.Adam(ps, grads=gs, lr=1e-2, master_weights=True, state_dtype=BF16)
    st = opt.state["0"]
    assert st["exp_avg"].dtype == BF16 and st["master"].dtype == np.float32
    for g in gs:
        g[...] = rng.standard_normal(g.shape).astype(BF16)
    before = [p.astype(np.float64) for p in ps]
    opt.step()
    for i, p in enumerate(ps):
        np.testing.assert_array_equal(
            p.view(np.uint16), opt.state[str(i)]["master"].astype(BF16).view(np.uint16)
        )
        assert not np.array_equal(p.astype(np.float64), before[i])


def test_stochastic_rounding_changes_with_the_step_and_repeats_with_the_seed():
    def run(seed):
        flat = _arena(np, BF16)
        opt = optim.SGD(flat, lr=1e-3, master_weights=True, rounding="stochastic", seed=seed)
        rng = np.random.default_rng(3)
        out = []
        for _ in range(3):
            for n, g in _half_grads(rng, BF16).items():
                flat.grads[n][...] = g
            opt.step()
            out.append(flat.data.view(np.uint16).copy())
        return out

    a, b, c = run(1), run(1), run(2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (
            lambda: optim.Adam(_arena(np, np.float32), master_weights=True),
            ValueError,
            "master_weights: fp32 master weights are for float16 or bfloat16",
        ),
        (
            lambda: optim.Adam(_arena(np, np.float32), state_dtype=BF16),
            ValueError,
            "state_dtype: with float32 parameters states are float32",
        ),
        (
            lambda: optim.Adam(_arena(np, BF16), state_dtype=np.float16),
            ValueError,
            "state_dtype: beside bfloat16 parameters states are float32 or bfloat16",
        ),
        (
            lambda: optim.Adam(_arena(np, F16), rounding="stochastic"),
            ValueError,
            "rounding: stochastic rounding is for bfloat16",
        ),
        (
            lambda: optim.Adam(_arena(np, BF16), rounding="down"),
            ValueError,
            "rounding: expected one of",
        ),
        (
            lambda: optim.Adam(_arena(np, BF16), master_weights=1),
            TypeError,
            "master_weights: expected a bool",
        ),
        (
            lambda: gpugd.FlatParams(SHAPES, np.int16),
            TypeError,
            "dtype: expected float32, float64, float16 or bfloat16",
        ),
    ],
)
def test_bad_precision_policies_are_refused(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("xp_name", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_resume_with_master_weights_bf16_states_and_scaler_is_bit_identical(xp_name, tmp_path):
    xp = gpugd.get_backend(xp_name).xp

    def make(seed=0):
        flat = _arena(xp, BF16, seed)
        opt = optim.AdamW(
            flat, lr=1e-2, master_weights=True, state_dtype=BF16, rounding="stochastic", seed=5
        )
        return flat, opt, amp.LossScaler(opt, init_scale=256.0, growth_interval=2)

    def train(flat, scaler, rng, steps, start):
        for t in range(start, start + steps):
            for n, g in _half_grads(rng, BF16, scaler.scale_factor).items():
                flat.grads[n][...] = xp.asarray(g)
            if t == 3:
                flat.grads["b1"][0] = math.inf  # one planted overflow
            scaler.step()

    fa, _, sa = make()
    train(fa, sa, np.random.default_rng(8), 7, 0)
    fb, ob, sb = make()
    rng = np.random.default_rng(8)
    train(fb, sb, rng, 4, 0)
    ob.save(tmp_path / "ck.npz")
    fc, oc, sc = make(seed=9)
    oc.load(tmp_path / "ck.npz")
    assert sc.scale_factor == sb.scale_factor and sc.skipped_steps == 1
    train(fc, sc, rng, 3, 4)
    np.testing.assert_array_equal(
        to_numpy(fc.data).view(np.uint16), to_numpy(fa.data).view(np.uint16)
    )
    assert sc.state_dict() == sa.state_dict()


# ---- loss scaling -----------------------------------------------------------------------


def _scaled_setup(init_scale=2.0**10, growth_interval=3, **kw):
    flat = _arena(np, F16)
    opt = optim.Adam(flat, lr=1e-2, master_weights=True, **kw)
    return flat, opt, amp.LossScaler(opt, init_scale=init_scale, growth_interval=growth_interval)


def test_planted_overflow_is_skipped_reported_counted_and_backs_off():
    flat, opt, scaler = _scaled_setup()
    rng = np.random.default_rng(4)
    for n, g in _half_grads(rng, F16).items():
        flat.grads[n][...] = g
    scaler.step()
    data, states = flat.data.copy(), {k: b.data.copy() for k, b in opt._buffers.items()}
    flat.grads["w2"][1, 2] = np.float16(np.inf)
    flat.grads["b1"][0] = np.float16(np.nan)
    report = scaler.step()
    assert report.skipped and report.step == 2
    assert report.nonfinite == {"b1": 1, "w2": 1}
    assert opt.step_count == 1 and opt.skipped_steps == 1 and scaler.skipped_steps == 1
    assert scaler.scale_factor == 2.0**9
    np.testing.assert_array_equal(flat.data.view(np.uint16), data.view(np.uint16))
    for k, b in opt._buffers.items():
        np.testing.assert_array_equal(b.data, states[k])
    # the next finite step goes through and counts toward growth
    for n, g in _half_grads(rng, F16).items():
        flat.grads[n][...] = g
    assert not scaler.step().skipped and opt.step_count == 2


def test_scale_grows_after_growth_interval_clean_steps():
    flat, _opt, scaler = _scaled_setup(init_scale=8.0, growth_interval=3)
    rng = np.random.default_rng(5)
    seen = []
    for _ in range(7):
        for n, g in _half_grads(rng, F16).items():
            flat.grads[n][...] = g
        scaler.step()
        seen.append(scaler.scale_factor)
    assert seen == [8.0, 8.0, 16.0, 16.0, 16.0, 32.0, 32.0]


def test_unscaling_enters_through_grad_scale_and_gives_the_unscaled_step():
    """Gradients of a loss scaled by S, stepped with the scaler, equal unscaled gradients
    stepped without it (S a power of two: the scaling is exact in float16 for these
    values), and the reported norm is the unscaled one."""
    s = 2.0**12
    f1, _o1, sc = _scaled_setup(init_scale=s, growth_interval=10**6)
    f2 = _arena(np, F16)
    o2 = optim.Adam(f2, lr=1e-2, master_weights=True)
    rng = np.random.default_rng(6)
    for _ in range(3):
        gs = _half_grads(rng, F16, 0.01)
        for n, g in gs.items():
            f1.grads[n][...] = (g.astype(np.float32) * s).astype(F16)
            f2.grads[n][...] = g
        r = sc.step()
        o2.step()
        ref = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in gs.values()))
        assert abs(r.grad_norm - ref) <= 1e-12 * ref
    np.testing.assert_array_equal(f1.data.view(np.uint16), f2.data.view(np.uint16))


def test_small_gradients_underflow_in_float16_without_scaling():
    """Why loss scaling exists: gradients of 1e-8 flush to zero in float16 (smallest
    subnormal 6e-8), scaled by 2^16 they survive and the step moves the parameters."""
    g = np.full(8, 1e-8)
    assert np.all(g.astype(F16) == 0)
    p = np.ones(8, F16)
    opt = optim.SGD([p], grads=[(g * 2.0**16).astype(F16)], lr=1e4, master_weights=True)
    amp.LossScaler(opt, init_scale=2.0**16)
    opt.step()
    np.testing.assert_allclose(opt.state["0"]["master"], 1 - 1e4 * 1e-8, rtol=1e-3)


def test_clipping_composes_with_loss_scaling():
    f1, _o1, sc = _scaled_setup(init_scale=2.0**8, growth_interval=10**6, max_grad_norm=0.5)
    rng = np.random.default_rng(7)
    for n, g in _half_grads(rng, F16).items():
        f1.grads[n][...] = (g.astype(np.float32) * 2.0**8).astype(F16)
    r = sc.step()
    assert r.clip_coef < 1 and abs(r.clip_coef - 0.5 / (r.grad_norm + 1e-6)) < 1e-12


def test_disabled_scaler_is_a_plain_step():
    flat, opt, _ = _scaled_setup()
    opt.loss_scaler = None
    amp.LossScaler(opt, enabled=False)
    assert opt.loss_scaler.scale_factor == 1.0
    flat.grads["w1"][0, 0] = np.float16(np.inf)
    r = opt.loss_scaler.step()
    assert not r.skipped  # the optimizer's own policy (propagate) applies


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        (dict(init_scale=0.0), ValueError, "init_scale: expected a finite value in"),
        (dict(growth_factor=1.0), ValueError, "growth_factor: expected a finite value in"),
        (dict(backoff_factor=1.0), ValueError, "backoff_factor: expected a finite value in"),
        (dict(growth_interval=0), ValueError, "growth_interval: expected an integer"),
        (dict(enabled="yes"), TypeError, "enabled: expected a bool"),
    ],
)
def test_bad_scaler_arguments(kw, exc, match):
    opt = optim.Adam(_arena(np, F16), master_weights=True)
    with pytest.raises(exc, match=match):
        amp.LossScaler(opt, **kw)
    assert opt.loss_scaler is None


def test_scaler_checkpoint_mismatch_is_refused(tmp_path):
    _flat, opt, _scaler = _scaled_setup()
    opt.save(tmp_path / "ck.npz")
    f2 = _arena(np, F16)
    o2 = optim.Adam(f2, lr=1e-2, master_weights=True)
    with pytest.raises(optim.CheckpointError, match="carries a loss scaler"):
        o2.load(tmp_path / "ck.npz")
    amp.LossScaler(o2, growth_interval=7)
    with pytest.raises(optim.CheckpointError, match="growth_interval is 3 in the state"):
        o2.load(tmp_path / "ck.npz")
    assert o2.step_count == 0 and o2.loss_scaler.scale_factor == 2.0**16
    o3 = optim.Adam(_arena(np, F16), lr=1e-2, master_weights=False)
    amp.LossScaler(o3, init_scale=2.0**10, growth_interval=3)
    with pytest.raises(optim.CheckpointError, match="carries states"):
        o3.load(tmp_path / "ck.npz")
    with pytest.raises(ValueError, match="already has a LossScaler"):
        amp.LossScaler(opt)


def test_scale_schedule_matches_torch_grad_scaler():
    torch = pytest.importorskip("torch")
    pattern = [False, False, True, False, False, False, False, True, True, False, False, False]
    flat, _opt, scaler = _scaled_setup(init_scale=2.0**10, growth_interval=3)
    w = torch.nn.Parameter(torch.ones(4))
    topt = torch.optim.SGD([w], lr=0.0)
    tsc = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    rng = np.random.default_rng(9)
    for overflow in pattern:
        for n, g in _half_grads(rng, F16).items():
            flat.grads[n][...] = g
        if overflow:
            flat.grads["w1"][0, 0] = np.float16(np.inf)
        scaler.step()
        tsc.scale(torch.ones(()))
        w.grad = torch.full((4,), math.inf if overflow else 1.0)
        tsc.step(topt)
        tsc.update()
        assert scaler.scale_factor == tsc.get_scale()
