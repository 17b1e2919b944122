"""8-bit blockwise states (gpugd.ops.optim8) against their specification, gpugd.reference8:
the quantize / dequantize / float32 rule / requantize algorithm in NumPy float32, which
must reproduce every code, every scale and p bit for bit on both backends (the emulated
CUDA path included). Then the maps themselves (built in float64 from the paper's
definition), and over 1,000 steps on a quadratic the 8-bit trajectory against the 32-bit
one (gpugd.ops.adam_ / sgd_): a stated distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ODD_SIZES, to_numpy

from gpugd import ops, quant8
from gpugd import reference8 as r8
from gpugd.ops.optim8 import (
    State8,
    adagrad8bit_,
    adam8bit_,
    lion8bit_,
    momentum8bit_,
    rmsprop8bit_,
    state8,
)

MAPS = {True: quant8.code_map(True), False: quant8.code_map(False)}
STEPS = 3


def adam_scalars(lr, betas, eps, weight_decay, decoupled, step):
    """The float64 scalars of the Adam kernel, written out here from their definitions."""
    b1, b2 = betas
    wd_c, dm = (0.0, 1 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    return (b1, 1 - b1, b2, 1 - b2, eps, wd_c, dm, lr / (1 - b1**step), 1 / math.sqrt(1 - b2**step))


def momentum_scalars(lr, momentum, dampening, weight_decay, nesterov, step):
    return (lr, weight_decay, momentum, 1 - dampening, nesterov, step == 1)


def lion_scalars(lr, betas, weight_decay, step):
    return (lr, betas[0], 1 - betas[0], betas[1], 1 - betas[1], 1 - lr * weight_decay)


def rmsprop_scalars(lr, alpha, eps, weight_decay, step):
    return (lr, weight_decay, alpha, 1 - alpha, eps)


def adagrad_scalars(lr, lr_decay, weight_decay, eps, step):
    return (lr / (1 + (step - 1) * lr_decay), weight_decay, eps)


# rule -> (op, the scalars of the reference's rule from the hyperparameters, state signs,
# whether the op takes step=)
RULES = {
    "adam": (adam8bit_, adam_scalars, (True, False), True),
    "momentum": (momentum8bit_, momentum_scalars, (True,), True),
    "lion": (lion8bit_, lion_scalars, (True,), False),
    "rmsprop": (rmsprop8bit_, rmsprop_scalars, (False,), False),
    "adagrad": (adagrad8bit_, adagrad_scalars, (False,), True),
}
HYPER = {
    "adam": dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, decoupled=False),
    "adamw": dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, decoupled=True),
    "momentum": dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2, nesterov=False),
    "nesterov": dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True),
    "lion": dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1),
    "rmsprop": dict(lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=1e-2),
    "adagrad": dict(lr=0.1, lr_decay=0.05, weight_decay=1e-2, eps=1e-10),
}
CASES = [
    (rule, cid, HYPER[cid])
    for rule, cids in {
        "adam": ("adam", "adamw"),
        "momentum": ("momentum", "nesterov"),
        "lion": ("lion",),
        "rmsprop": ("rmsprop",),
        "adagrad": ("adagrad",),
    }.items()
    for cid in cids
]


def _same_bits(a, b, what):
    a, b = to_numpy(a).reshape(-1), np.asarray(b).reshape(-1)
    assert a.dtype == b.dtype, what
    bits = {1: np.uint8, 2: np.uint16, 4: np.uint32}[a.itemsize]
    ua, ub = a.view(bits), b.view(bits)
    bad = np.flatnonzero(ua != ub)
    assert not bad.size, (
        f"{what}: {bad.size} of {a.size} differ, first at {bad[:5]}: {a[bad[:5]]} vs {b[bad[:5]]}"
    )


def start_states(rng, n, signs, block_size):
    """Nonzero start states (codes, absmax), quantized by the reference, so that the first
    dequantize matters; signs: each state's map."""
    return [
        r8.quantize(
            rng.standard_normal(n).astype(np.float32) ** (1 if s else 2) * 0.1, MAPS[s], block_size
        )
        for s in signs
    ]


