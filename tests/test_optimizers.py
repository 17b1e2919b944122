"""Optimizer classes (gpugd.optim): torch.optim's names, defaults and trajectories, param
groups over an arena and over lists, state dicts, atomic checkpoints that refuse what does
not fit and leave everything untouched, bit-identical resume."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
from conftest import assert_rel_close, to_numpy

import gpugd
from gpugd import optim, schedules
from gpugd import reference as ref

SHAPES = {"w1": (7, 5), "b1": (5,), "w2": (5, 3), "b2": (3,)}

# class -> (constructor hyperparameters, reference rule, reference kwargs, state names)
CLASSES = {
    "SGD": (
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
        "sgd",
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
        ["momentum_buffer"],
    ),
    "Adagrad": (
        dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
        "adagrad",
        dict(lr=0.1, lr_decay=0.01),
        ["sum"],
    ),
    "RMSprop": (
        dict(lr=1e-2, momentum=0.5, centered=True),
        "rmsprop",
        dict(lr=1e-2, momentum=0.5, centered=True),
        ["square_avg", "grad_avg", "momentum_buffer"],
    ),
    "Adam": (
        dict(lr=1e-2, amsgrad=True, weight_decay=1e-2),
        "adam",
        dict(lr=1e-2, amsgrad=True, weight_decay=1e-2),
        ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
    ),
    "AdamW": (
        dict(lr=1e-2),
        "adam",
        dict(lr=1e-2, weight_decay=1e-2, decoupled=True),
        ["exp_avg", "exp_avg_sq"],
    ),
    "NAdam": (
        dict(lr=1e-2, decoupled_weight_decay=True, weight_decay=0.1),
        "nadam",
        dict(lr=1e-2, decoupled=True, weight_decay=0.1),
        ["exp_avg", "exp_avg_sq"],
    ),
}
NAMES = list(CLASSES)


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
    """Weights with the class's weight decay; biases without (the usual split)."""
    return [
        {"params": flat, "names": ["w1", "w2"]},
        {"params": flat, "names": ["b1", "b2"], "weight_decay": 0.0, "lr": 0.02},
    ]


@pytest.mark.parametrize("kind", NAMES)
def test_param_groups_follow_the_float64_reference(xp, kind):
    hp, rule, rkw, snames = CLASSES[kind]
    flat = _arena(xp)
    opt = getattr(optim, kind)(_groups(flat), **hp)
    init = hp.get("initial_accumulator_value", 0.0)
    pr = {n: to_numpy(flat[n]).copy() for n in SHAPES}
    rstate = {
        n: {k: np.full(s, init if k == "sum" else 0.0) for k in snames} for n, s in SHAPES.items()
    }
    rng = np.random.default_rng(1)
    b1, psi, mu_product = 0.9, 4e-3, 1.0
    for t in range(1, 6):
        _grads(flat, rng)
        g_host = {n: to_numpy(flat.grads[n]) for n in SHAPES}
        opt.step()
        for n in SHAPES:
            kw = dict(rkw)
            if n.startswith("b"):
                kw.update(weight_decay=0.0, lr=0.02)
            if rule != "rmsprop":
                kw["step"] = t
            if rule == "nadam":
                kw["mu_product"] = mu_product
            pr[n] = getattr(ref, rule)(pr[n], g_host[n], rstate[n], **kw)
        mu_product *= ref.nadam_mu(t, b1, psi)
    assert opt.step_count == 5
    for n in SHAPES:
        assert_rel_close(flat[n], pr[n], 1e-12, f"{kind} {n}")
        for k in snames:
            assert_rel_close(opt.state[n][k], rstate[n][k], 1e-12, f"{kind} {n}.{k}")


@pytest.mark.parametrize("kind", NAMES)
def test_arena_and_list_params_give_identical_steps(xp, kind):
    hp = CLASSES[kind][0]
    flat = _arena(xp, np.float32)
    arrays = [flat[n].copy() for n in SHAPES]
    grads = [xp.zeros(s, np.float32) for s in SHAPES.values()]
    a = getattr(optim, kind)(flat, **hp)
    b = getattr(optim, kind)(arrays, grads=grads, **hp)
    rng = np.random.default_rng(2)
    for _ in range(4):
        _grads(flat, rng)
        for gr, n in zip(grads, SHAPES, strict=True):
            gr[...] = flat.grads[n]
        a.step()
        b.step()
    for arr, n in zip(arrays, SHAPES, strict=True):
        np.testing.assert_array_equal(to_numpy(arr), to_numpy(flat[n]), err_msg=n)


