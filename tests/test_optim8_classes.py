"""The optimizer classes with 8-bit states (``state_bits=8``) against the op-level sequence:
the same ``gpugd.ops.optim8`` ops called by hand on tensors of at least ``quant8.MIN_8BIT``
elements and the float32 ops (``gpugd.ops``) on smaller ones, bit for bit over several
steps on both backends (the emulated CUDA path included); the refusals; checkpoints (codes
and scales round trip bit for bit, 32 <-> 8-bit conversion); and 1,000 steps of the class's
8-bit Adam on a quadratic against its 32-bit Adam (the bound of tests/test_optim8.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy
from test_optim8 import QUAD_BOUNDS, QUAD_N, QUAD_STEPS

from gpugd import FlatParams, ops, quant8
from gpugd.monitor import GradientMonitor
from gpugd.ops import optim8 as o8
from gpugd.optim import (
    SGD,
    Adagrad,
    Adam,
    AdamW,
    CheckpointError,
    Lion,
    NAdam,
    RMSprop,
    convert_state_dict,
)

SHAPES = {"w": (70, 80), "b": (33,), "v": (4100,)}  # w and v in 8 bits, b (33) in float32
STEPS = 4


def _adam_ref(decoupled):
    def ref(p, g, st, h, t, kw, small):
        m, v = st["exp_avg"], st["exp_avg_sq"]
        a = dict(lr=h["lr"], weight_decay=h["weight_decay"], decoupled=decoupled, step=t, **kw)
        (ops.adam_ if small else o8.adam8bit_)(p, g, m, v, **a)

    return ref


def _sgd_ref(p, g, st, h, t, kw, small):
    a = dict(lr=h["lr"], momentum=h["momentum"], nesterov=h["nesterov"], step=t, **kw)
    (ops.sgd_ if small else o8.momentum8bit_)(p, g, st["momentum_buffer"], **a)


def _rmsprop_ref(p, g, st, h, t, kw, small):
    (ops.rmsprop_ if small else o8.rmsprop8bit_)(p, g, st["square_avg"], lr=h["lr"], **kw)


def _adagrad_ref(p, g, st, h, t, kw, small):
    a = dict(lr=h["lr"], lr_decay=h["lr_decay"], step=t, **kw)
    (ops.adagrad_ if small else o8.adagrad8bit_)(p, g, st["sum"], **a)


def _lion_ref(p, g, st, h, t, kw, small):
    a = dict(lr=h["lr"], weight_decay=h["weight_decay"], **kw)
    (ops.lion_ if small else o8.lion8bit_)(p, g, st["exp_avg"], **a)


ADAM_FILLS = {"exp_avg": 0.0, "exp_avg_sq": 0.0}

# class, hyperparameters, the op-level step, states with their initial value
CASES = {
    "Adam": (Adam, dict(lr=1e-2, weight_decay=0.01), _adam_ref(False), ADAM_FILLS),
    "AdamW": (AdamW, dict(lr=1e-2, weight_decay=0.01), _adam_ref(True), ADAM_FILLS),
    "SGD": (SGD, dict(lr=0.05, momentum=0.9, nesterov=True), _sgd_ref, {"momentum_buffer": 0.0}),
    "RMSprop": (RMSprop, dict(lr=1e-3), _rmsprop_ref, {"square_avg": 0.0}),
    "Adagrad": (
        Adagrad,
        dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
        _adagrad_ref,
        {"sum": 0.1},
    ),
    "Lion": (Lion, dict(lr=1e-3, weight_decay=0.1), _lion_ref, {"exp_avg": 0.0}),
}  # fmt: skip


def _inputs(xp, seed=0):
    rng = np.random.default_rng(seed)
    p0 = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    grads = [
        {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
        for _ in range(STEPS)
    ]
    return p0, grads


def _ref_states(xp, p, fills, block_size):
    """The op-level states: ``state8`` / ``quant8.quantize`` of the fill, or float32."""
    st = {}
    for s, fill in fills.items():
        signed = quant8.SIGNED_STATES[s]
        if quant8.use_8bit(p.size):
            c, a = quant8.quantize(np.full(p.size, fill, np.float32), signed, block_size)
            st[s] = o8.State8(xp.asarray(c.reshape(p.shape)), xp.asarray(a))
        else:
            st[s] = xp.full(p.shape, fill, xp.float32)
    return st


def _build(cls, hyper, xp, arena, p0, **opt):
    """An 8-bit-state optimizer over SHAPES (a FlatParams arena or lists); its parameters
    and gradients by name."""
    if arena:
        flat = FlatParams(SHAPES, xp=xp)
        for n in SHAPES:
            flat[n][...] = xp.asarray(p0[n])
        ps, gs = {n: flat[n] for n in SHAPES}, {n: flat.grads[n] for n in SHAPES}
        return cls(flat, **hyper, state_bits=8, **opt), ps, gs
    ps = {n: xp.array(p0[n], copy=True) for n in SHAPES}
    gs = {n: xp.zeros_like(p) for n, p in ps.items()}
    return _opt(cls, ps, gs, **hyper, state_bits=8, **opt), ps, gs


def _opt(cls, ps, gs, **kw):
    return cls([{"params": list(ps.values()), "grads": list(gs.values()), "names": list(ps)}], **kw)


@pytest.mark.parametrize("arena", [False, True], ids=["lists", "arena"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_class_equals_the_op_level_sequence_bitwise(xp, case, arena):
    """max_grad_norm (coefficient folded into grad_scale) and clip_value on; the class's
    states and parameters equal the hand-called ops' bit for bit after every step."""
    cls, hyper, ref, fills = CASES[case]
    p0, grads = _inputs(xp)
    opt, ps, gs = _build(cls, hyper, xp, arena, p0, max_grad_norm=30.0, clip_value=2.0)
    rp = {n: xp.array(p0[n], copy=True) for n in SHAPES}
    rs = {n: _ref_states(xp, rp[n], fills, quant8.BLOCK) for n in SHAPES}
    for t, gt in enumerate(grads, 1):
        for n in SHAPES:
            gs[n][...] = xp.asarray(gt[n])
        opt.step()
        rep = opt.last_report
        norm = np.sqrt(sum(float(np.sum(gt[n].astype(np.float64) ** 2)) for n in SHAPES))
        assert rep.grad_norm == pytest.approx(norm, rel=1e-6)
        assert rep.clip_coef == pytest.approx(min(1.0, 30.0 / (norm + 1e-6)), rel=1e-6)
        assert rep.clip_coef < 1  # the coefficient is really in use
        kw = dict(grad_scale=rep.clip_coef, clip_value=2.0)
        for n in SHAPES:
            small = not quant8.use_8bit(rp[n].size)
            ref(rp[n], xp.asarray(gt[n]), rs[n], hyper, t, kw, small)
            np.testing.assert_array_equal(to_numpy(ps[n]), to_numpy(rp[n]), err_msg=f"{n} t={t}")
            for s, want in rs[n].items():
                if small:
                    got = opt.state[n][s]
                    np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
                else:
                    for part, suffix in zip(want, (quant8.CODES, quant8.ABSMAX), strict=True):
                        got = opt.state[n][s + suffix]
                        np.testing.assert_array_equal(to_numpy(got), to_numpy(part))
    assert opt.step_count == STEPS