def _run(xp, rule, hp, n, block_size, seed, clip=None):
    """STEPS steps of the op and of reference8 from the same start; compare every bit."""
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(np.float32)
    op, scalars, signs, takes_step = RULES[rule]
    starts = start_states(rng, n, signs, block_size)
    p = xp.asarray(p0.copy())
    st = [State8(xp.asarray(c.copy()), xp.asarray(a.copy())) for c, a in starts]
    pr, rs = p0.copy(), [(c, a, s) for (c, a), s in zip(starts, signs, strict=True)]
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(n).astype(np.float32)
        gs = 0.75 if t == 2 else 1.0
        kw = dict(hp, step=t) if takes_step else dict(hp)
        op(p, xp.asarray(g), *st, **kw, grad_scale=gs, clip_value=clip, block_size=block_size)
        sc = scalars(**hp, step=t)
        pr, out = r8.step(
            rule, pr, g, rs, sc, gs, math.inf if clip is None else clip, block_size, MAPS
        )
        rs = [(c, a, s) for (c, a), s in zip(out, signs, strict=True)]
    _same_bits(p, pr, "p")
    for k, ((c, a), (rc, ra, _)) in enumerate(zip(st, rs, strict=True)):
        _same_bits(c, rc, f"state {k} codes")
        _same_bits(a, ra, f"state {k} absmax")


@pytest.mark.parametrize("block_size", quant8.BLOCK_SIZES)
@pytest.mark.parametrize("n", ODD_SIZES)
@pytest.mark.parametrize(("rule", "cid", "hp"), CASES, ids=[c[1] for c in CASES])
def test_every_code_scale_and_parameter_is_the_references(xp, rule, cid, hp, n, block_size):
    _run(xp, rule, hp, n, block_size, seed=n + block_size)


@pytest.mark.parametrize(("rule", "cid", "hp"), CASES, ids=[c[1] for c in CASES])
def test_clip_value_fuses_in_bit_for_bit(xp, rule, cid, hp):
    _run(xp, rule, hp, 5000, 2048, seed=1, clip=0.5)


def test_the_maps_are_the_papers():
    """Signed: 0, 1 and ±(midpoints of 2^i intervals of [0.1, 1])·10^(i−6), i = 0..6;
    unsigned: 2^(i+1) intervals, no negatives. Sorted, distinct in float32."""
    for signed in (True, False):
        q = quant8.dynamic_map(signed)
        assert q.size == 256 and np.all(np.diff(q) > 0)
        assert np.all(np.diff(quant8.code_map(signed).astype(np.float64)) > 0)
        assert 0.0 in q and q[-1] == 1.0
        pos = q[(q > 0) & (q < 1)]
        assert pos.size == (127 if signed else 254)
        for i in range(7):
            level = pos[(pos >= 0.1 * 10.0 ** (i - 6)) & (pos < 10.0 ** (i - 6))]
            k = 2**i if signed else 2 ** (i + 1)
            edges = np.linspace(0.1, 1, k + 1) * 10.0 ** (i - 6)
            np.testing.assert_allclose(level, (edges[:-1] + edges[1:]) / 2, rtol=1e-15)
        if signed:
            np.testing.assert_array_equal(np.sort(-q[q < 0]), pos)
        else:
            assert q.min() == 0.0


def test_quantize_rounds_to_the_nearest_entry_and_round_trips_within_half_a_gap():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(10_000) * np.exp(rng.uniform(-8, 0, 10_000))).astype(np.float32)
    for signed, data in ((True, x), (False, np.abs(x))):
        codes, absmax = quant8.quantize(data, signed, 2048)
        back = quant8.dequantize(codes, absmax, signed, 2048)
        q = MAPS[signed].astype(np.float64)
        r = data.astype(np.float64) / np.repeat(absmax, 2048)[: data.size]
        # nearest: no other entry is closer (float64 check of the float32 choice)
        dist = np.abs(q[None, :] - r[:, None])
        chosen = dist[np.arange(r.size), codes]
        assert np.all(chosen <= dist.min(axis=1) + 1e-7)
        gap = np.abs(back - data) / np.repeat(absmax, 2048)[: data.size]
        # within half a gap of the top level ((1 − 0.1)/64 / 2 ≈ 0.00703), except that the
        # signed map has no −1: r = −1 (a block's most negative element) goes to −0.99297
        assert gap.max() <= 1 - 0.99296875 + 1e-7


def test_zero_and_small_tensor_policy():
    c, a = quant8.zeros(5000, signed=True)
    np.testing.assert_array_equal(quant8.dequantize(c, a, True), 0)
    c, a = quant8.zeros(5000, signed=False)
    np.testing.assert_array_equal(quant8.dequantize(c, a, False), 0)
    assert not quant8.use_8bit(4095) and quant8.use_8bit(4096)
    assert quant8.blocks(4097) == 3 and quant8.blocks(4097, 256) == 17


