"""Lion (Chen et al. 2023, arXiv 2302.06675) as lion-pytorch's ``Lion``.

Reference (labelled, from lucidrains/lion-pytorch's ``update_fn``, in torch float64 where torch
is importable): p ← p·(1 − lr·wd); p ← p − lr·sign(β1·m + (1−β1)·g); m ← β2·m + (1−β2)·g.
The fused rule against gpugd.reference.lion at odd sizes, on both backends, in every precision
policy and bitwise CUDA-vs-Numba runs through tests/test_optim.py's CASES (rule "lion").

The class tests (``test_class_*``) import ``gpugd.optim.Lion`` without a skip: they fail until
the class is in gpugd.optim.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_rel_close, to_numpy

import gpugd
from gpugd import ops
from gpugd import reference as ref


def torch_lion_step(torch, p, g, m, lr, wd, b1, b2):
    """lion-pytorch's update_fn on torch tensors (the peer, in place)."""
    p.mul_(1.0 - lr * wd)
    update = m.clone().mul_(b1).add(g, alpha=1.0 - b1).sign_()
    p.add_(update, alpha=-lr)
    m.mul_(b2).add_(g, alpha=1.0 - b2)


def test_op_matches_lion_pytorch_update_fn():
    torch = pytest.importorskip("torch", reason="torch is an optional peer, not a dependency")
    rng = np.random.default_rng(3)
    n, lr, wd, b1, b2 = 4099, 3e-3, 0.2, 0.85, 0.97
    p0 = rng.standard_normal(n)
    p, m = p0.copy(), np.zeros(n)
    tp, tm = torch.tensor(p0.copy()), torch.zeros(n, dtype=torch.float64)
    for _ in range(30):
        g = rng.standard_normal(n)
        ops.lion_(p, g, m, lr=lr, betas=(b1, b2), weight_decay=wd)
        torch_lion_step(torch, tp, torch.tensor(g), tm, lr, wd, b1, b2)
    assert_rel_close(p, tp.numpy(), 1e-13, "p")
    assert_rel_close(m, tm.numpy(), 1e-13, "exp_avg")


def test_defaults_are_lion_pytorchs(xp):
    rng = np.random.default_rng(4)
    p0, g0 = rng.standard_normal((2, 1023)).astype(np.float32)
    p, m = xp.array(p0), xp.zeros(1023, np.float32)  # a copy: p0 stays
    ops.lion_(p, xp.asarray(g0), m)
    pr = ref.lion(p0, g0, st := {"exp_avg": np.zeros(1023)}, lr=1e-4, betas=(0.9, 0.99))
    assert_rel_close(p, pr, 1e-7, "p")
    assert_rel_close(m, st["exp_avg"], 1e-7, "exp_avg")


def test_sign_of_zero_is_zero_and_nan_propagates(xp):
    """c = β1·m + (1−β1)·g = 0 leaves p·(1 − lr·wd) (no ±lr step); a NaN gradient gives a
    NaN parameter (not a silent ±lr step), as np.sign(NaN) = NaN."""
    p = xp.asarray(np.array([1.5, -2.0, 0.25, 3.0], np.float32))
    m = xp.zeros(4, np.float32)
    g = xp.asarray(np.array([0.0, -0.0, np.nan, 1.0], np.float32))
    ops.lion_(p, g, m, lr=0.5, weight_decay=0.0)
    got = to_numpy(p)
    np.testing.assert_array_equal(got[:2], [1.5, -2.0])
    assert np.isnan(got[2])
    assert got[3] == np.float32(2.5)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(lr=-1.0), r"lr: expected a finite value in \[0.0, inf\)"),
        (dict(betas=(0.9, 1.0)), r"betas\[1\]"),
        (dict(betas=0.9), "betas: expected a pair"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(grad_scale=float("nan")), "grad_scale"),
        (dict(clip_value=0.0), "clip_value"),
    ],
)
def test_bad_hyperparameters_are_refused_and_nothing_written(xp, kw, match):
    p, g, m = (xp.arange(64, dtype=np.float32) for _ in range(3))
    with pytest.raises((ValueError, TypeError), match=match):
        ops.lion_(p, g, m, **kw)
    np.testing.assert_array_equal(to_numpy(p), np.arange(64, dtype=np.float32))
    np.testing.assert_array_equal(to_numpy(m), np.arange(64, dtype=np.float32))


def test_exp_avg_is_required():
    p, g = np.zeros(8, np.float32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="exp_avg: required"):
        ops.lion_(p, g, None)