def test_small_tensors_keep_float32_states_and_large_ones_codes():
    opt, _, _ = _build(Adam, {}, np, False, _inputs(np)[0])
    assert set(opt.state["b"]) == {"exp_avg", "exp_avg_sq"}
    assert opt.state["b"]["exp_avg"].dtype == np.float32
    for n in ("w", "v"):
        st = opt.state[n]
        assert set(st) == {
            f"{s}{x}" for s in ("exp_avg", "exp_avg_sq") for x in (".codes", ".absmax")
        }
        assert st["exp_avg.codes"].dtype == np.uint8 and st["exp_avg.codes"].shape == SHAPES[n]
        assert st["exp_avg.absmax"].shape == (quant8.blocks(np.prod(SHAPES[n])),)
    assert opt._device_decides is False  # the host decides: the 8-bit ops take no dev_scale


def test_adagrad_initial_accumulator_is_quantized():
    opt, _, _ = _build(Adagrad, dict(initial_accumulator_value=0.3), np, False, _inputs(np)[0])
    c, a = quant8.quantize(np.full(5600, 0.3, np.float32), False)
    np.testing.assert_array_equal(opt.state["w"]["sum.codes"].reshape(-1), c)
    np.testing.assert_array_equal(opt.state["w"]["sum.absmax"], a)
    assert np.all(opt.state["b"]["sum"] == np.float32(0.3))


def test_skip_if_changes_nothing():
    p0, grads = _inputs(np)
    opt, ps, gs = _build(Adam, {}, np, False, p0)
    for n in SHAPES:
        gs[n][...] = grads[0][n]
    before = {n: {k: a.copy() for k, a in st.items()} for n, st in opt.state.items()}
    opt.step(skip_if=np.ones(1, np.int32))
    assert opt.step_count == 0 and opt.last_report.skipped
    for n in SHAPES:
        np.testing.assert_array_equal(ps[n], p0[n])
        for k, a in before[n].items():
            np.testing.assert_array_equal(opt.state[n][k], a)