def test_whole_arena_is_one_span_and_split_groups_merge_neighbours():
    flat = _arena(np)
    whole = optim.Adam(flat)
    assert whole._groups[0].spans == [(0, flat.numel)]
    split = optim.Adam(
        [{"params": flat, "names": ["w1", "b1"]}, {"params": flat, "names": ["w2", "b2"]}]
    )
    off = flat._slots["w2"][0]
    assert [g.spans for g in split._groups] == [[(0, off)], [(off, flat.numel)]]


def test_arena_padding_stays_zero():
    flat = _arena(np, np.float32)
    opt = optim.AdamW(flat, lr=0.1, weight_decay=0.5)
    rng = np.random.default_rng(3)
    for _ in range(3):
        _grads(flat, rng)
        opt.step()
    used = np.zeros(flat.numel, bool)
    for n, s in SHAPES.items():
        off = flat._slots[n][0]
        used[off : off + int(np.prod(s))] = True
    assert (flat.data[~used] == 0).all()
    assert (opt._buffers["exp_avg_sq"].data[~used] == 0).all()


@pytest.mark.parametrize("kind", NAMES)
def test_defaults_are_torchs(kind):
    torch = pytest.importorskip("torch", reason="torch is an optional peer")
    sig = inspect.signature(getattr(torch.optim, kind).__init__)
    for k, val in getattr(optim, kind).DEFAULTS.items():
        tv = sig.parameters[k].default
        assert (tuple(tv) if isinstance(tv, tuple) else tv) == val, f"{kind}.{k}"


@pytest.mark.parametrize("kind", NAMES)
def test_trajectory_matches_torch_optim(kind):
    torch = pytest.importorskip("torch", reason="torch is an optional peer")
    hp = CLASSES[kind][0]
    flat = _arena(np)
    tparams = {n: torch.tensor(flat[n].copy(), requires_grad=True) for n in SHAPES}
    tgroups = [
        {"params": [tparams["w1"], tparams["w2"]]},
        {"params": [tparams["b1"], tparams["b2"]], "weight_decay": 0.0, "lr": 0.02},
    ]
    topt = getattr(torch.optim, kind)(tgroups, **hp)
    opt = getattr(optim, kind)(_groups(flat), **hp)
    rng = np.random.default_rng(4)
    for _ in range(6):
        _grads(flat, rng)
        for n in SHAPES:
            tparams[n].grad = torch.tensor(flat.grads[n].copy())
        topt.step()
        opt.step()
    # torch keeps NAdam's μ-product in a float32 scalar tensor: that limits the NAdam match.
    rtol = 1e-8 if kind == "NAdam" else 1e-12
    for n in SHAPES:
        assert_rel_close(flat[n], tparams[n].detach().numpy(), rtol, f"{kind} {n}")


def test_zero_grad_clears_arena_and_lists():
    flat = _arena(np)
    flat.grad_data[:] = 1
    optim.SGD(flat).zero_grad()
    assert (flat.grad_data == 0).all()
    ps, gs = [np.ones(3)], [np.ones(3)]
    optim.SGD(ps, grads=gs).zero_grad()
    assert (gs[0] == 0).all()


