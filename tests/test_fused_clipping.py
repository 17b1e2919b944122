"""Clipping fused into the optimizers' step (max_grad_norm=, clip_value=) and the
non-finite policies (error, skip, propagate), on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy

import gpugd
from gpugd import ops, optim

SHAPES = {"w1": (9, 7), "b1": (7,), "w2": (7, 3), "b2": (3,)}


def _model(xp, seed=0, dtype=np.float32):
    flat = gpugd.FlatParams(SHAPES, dtype, xp)
    rng = np.random.default_rng(seed)
    for n, s in SHAPES.items():
        flat[n][...] = xp.asarray(rng.standard_normal(s))
    return flat


def _grads(flat, seed, scale=10.0):
    rng = np.random.default_rng(seed)
    for n, s in SHAPES.items():
        flat.grads[n][...] = flat.xp.asarray(rng.standard_normal(s) * scale)


@pytest.mark.parametrize("kind", ["SGD", "Adam", "AdamW", "NAdam", "RMSprop", "Adagrad"])
def test_fused_norm_clipping_equals_clip_then_step(xp, kind):
    hp = {"SGD": dict(lr=0.1, momentum=0.9)}.get(kind, dict(lr=1e-2))
    a, b = _model(xp), _model(xp)
    fused = getattr(optim, kind)(a, max_grad_norm=1.0, **hp)
    plain = getattr(optim, kind)(b, **hp)
    for step in range(4):
        _grads(a, step)
        _grads(b, step)
        grads_before = to_numpy(a.grad_data).copy()
        fused.step()
        views = [b.grads[n] for n in SHAPES]
        norm = ops.clip_by_global_norm_(views, 1.0)
        plain.step()
        assert fused.last_report.grad_norm == pytest.approx(norm, rel=1e-12)
        assert fused.last_report.clip_coef < 1.0
        np.testing.assert_array_equal(to_numpy(a.grad_data), grads_before)  # never rewritten
    np.testing.assert_array_equal(to_numpy(a.data), to_numpy(b.data))


def test_fused_value_clipping_equals_clip_then_step(xp):
    a, b = _model(xp), _model(xp)
    fused = optim.Adam(a, lr=1e-2, clip_value=0.5)
    plain = optim.Adam(b, lr=1e-2)
    for step in range(3):
        _grads(a, step, scale=1.0)
        _grads(b, step, scale=1.0)
        fused.step()
        ops.clip_by_value_([b.grads[n] for n in SHAPES], 0.5)
        plain.step()
    np.testing.assert_array_equal(to_numpy(a.data), to_numpy(b.data))


def test_norm_is_taken_of_the_scaled_gradient(xp):
    # With loss scaling (grad_scale = 1/S) the clip acts on the true gradient g/S.
    a, b = _model(xp), _model(xp)
    oa = optim.SGD(a, lr=0.1, max_grad_norm=1.0)
    ob = optim.SGD(b, lr=0.1, max_grad_norm=1.0)
    _grads(a, 1, scale=1024.0)
    _grads(b, 1, scale=1.0)
    oa.step(grad_scale=1 / 1024)
    ob.step()
    assert oa.last_report.grad_norm == pytest.approx(ob.last_report.grad_norm, rel=1e-6)
    np.testing.assert_allclose(to_numpy(a.data), to_numpy(b.data), rtol=1e-6)


def _plant(flat, bad, where=("w2", 4)):
    v = flat.grads[where[0]].reshape(-1)
    v[where[1]] = bad


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("kind", ["SGD", "Adam", "NAdam", "RMSprop", "Adagrad", "AdamW"])
def test_policy_skip_touches_nothing_and_counts(xp, kind, bad):
    flat = _model(xp)
    opt = getattr(optim, kind)(
        flat, nonfinite="skip", **({"momentum": 0.9} if kind == "SGD" else {})
    )
    _grads(flat, 1, scale=0.1)
    opt.step()
    snap = to_numpy(flat.data).copy(), {k: to_numpy(b.data).copy() for k, b in opt._buffers.items()}
    _grads(flat, 2, scale=0.1)
    _plant(flat, bad)
    opt.step()
    assert opt.step_count == 1 and opt.skipped_steps == 1
    rep = opt.last_report
    assert rep.skipped and rep.step == 2 and rep.nonfinite == {"w2": 1}
    np.testing.assert_array_equal(to_numpy(flat.data), snap[0])
    for k, b in opt._buffers.items():
        np.testing.assert_array_equal(to_numpy(b.data), snap[1][k], err_msg=k)
    _grads(flat, 3, scale=0.1)  # a finite step goes through and counts as step 2
    opt.step()
    assert opt.step_count == 2 and not opt.last_report.skipped
    assert opt.state_dict()["skipped_steps"] == 1


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_policy_error_raises_and_changes_nothing(xp, bad):
    flat = _model(xp)
    opt = optim.Adam(flat, nonfinite="error", max_grad_norm=1.0)
    _grads(flat, 1)
    _plant(flat, bad, ("b1", 0))
    before = to_numpy(flat.data).copy()
    with pytest.raises(FloatingPointError, match=r"non-finite gradients in \{'b1': 1\}"):
        opt.step()
    assert opt.step_count == 0
    np.testing.assert_array_equal(to_numpy(flat.data), before)
    assert not to_numpy(opt._buffers["exp_avg"].data).any()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_policy_propagate_is_torchs_default(xp, bad):
    flat = _model(xp)
    opt = optim.SGD(flat, lr=0.1)
    assert opt.nonfinite == "propagate"
    _grads(flat, 1)
    _plant(flat, bad)
    opt.step()
    w2 = to_numpy(flat["w2"]).reshape(-1)
    assert not np.isfinite(w2[4]) and np.isfinite(np.delete(w2, 4)).all()
    assert opt.step_count == 1


def test_propagate_with_norm_clipping_poisons_everything_like_torch():
    # torch's clip_grad_norm_ multiplies every gradient by max_norm/(NaN + 1e-6) = NaN.
    flat = _model(np)
    opt = optim.SGD(flat, lr=0.1, max_grad_norm=1.0)
    _grads(flat, 1)
    _plant(flat, np.nan)
    opt.step()
    assert np.isnan(flat["w1"]).all()


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm: expected a finite value > 0"),
        (dict(max_grad_norm="1"), TypeError, "max_grad_norm: expected a real number"),
        (dict(clip_value=0.0), ValueError, "clip_value"),
        (dict(nonfinite="ignore"), ValueError, "nonfinite: expected one of"),
    ],
)
def test_bad_options_are_refused(kw, exc, match):
    with pytest.raises(exc, match=match):
        optim.Adam(_model(np), **kw)