def _lists():
    p0 = _inputs(np)[0]
    return [p0[n] for n in SHAPES], [np.zeros_like(p0[n]) for n in SHAPES]


@pytest.mark.parametrize(
    "cls, kw, match",
    [
        (Adam, dict(amsgrad=True), "state_bits=8: amsgrad"),
        (NAdam, {}, "state_bits=8: NAdam has no 8-bit"),
        (RMSprop, dict(centered=True), "state_bits=8: RMSprop"),
        (RMSprop, dict(momentum=0.9), "state_bits=8: RMSprop"),
        (Adam, dict(state_bits=4), "state_bits: expected one of"),
        (Adam, dict(block_size=1024), "block_size: expected one of"),
        (Adam, dict(state_dtype="bfloat16"), "state_bits=8: the small"),
    ],
)
def test_unsupported_configurations_are_refused(cls, kw, match):
    ps, gs = _lists()
    with pytest.raises(ValueError, match=match):
        cls(ps, grads=gs, **{"state_bits": 8, **kw})


def test_float64_parameters_are_refused():
    ps, gs = [np.zeros(5000, np.float64)], [np.zeros(5000, np.float64)]
    with pytest.raises(ValueError, match="state_bits=8: 8-bit states are for float32, float16"):
        Adam(ps, grads=gs, state_bits=8)


def test_half_parameters_with_masters_save_and_load_bit_identically(tmp_path):
    """bf16 parameters, fp32 master weights, stochastic rounding, 8-bit states: the
    checkpoint holds codes, scales and masters; a restored optimizer continues bit for bit."""
    ml = pytest.importorskip("ml_dtypes")
    p0, grads = _inputs(np)
    half = {n: p.astype(ml.bfloat16) for n, p in p0.items()}
    hg = [{n: g.astype(ml.bfloat16) for n, g in gt.items()} for gt in grads]
    kw = dict(master_weights=True, rounding="stochastic", seed=3)
    a, pa, ga = _build(Adam, dict(lr=1e-2), np, False, half, **kw)
    _run(a, ga, hg[:2])
    assert a.state["w"]["master"].dtype == np.float32 and "exp_avg.codes" in a.state["w"]
    path = a.save(tmp_path / "ck.npz")
    b, pb, gb = _build(Adam, dict(lr=1e-2), np, False, {n: p * 0 for n, p in half.items()}, **kw)
    b.load(path)
    for n in SHAPES:
        np.testing.assert_array_equal(pb[n].view(np.uint16), pa[n].view(np.uint16))
        for k, x in a.state[n].items():
            np.testing.assert_array_equal(b.state[n][k], x)
    _run(a, ga, hg[2:])
    _run(b, gb, hg[2:])
    for n in SHAPES:
        np.testing.assert_array_equal(pa[n].view(np.uint16), pb[n].view(np.uint16))
        for k, x in a.state[n].items():
            np.testing.assert_array_equal(b.state[n][k], x)


@pytest.mark.parametrize("every", [1, 2])
def test_monitor_records_8bit_steps_without_changing_them(xp, every):
    """A GradientMonitor on an 8-bit optimizer records, on its steps, the gradient norms and
    the parameter and update norms of every tensor (the 8-bit ones and the small float32
    one), computed here in float64 from copies; the updates are the unmonitored optimizer's
    bit for bit, and the steps it does not record run as without it."""
    p0, grads = _inputs(xp)
    opt, ps, gs = _build(Adam, dict(lr=1e-2), xp, False, p0)
    plain, ps2, gs2 = _build(Adam, dict(lr=1e-2), xp, False, p0)
    mon = GradientMonitor(opt, every=every)
    want = {m: [] for m in ("grad_norm", "param_norm", "update_ratio")}
    for t, gt in enumerate(grads, start=1):
        for n in SHAPES:
            gs[n][...] = xp.asarray(gt[n])
            gs2[n][...] = xp.asarray(gt[n])
        before = {n: to_numpy(ps[n]).astype(np.float64) for n in SHAPES}
        opt.step()
        plain.step()
        for n in SHAPES:
            np.testing.assert_array_equal(to_numpy(ps[n]), to_numpy(ps2[n]))
        if (t - 1) % every == 0:  # every k-th step from step 1
            after = {n: to_numpy(ps[n]).astype(np.float64) for n in SHAPES}
            want["grad_norm"].append([np.linalg.norm(gt[n].astype(np.float64)) for n in SHAPES])
            pn = [np.linalg.norm(after[n]) for n in SHAPES]
            dn = [np.linalg.norm(after[n] - before[n]) for n in SHAPES]
            want["param_norm"].append(pn)
            want["update_ratio"].append([d / q for d, q in zip(dn, pn, strict=True)])
    assert mon.names == list(SHAPES) and mon.steps == list(range(1, STEPS + 1, every))
    for m, rows in want.items():
        got = np.array([np.asarray(r, np.float64) for r in mon.history[m]])
        np.testing.assert_allclose(got, np.array(rows), rtol=1e-6, err_msg=m)
        assert np.all(got > 0), m