def test_skipped_step_leaves_state_and_counter(xp):
    flat = _arena(xp, np.float32)
    opt = optim.Adam(flat, lr=0.1)
    _grads(flat, np.random.default_rng(5))
    opt.step()
    before = to_numpy(flat.data).copy(), to_numpy(opt._buffers["exp_avg"].data).copy()
    opt.step(skip_if=xp.ones(1, np.int32))
    assert opt.step_count == 1
    np.testing.assert_array_equal(to_numpy(flat.data), before[0])
    np.testing.assert_array_equal(to_numpy(opt._buffers["exp_avg"].data), before[1])


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda f: optim.Adam(f, lr=-1), ValueError, "lr: expected a finite value"),
        (lambda f: optim.Adam(f, betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
        (lambda f: optim.Adam(f, foreach=True), TypeError, "unknown or unsupported"),
        (lambda f: optim.SGD(f, nesterov=True), ValueError, "nesterov"),
        (lambda f: optim.Adagrad(f, initial_accumulator_value=-1), ValueError, "initial_acc"),
        (lambda f: optim.Adam([np.zeros(3)]), TypeError, "grads: required"),
        (lambda f: optim.Adam([np.zeros(3)], grads=[]), ValueError, "1 params but 0 grads"),
        (lambda f: optim.Adam([{"params": f, "names": ["nope"]}]), KeyError, "nope"),
        (
            lambda f: optim.Adam([{"params": f, "names": ["w1"]}, {"params": f, "names": ["w1"]}]),
            ValueError,
            "more than one param group",
        ),
        (lambda f: optim.Adam([{"params": f, "momentum": 0.9}]), TypeError, "unknown"),
        (lambda f: optim.Adam(3), TypeError, "params: expected"),
    ],
)
def test_bad_construction_is_refused(make, exc, match):
    with pytest.raises(exc, match=match):
        make(_arena(np))


# ---- checkpoints ---------------------------------------------------------------------


def _train(opt, flat, sched, rng, steps):
    for _ in range(steps):
        _grads(flat, rng)
        opt.step()
        sched.step()


@pytest.mark.parametrize("kind", NAMES)
def test_resume_continues_bit_identically(xp, tmp_path, kind):
    hp = CLASSES[kind][0]
    flat_a = _arena(xp, np.float32)
    a = getattr(optim, kind)(_groups(flat_a), **hp)
    sa = schedules.CosineWithWarmup(a, warmup_steps=2, total_steps=8)
    _train(a, flat_a, sa, np.random.default_rng(6), 8)

    flat_b = _arena(xp, np.float32)
    b = getattr(optim, kind)(_groups(flat_b), **hp)
    sb = schedules.CosineWithWarmup(b, warmup_steps=2, total_steps=8)
    rng = np.random.default_rng(6)
    _train(b, flat_b, sb, rng, 3)
    b.save(tmp_path / "ck.npz")

    flat_c = _arena(xp, np.float32, seed=99)  # different parameters: the checkpoint restores
    c = getattr(optim, kind)(_groups(flat_c), **hp)
    sc = schedules.CosineWithWarmup(c, warmup_steps=2, total_steps=8)
    c.load(tmp_path / "ck.npz")
    assert c.step_count == 3 and sc.last_step == 3
    _train(c, flat_c, sc, rng, 5)
    np.testing.assert_array_equal(to_numpy(flat_c.data), to_numpy(flat_a.data))
    for k, buf in a._buffers.items():
        np.testing.assert_array_equal(to_numpy(c._buffers[k].data), to_numpy(buf.data))
    assert c.param_groups == a.param_groups


def test_state_dict_round_trip_in_memory():
    flat = _arena(np)
    opt = optim.NAdam(_groups(flat))
    _grads(flat, np.random.default_rng(7))
    opt.step()
    sd = opt.state_dict()
    other = optim.NAdam(_groups(_arena(np)))
    other.load_state_dict(sd)
    assert other.step_count == 1
    assert other._groups[0].extra == opt._groups[0].extra
    np.testing.assert_array_equal(other.state["w1"]["exp_avg"], opt.state["w1"]["exp_avg"])


def _snapshot(opt, flat):
    return (
        to_numpy(flat.data).copy(),
        {k: to_numpy(b.data).copy() for k, b in opt._buffers.items()},
        opt.step_count,
        [dict(g) for g in opt.param_groups],
    )