def test_skip_flag_writes_nothing(xp):
    n = 5000
    p = xp.asarray(np.ones(n, np.float32))
    m, v = state8(n, True, xp=xp), state8(n, False, xp=xp)
    before = [to_numpy(a).copy() for a in (p, *m, *v)]
    adam8bit_(p, xp.full(n, np.nan, np.float32), m, v, skip_if=xp.ones(1, np.int32))
    for a, b in zip((p, *m, *v), before, strict=True):
        np.testing.assert_array_equal(to_numpy(a), b)
    adam8bit_(p, xp.ones(n, np.float32), m, v, skip_if=xp.zeros(1, np.int32))
    assert not np.array_equal(to_numpy(p), before[0])


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        (dict(block_size=512), ValueError, "block_size: expected one of"),
        (dict(lr=-1.0), ValueError, "lr:"),
        (dict(eps=0.0), ValueError, "eps:"),
        (dict(p=np.zeros(5000, np.float64)), TypeError, "p: 8-bit states take float32"),
        (dict(m=(np.zeros(5000, np.int8), np.zeros(3, np.float32))), TypeError, "exp_avg.codes"),
        (dict(m=(np.zeros(5000, np.uint8), np.zeros(2, np.float32))), TypeError, "exp_avg.absmax"),
        (dict(m=np.zeros(5000, np.float32)), TypeError, "exp_avg: expected a State8"),
        (dict(g=np.zeros(4999, np.float32)), ValueError, "g:"),
        (dict(alias=True), ValueError, "shares memory"),
    ],
    ids=["block", "lr", "eps", "p-dtype", "codes-dtype", "absmax-shape", "not-state", "g", "alias"],
)
def test_bad_input_is_refused_and_nothing_written(change, exc, match):
    p = np.ones(5000, np.float32)
    g = change.get("g", np.ones(5000, np.float32))
    m, v = state8(5000, True), state8(5000, False)
    if change.get("alias"):
        v = State8(m.codes, v.absmax)
    m = change.get("m", m)
    p = change.get("p", p)
    kw = {k: x for k, x in change.items() if k in ("block_size", "lr", "eps")}
    keep = [a.copy() for a in (p, *v)]
    with pytest.raises(exc, match=match):
        adam8bit_(p, g, m, v, **kw)
    for a, b in zip((p, *v), keep, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- 1,000 steps on a quadratic
# f(p) = ½ Σ h_i (p_i − c_i)², h log-uniform in [0.1, 10], noisy gradients (σ = 0.1): the
# 8-bit and the 32-bit trajectories from the same start with the same noise. Stated
# distances (QUAD_BOUNDS), as fractions of ‖p0 − c‖: the largest ‖p8 − p32‖ over the 1,000
# steps, and the final distance of each from the optimum (the noise keeps both off it by the
# step size: ~3% for Adam's lr = 1e-2). Seen (seed 0): Adam 0.033 apart at most, final 0.044
# (8-bit) vs 0.030 (32-bit); momentum 0.013 apart at most, final 0.032 vs 0.032.
QUAD_N, QUAD_STEPS = 1 << 14, 1000
QUAD_BOUNDS = {"adam": (0.045, 0.06), "momentum": (0.02, 0.04)}  # (apart, from the optimum)


def _quadratic(rule):
    rng = np.random.default_rng(0)
    h = np.exp(rng.uniform(np.log(0.1), np.log(10), QUAD_N)).astype(np.float32)
    c = rng.standard_normal(QUAD_N).astype(np.float32)
    p0 = (c + rng.standard_normal(QUAD_N)).astype(np.float32)
    p8, p32 = p0.copy(), p0.copy()
    s8 = [state8(QUAD_N, True)] + ([state8(QUAD_N, False)] if rule == "adam" else [])
    s32 = [np.zeros(QUAD_N, np.float32) for _ in s8]
    scale, apart = float(np.linalg.norm(p0 - c)), 0.0
    for t in range(1, QUAD_STEPS + 1):
        noise = (0.1 * rng.standard_normal(QUAD_N)).astype(np.float32)
        g8, g32 = h * (p8 - c) + noise, h * (p32 - c) + noise
        if rule == "adam":
            adam8bit_(p8, g8, *s8, lr=1e-2, step=t)
            ops.adam_(p32, g32, *s32, lr=1e-2, step=t)
        else:
            momentum8bit_(p8, g8, *s8, lr=0.01, momentum=0.9, step=t)
            ops.sgd_(p32, g32, *s32, lr=0.01, momentum=0.9, step=t)
        apart = max(apart, float(np.linalg.norm(p8 - p32)) / scale)
    return apart, np.linalg.norm(p8 - c) / scale, np.linalg.norm(p32 - c) / scale


@pytest.mark.parametrize("rule", ["adam", "momentum"])
def test_thousand_steps_on_a_quadratic_stay_near_the_32bit_trajectory(rule):
    apart, err8, err32 = _quadratic(rule)
    bound_apart, bound_opt = QUAD_BOUNDS[rule]
    assert apart <= bound_apart, f"{rule}: 8-bit vs 32-bit up to {apart:.4f} of ‖p0 − c‖"
    assert err8 <= bound_opt and err32 <= bound_opt, (err8, err32)
