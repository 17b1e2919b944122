"""Learning-rate schedules: closed forms, torch.optim.lr_scheduler's values when torch is
importable, state carried through the optimizer's state dict, bad configurations."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpugd
from gpugd import optim, schedules


def _opt(lr=0.1, groups=False):
    flat = gpugd.FlatParams({"w": (4,), "b": (2,)}, np.float64)
    if groups:
        spec = [{"params": flat, "names": ["w"]}, {"params": flat, "names": ["b"], "lr": 0.5}]
        return optim.SGD(spec, lr=lr)
    return optim.SGD(flat, lr=lr)


def _lrs(opt, sched, steps, metrics=None):
    out = [sched.get_last_lr()]
    for k in range(steps):
        opt.step()
        sched.step(metrics[k]) if metrics is not None else sched.step()
        out.append(sched.get_last_lr())
    return np.array(out)


def test_closed_forms():
    o = _opt(groups=True)
    got = _lrs(o, schedules.StepLR(o, step_size=3, gamma=0.5), 7)
    want = [[0.1 * 0.5 ** (k // 3), 0.5 * 0.5 ** (k // 3)] for k in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-15)
    o = _opt()
    np.testing.assert_allclose(
        _lrs(o, schedules.ExponentialLR(o, gamma=0.9), 5)[:, 0], 0.1 * 0.9 ** np.arange(6)
    )
    o = _opt()
    lin = _lrs(o, schedules.LinearWarmup(o, start_factor=0.25, total_iters=3), 5)[:, 0]
    np.testing.assert_allclose(lin, 0.1 * np.array([0.25, 0.5, 0.75, 1, 1, 1]))


def test_cosine_with_warmup_shape():
    o = _opt(lr=1.0)
    s = schedules.CosineWithWarmup(o, warmup_steps=4, total_steps=12, min_lr=0.1)
    lrs = _lrs(o, s, 14)[:, 0]
    np.testing.assert_allclose(lrs[:5], [0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[8] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    np.testing.assert_allclose(lrs[12:], 0.1)  # held at min_lr after total_steps
    assert all(np.diff(lrs[4:13]) < 0)


def test_reduce_on_plateau_rules():
    o = _opt(lr=1.0)
    s = schedules.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=1, min_lr=0.3)
    # improves, then flat: the second bad step (> patience) halves the lr, cooldown 1 step,
    # then two more bad steps halve again (clipped at min_lr).
    lrs = _lrs(o, s, 7, metrics=[5, 4, 4, 4, 4, 4, 4])[:, 0]
    np.testing.assert_allclose(lrs, [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.3])


@pytest.mark.parametrize(
    "case",
    ["step", "exp", "linear", "cosine", "plateau-min", "plateau-max-abs"],
)
def test_matches_torch_lr_scheduler(case):
    torch = pytest.importorskip("torch", reason="torch is an optional peer")
    t_opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    o = _opt(lr=0.1)
    lr_sched = torch.optim.lr_scheduler
    metrics = None
    if case == "step":
        t, s = lr_sched.StepLR(t_opt, 4, 0.3), schedules.StepLR(o, 4, 0.3)
    elif case == "exp":
        t, s = lr_sched.ExponentialLR(t_opt, 0.8), schedules.ExponentialLR(o, 0.8)
    elif case == "linear":
        t = lr_sched.LinearLR(t_opt, start_factor=0.2, end_factor=0.9, total_iters=6)
        s = schedules.LinearWarmup(o, start_factor=0.2, end_factor=0.9, total_iters=6)
    elif case == "cosine":  # no warm-up: torch's CosineAnnealingLR over total_steps
        t = lr_sched.CosineAnnealingLR(t_opt, T_max=10, eta_min=0.01)
        s = schedules.CosineWithWarmup(o, warmup_steps=0, total_steps=10, min_lr=0.01)
    else:
        mode, tmode = ("min", "rel") if case == "plateau-min" else ("max", "abs")
        kw = dict(mode=mode, factor=0.5, patience=2, threshold=0.1, threshold_mode=tmode)
        t = lr_sched.ReduceLROnPlateau(t_opt, cooldown=1, **kw)
        s = schedules.ReduceLROnPlateau(o, cooldown=1, **kw)
        rng = np.random.default_rng(0)
        metrics = list(np.cumsum(rng.standard_normal(14)) * (1 if mode == "min" else -1))
    steps = 14 if metrics else 10
    got = _lrs(o, s, steps, metrics)[:, 0]
    want = [t_opt.param_groups[0]["lr"]]
    for k in range(steps):
        t_opt.step()
        t.step(metrics[k]) if metrics else t.step()
        want.append(t_opt.param_groups[0]["lr"])
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_state_travels_in_the_optimizer_state_dict():
    o = _opt(lr=1.0)
    s = schedules.ReduceLROnPlateau(o, patience=0, factor=0.5)
    _lrs(o, s, 3, metrics=[1.0, 2.0, 3.0])
    sd = o.state_dict()
    assert sd["scheduler"]["kind"] == "ReduceLROnPlateau" and sd["scheduler"]["last_step"] == 3
    o2 = _opt(lr=1.0)
    s2 = schedules.ReduceLROnPlateau(o2, patience=0, factor=0.5)
    o2.load_state_dict(sd)
    assert (s2.best, s2.num_bad_steps, s2.last_step) == (s.best, s.num_bad_steps, 3)
    assert o2.param_groups[0]["lr"] == o.param_groups[0]["lr"] == 0.25


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda o: schedules.StepLR(o, step_size=0), "step_size"),
        (lambda o: schedules.ExponentialLR(o, gamma=1.5), "gamma"),
        (lambda o: schedules.LinearWarmup(o, start_factor=0.0), "start_factor"),
        (lambda o: schedules.CosineWithWarmup(o, warmup_steps=5, total_steps=5), "total_steps"),
        (lambda o: schedules.ReduceLROnPlateau(o, mode="up"), "mode"),
        (lambda o: schedules.ReduceLROnPlateau(o, factor=1.0), "factor"),
    ],
)
def test_bad_configurations_are_refused(make, match):
    o = _opt()
    with pytest.raises(ValueError, match=match):
        make(o)
    assert o.scheduler is None and o.param_groups[0]["lr"] == 0.1


def test_one_schedule_per_optimizer_and_finite_metrics():
    o = _opt()
    s = schedules.ReduceLROnPlateau(o)
    with pytest.raises(ValueError, match="one schedule per optimizer"):
        schedules.StepLR(o, 2)
    with pytest.raises(ValueError, match="metric"):
        s.step(math.nan)