def _assert_unchanged(opt, flat, snap):
    np.testing.assert_array_equal(to_numpy(flat.data), snap[0])
    for k, b in opt._buffers.items():
        np.testing.assert_array_equal(to_numpy(b.data), snap[1][k])
    assert opt.step_count == snap[2] and opt.param_groups == snap[3]


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (lambda: optim.AdamW(_arena(np)), "written by AdamW"),
        (lambda: optim.Adam(gpugd.FlatParams({**SHAPES, "w1": (7, 6)})), "tensor 'w1' is"),
        (lambda: optim.Adam(gpugd.FlatParams(SHAPES, np.float64)), "float64"),
        (lambda: optim.Adam(gpugd.FlatParams({"w1": (7, 5), "b9": (5,)})), "position 1"),
        (lambda: optim.Adam(_arena(np, np.float32), amsgrad=True), "needs states"),
    ],
)
def test_mismatched_checkpoint_is_refused_and_nothing_changes(tmp_path, other, match):
    src_flat = gpugd.FlatParams(SHAPES, np.float32)
    src = optim.AdamW(src_flat) if "AdamW" in match else optim.Adam(src_flat)
    _grads(src_flat, np.random.default_rng(8))
    src.step()
    path = src.save(tmp_path / "ck.npz")
    if "AdamW" in match:  # load an AdamW checkpoint into an Adam
        dst_flat = gpugd.FlatParams(SHAPES, np.float32)
        dst = optim.Adam(dst_flat)
    else:
        dst = other()
        dst_flat = dst._groups[0].flat
    dst_flat.data[:] = 0.5
    snap = _snapshot(dst, dst_flat)
    with pytest.raises(optim.CheckpointError, match=match):
        dst.load(path)
    _assert_unchanged(dst, dst_flat, snap)


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    flat = gpugd.FlatParams(SHAPES, np.float32)
    opt = optim.Adam(flat)
    snap = _snapshot(opt, flat)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    for name, match in (("junk.npz", "not a readable"), ("foreign.npz", "no 'meta'")):
        with pytest.raises(optim.CheckpointError, match=match):
            opt.load(tmp_path / name)
    _assert_unchanged(opt, flat, snap)


def test_schedule_mismatch_is_refused(tmp_path):
    flat = gpugd.FlatParams(SHAPES, np.float32)
    a = optim.SGD(flat, lr=0.1)
    schedules.StepLR(a, step_size=2)
    path = a.save(tmp_path / "ck.npz")
    b = optim.SGD(gpugd.FlatParams(SHAPES, np.float32), lr=0.1)
    with pytest.raises(optim.CheckpointError, match="attach the same schedule"):
        b.load(path)
    schedules.StepLR(b, step_size=3)
    with pytest.raises(optim.CheckpointError, match="configuration"):
        b.load(path)


def test_save_is_atomic(tmp_path, monkeypatch):
    flat = gpugd.FlatParams(SHAPES, np.float32)
    opt = optim.Adam(flat)
    path = opt.save(tmp_path / "ck.npz")
    good = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    _grads(flat, np.random.default_rng(9))
    opt.step()
    with pytest.raises(OSError, match="disk full"):
        opt.save(path)
    assert path.read_bytes() == good, "a failed save damaged the previous checkpoint"
    assert os.listdir(tmp_path) == ["ck.npz"], "a failed save left a temporary file"


def test_repr_shows_groups_hyperparameters_and_policy():
    flat = gpugd.FlatParams({"w": (3, 4), "b": (4,)})
    opt = optim.AdamW(
        [{"params": flat, "names": ["w"]}, {"params": flat, "names": ["b"], "weight_decay": 0.0}],
        lr=1e-3,
        max_grad_norm=1.0,
    )
    text = repr(opt)
    assert text.startswith("AdamW (\nParameter Group 0 (1 tensors, 12 elements, arena)")
    assert "    weight_decay: 0.01" in text and "    weight_decay: 0.0\n" in text
    assert "max_grad_norm=1.0" in text and text.endswith("\n)")


def test_zero_grad_refuses_set_to_none_and_zeroes():
    flat = gpugd.FlatParams({"w": (3, 4)})
    opt = optim.SGD(flat, lr=0.1)
    flat.grad_data[...] = 1.0
    with pytest.raises(ValueError, match="set_to_none"):
        opt.zero_grad(set_to_none=True)
    with pytest.raises(TypeError, match="set_to_none"):
        opt.zero_grad(set_to_none="no")
    assert (flat.grad_data == 1.0).all()  # refused: nothing zeroed
    opt.zero_grad(set_to_none=False)
    assert (flat.grad_data == 0.0).all()


def test_nadam_decoupled_flag_must_be_a_bool_named_as_given():
    flat = gpugd.FlatParams({"w": (3,)})
    with pytest.raises(TypeError, match="decoupled_weight_decay"):
        optim.NAdam(flat, decoupled_weight_decay="False")