def _run(opt, gs, grads):
    for gt in grads:
        for n in SHAPES:
            gs[n][...] = gt[n]
        opt.step()


@pytest.mark.parametrize("block_size", [256, 2048])
def test_save_load_continues_bit_identically(tmp_path, block_size):
    p0, grads = _inputs(np)
    a, pa, ga = _build(Adam, dict(lr=1e-2), np, False, p0, block_size=block_size)
    _run(a, ga, grads[:2])
    path = a.save(tmp_path / "ck.npz")
    b, pb, gb = _build(Adam, dict(lr=1e-2), np, False, _inputs(np, 1)[0], block_size=block_size)
    b.load(path)
    for n in SHAPES:
        for k, x in a.state[n].items():
            np.testing.assert_array_equal(b.state[n][k], x)
            assert b.state[n][k].dtype == x.dtype
    _run(a, ga, grads[2:])
    _run(b, gb, grads[2:])
    for n in SHAPES:
        np.testing.assert_array_equal(pa[n], pb[n])
        for k, x in a.state[n].items():
            np.testing.assert_array_equal(b.state[n][k], x)


def _bad(sd, n, k, fn):
    sd = {**sd, "state": {m: dict(st) for m, st in sd["state"].items()}}
    sd["state"][n][k] = fn(sd["state"][n][k].copy())
    return sd


def _neg(a):
    a[0] = -1
    return a


def _nan(a):
    a[0] = np.nan
    return a


@pytest.mark.parametrize(
    "k, fn, match",
    [
        ("exp_avg.absmax", _neg, "negative"),
        ("exp_avg.absmax", _nan, "non-finite"),
        ("exp_avg.codes", lambda a: a.astype(np.int8), "expected uint8"),
        ("exp_avg.absmax", lambda a: a[:-1], "expected float32"),
    ],
)
def test_bad_8bit_states_are_refused_before_any_write(k, fn, match):
    p0, grads = _inputs(np)
    a, _, ga = _build(Adam, {}, np, False, p0)
    _run(a, ga, grads[:1])
    sd = _bad(a.state_dict(), "w", k, fn)
    before = {kk: x.copy() for kk, x in a.state["w"].items()}
    with pytest.raises(CheckpointError, match=match):
        a.load_state_dict(sd)
    for kk, x in before.items():
        np.testing.assert_array_equal(a.state["w"][kk], x)


def test_32_and_8_bit_states_convert():
    """A 32-bit checkpoint loads into an 8-bit optimizer with convert_states=True (codes and
    absmax = quant8.quantize of the float32 states) and back (dequantize); without the
    option the mismatch is refused, naming it."""
    p0, grads = _inputs(np)
    ps = {n: p0[n].copy() for n in SHAPES}
    gs = {n: np.zeros_like(p0[n]) for n in SHAPES}
    a32 = _opt(Adam, ps, gs, lr=1e-2)
    _run(a32, gs, grads[:2])
    sd32 = a32.state_dict()
    b8, _, _ = _build(Adam, dict(lr=1e-2), np, False, p0)
    with pytest.raises(CheckpointError, match="convert_states=True"):
        b8.load_state_dict(sd32)
    b8.load_state_dict(sd32, convert_states=True)
    for n in ("w", "v"):
        for s, signed in (("exp_avg", True), ("exp_avg_sq", False)):
            c, am = quant8.quantize(sd32["state"][n][s].reshape(-1), signed)
            np.testing.assert_array_equal(b8.state[n][s + ".codes"].reshape(-1), c)
            np.testing.assert_array_equal(b8.state[n][s + ".absmax"], am)
    np.testing.assert_array_equal(b8.state["b"]["exp_avg"], sd32["state"]["b"]["exp_avg"])
    assert b8.step_count == 2
    # 8 -> 32: dequantized values, then both continue (a 32-bit optimizer from them)
    c32 = _opt(Adam, {n: p0[n].copy() for n in SHAPES}, gs, lr=1e-2)
    c32.load_state_dict(b8.state_dict(), convert_states=True)
    st = b8.state["w"]
    want = quant8.dequantize(st["exp_avg.codes"].reshape(-1), st["exp_avg.absmax"], True)
    np.testing.assert_array_equal(c32.state["w"]["exp_avg"].reshape(-1), want)
    sd = convert_state_dict(b8.state_dict(), 8, 256)  # another block size: through float32
    assert sd["block_size"] == 256 and sd["state"]["w"]["exp_avg.absmax"].shape == (22,)