# ---------------------------------------------------------------- the optimizer class
# Each imports gpugd.optim.Lion itself (no skip): these fail until the class is pasted in.

SHAPES = {"w1": (7, 5), "b1": (5,), "w2": (5, 3), "b2": (3,)}
HP = dict(lr=3e-3, betas=(0.85, 0.98), weight_decay=0.1)


def _arena(xp, dtype=np.float64, seed=0):
    flat = gpugd.FlatParams(SHAPES, dtype, xp)
    rng = np.random.default_rng(seed)
    for n, s in SHAPES.items():
        flat[n][...] = xp.asarray(rng.standard_normal(s))
    return flat


def _grads(flat, rng):
    for n, s in SHAPES.items():
        flat.grads[n][...] = flat.xp.asarray(rng.standard_normal(s))


def _groups(flat):
    return [
        {"params": flat, "names": ["w1", "w2"]},
        {"params": flat, "names": ["b1", "b2"], "weight_decay": 0.0, "lr": 0.02},
    ]


def test_class_defaults_are_lion_pytorchs():
    from gpugd.optim import Lion

    assert Lion.DEFAULTS == dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
    opt = Lion(_arena(np))
    assert opt.param_groups[0]["lr"] == 1e-4 and opt.param_groups[0]["betas"] == (0.9, 0.99)


def test_class_param_groups_follow_the_float64_reference(xp):
    from gpugd.optim import Lion

    flat = _arena(xp)
    opt = Lion(_groups(flat), **HP)
    pr = {n: to_numpy(flat[n]).copy() for n in SHAPES}
    rstate = {n: {"exp_avg": np.zeros(s)} for n, s in SHAPES.items()}
    rng = np.random.default_rng(1)
    for _ in range(6):
        _grads(flat, rng)
        g_host = {n: to_numpy(flat.grads[n]) for n in SHAPES}
        opt.step()
        for n in SHAPES:
            kw = dict(HP, **(dict(weight_decay=0.0, lr=0.02) if n.startswith("b") else {}))
            pr[n] = ref.lion(pr[n], g_host[n], rstate[n], **kw)
    assert opt.step_count == 6
    for n in SHAPES:
        assert_rel_close(flat[n], pr[n], 1e-12, f"Lion {n}")
        assert_rel_close(opt.state[n]["exp_avg"], rstate[n]["exp_avg"], 1e-12, f"Lion {n}.m")


def test_class_matches_lion_pytorch():
    torch = pytest.importorskip("torch", reason="torch is an optional peer, not a dependency")
    from gpugd.optim import Lion

    flat = _arena(np)
    opt = Lion(flat, **HP)
    tp = {n: torch.tensor(to_numpy(flat[n]).copy()) for n in SHAPES}
    tm = {n: torch.zeros(s, dtype=torch.float64) for n, s in SHAPES.items()}
    rng = np.random.default_rng(2)
    for _ in range(20):
        _grads(flat, rng)
        opt.step()
        for n in SHAPES:
            g = torch.tensor(to_numpy(flat.grads[n]).copy())
            torch_lion_step(torch, tp[n], g, tm[n], HP["lr"], HP["weight_decay"], *HP["betas"])
    for n in SHAPES:
        assert_rel_close(flat[n], tp[n].numpy(), 1e-13, f"Lion {n}")


def test_class_resume_continues_bit_identically(xp, tmp_path):
    from gpugd.optim import Lion

    def train(opt, flat, rng, steps):
        for _ in range(steps):
            _grads(flat, rng)
            opt.step()

    flat_a = _arena(xp, np.float32)
    a = Lion(_groups(flat_a), **HP)
    train(a, flat_a, np.random.default_rng(6), 8)
    flat_b = _arena(xp, np.float32)
    b = Lion(_groups(flat_b), **HP)
    rng = np.random.default_rng(6)
    train(b, flat_b, rng, 3)
    b.save(tmp_path / "ck.npz")
    flat_c = _arena(xp, np.float32, seed=99)
    c = Lion(_groups(flat_c), **HP)
    c.load(tmp_path / "ck.npz")
    assert c.step_count == 3
    train(c, flat_c, rng, 5)
    np.testing.assert_array_equal(to_numpy(flat_c.data), to_numpy(flat_a.data))
    np.testing.assert_array_equal(
        to_numpy(c.state["w1"]["exp_avg"]), to_numpy(a.state["w1"]["exp_avg"])
    )