def test_convert_states_through_files(tmp_path):
    p0, grads = _inputs(np)
    a8, _, ga = _build(Adam, dict(lr=1e-2), np, False, p0)
    _run(a8, ga, grads[:1])
    path = a8.save(tmp_path / "ck8.npz")
    gs = {n: np.zeros_like(p0[n]) for n in SHAPES}
    b32 = _opt(Adam, {n: np.zeros_like(p0[n]) for n in SHAPES}, gs, lr=1e-2)
    with pytest.raises(CheckpointError, match=r"holds 8-bit .*convert_states=True"):
        b32.load(path)
    b32.load(path, convert_states=True)
    assert b32.step_count == 1
    np.testing.assert_array_equal(b32._groups[0].params[0], a8._groups[0].params[0])


def test_thousand_steps_of_the_8bit_class_stay_near_its_32bit_trajectory():
    """The quadratic of tests/test_optim8.py, with Adam (lr 1e-2) as a class, 8 vs 32 bits:
    the same bound (QUAD_BOUNDS["adam"])."""
    rng = np.random.default_rng(0)
    h = np.exp(rng.uniform(np.log(0.1), np.log(10), QUAD_N)).astype(np.float32)
    c = rng.standard_normal(QUAD_N).astype(np.float32)
    p0 = (c + rng.standard_normal(QUAD_N)).astype(np.float32)
    p8, p32 = p0.copy(), p0.copy()
    g8, g32 = np.zeros_like(p0), np.zeros_like(p0)
    o8_ = Adam([p8], grads=[g8], lr=1e-2, state_bits=8)
    o32 = Adam([p32], grads=[g32], lr=1e-2)
    assert "0.codes" not in o8_.state["0"] and "exp_avg.codes" in o8_.state["0"]
    scale, apart = float(np.linalg.norm(p0 - c)), 0.0
    for _ in range(QUAD_STEPS):
        noise = (0.1 * rng.standard_normal(QUAD_N)).astype(np.float32)
        g8[...] = h * (p8 - c) + noise
        g32[...] = h * (p32 - c) + noise
        o8_.step()
        o32.step()
        apart = max(apart, float(np.linalg.norm(p8 - p32)) / scale)
    bound_apart, bound_opt = QUAD_BOUNDS["adam"]
    assert 0 < apart <= bound_apart, apart
    assert np.linalg.norm(p8 - c) / scale <= bound_opt


def test_repr_names_the_8bit_states():
    ps = {"w": np.zeros(5000, np.float32)}
    gs = {"w": np.zeros(5000, np.float32)}
    r8 = repr(_opt(Adam, ps, gs, state_bits=8, block_size=256))
    assert "states 8-bit (block 256; float32 under 4,096 elements), state_bits=8" in r8
    r32 = repr(_opt(Adam, ps, gs))
    assert "states float32, state_bits=32" in r32 and "8-bit" not in r32


@pytest.mark.parametrize("bad", ["w", "b"])  # a non-finite gradient in an 8-bit / fp32 tensor
def test_nonfinite_skip_changes_nothing(xp, bad):
    p0, grads = _inputs(xp)
    opt, ps, gs = _build(Adam, {}, xp, False, p0, nonfinite="skip", max_grad_norm=1e3)
    for n in SHAPES:
        gs[n][...] = xp.asarray(grads[0][n])
    gs[bad].reshape(-1)[3] = xp.inf
    before = {n: {k: to_numpy(a).copy() for k, a in st.items()} for n, st in opt.state.items()}
    opt.step()
    assert opt.step_count == 0 and opt.last_report.skipped
    for n in SHAPES:
        np.testing.assert_array_equal(to_numpy(ps[n]), p0[n])
        for k, a in before[n].items():
            np.testing.assert_array_equal(to_numpy(opt.state[n][k]), a)
    gs[bad].reshape(-1)[3] = 0.0  # finite again: the step runs
    opt.step()
    assert opt.step_count == 1 and not opt.last_report.skipped
    assert not np.array_equal(to_numpy(ps["w"]), p0["w"])
