"""8-bit states beside half-precision parameters (gpugd.ops.optim8 with float16/bfloat16 p,
optional fp32 master weights, round-to-nearest-even or stochastic rounding) against
gpugd.reference8.step_mixed: every bit of p, the masters, the codes and the scales, on both
backends. The CPU runs every policy for Adam and two for the other rules (each is a Numba
specialization compiled on first use); the emulated CUDA path runs every kernel of
kernels/optim8.cu's half-precision policies (5 rules × 2 block sizes × 4 policies)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from conftest import to_numpy
from test_optim8 import CASES, MAPS, RULES, STEPS, _same_bits, start_states

from gpugd import quant8
from gpugd import reference8 as r8
from gpugd.backend import get_backend
from gpugd.ops.optim import rounding_key
from gpugd.ops.optim8 import State8, adam8bit_, lion8bit_, mix32, state8

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
# (parameter dtype, fp32 master weights, rounding)
POLICIES = [
    (F16, False, "nearest"),
    (F16, True, "nearest"),
    (BF16, False, "nearest"),
    (BF16, False, "stochastic"),
    (BF16, True, "nearest"),
    (BF16, True, "stochastic"),
]
PIDS = [f"{d.name}{'-master' if m else ''}-{r}" for d, m, r in POLICIES]
CPU_CASES = [
    (case, pol)
    for case in CASES
    for pol in POLICIES
    if case[1] == "adam" or pol in (POLICIES[1], POLICIES[3])
]
CUDA_CASES = [(case, pol) for case in CASES for pol in POLICIES]
SEED, STREAM = 11, 3


def _ids(cases):
    return [f"{c[1]}-{PIDS[POLICIES.index(p)]}" for c, p in cases]


def _run(xp, rule, hp, pol, n, block_size, seed):
    """STEPS steps of the op and of reference8.step_mixed from the same start."""
    pdt, master, rounding = pol
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(np.float32).astype(pdt)
    op, scalars, signs, takes_step = RULES[rule]
    starts = start_states(rng, n, signs, block_size)
    p = xp.asarray(p0.copy())
    mw = xp.asarray(p0.astype(np.float32)) if master else None
    st = [State8(xp.asarray(c.copy()), xp.asarray(a.copy())) for c, a in starts]
    pr, mr = p0.copy(), (p0.astype(np.float32) if master else None)
    rs = [(c, a, s) for (c, a), s in zip(starts, signs, strict=True)]
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(n).astype(np.float32).astype(pdt)
        gs = 0.75 if t == 2 else 1.0
        kw = dict(hp, step=t) if takes_step else dict(hp)
        seed_t = SEED * 100 + t  # a new stream of random bits every step
        op(p, xp.asarray(g), *st, **kw, grad_scale=gs, block_size=block_size, master=mw,
           rounding=rounding, seed=seed_t, stream=STREAM)  # fmt: skip
        key = None
        if rounding == "stochastic":
            key = int(r8.mix32(rounding_key("stochastic", seed_t), STREAM))
        sc = scalars(**hp, step=t)
        pr, mr, out = r8.step_mixed(
            rule, pr, g, rs, sc, gs, math.inf, block_size, MAPS, master=mr, key=key
        )
        rs = [(c, a, s) for (c, a), s in zip(out, signs, strict=True)]
    _same_bits(to_numpy(p).view(np.uint16), pr.view(np.uint16), "p")
    if master:
        _same_bits(mw, mr, "master")
    for k, ((c, a), (rc, ra, _)) in enumerate(zip(st, rs, strict=True)):
        _same_bits(c, rc, f"state {k} codes")
        _same_bits(a, ra, f"state {k} absmax")


@pytest.mark.parametrize(("case", "pol"), CPU_CASES, ids=_ids(CPU_CASES))
def test_cpu_every_bit_is_the_references(case, pol):
    rule, _, hp = case
    for n, bs in ((0, 2048), (1, 256), (4099, 256), (5000, 2048)):
        _run(np, rule, hp, pol, n, bs, seed=n + bs)


@pytest.mark.cuda
@pytest.mark.parametrize(("case", "pol"), CUDA_CASES, ids=_ids(CUDA_CASES))
def test_cuda_every_bit_is_the_references(case, pol):
    xp = get_backend("cuda").xp
    rule, _, hp = case
    for n, bs in ((0, 2048), (1, 256), (4099, 256), (5000, 2048)):
        _run(xp, rule, hp, pol, n, bs, seed=n + bs)


def test_the_stream_key_is_the_kernels_hash():
    from gpugd._cpu.optim import task_key

    rng = np.random.default_rng(0)
    for key in [0, 1, 0xFFFFFFFF, *rng.integers(0, 1 << 32, 20).tolist()]:
        idx = [0, 1, 7, 1 << 31, (1 << 32) + 5, (1 << 40) + 3, *rng.integers(0, 1 << 62, 5)]
        for i in idx:
            want = int(r8.mix32(key, i))
            assert mix32(key, int(i)) == want == int(task_key(np.uint32(key), np.int64(i)))


def test_streams_and_seeds_give_other_bits_and_repeat(xp):
    n = 8192

    def run(seed, stream):
        p = xp.asarray(np.full(n, 1.0 + 1 / 512, np.float32).astype(BF16))
        mw = xp.asarray(np.full(n, 1.0 + 1 / 512, np.float32))
        m = state8(n, True, xp=xp)
        g = xp.asarray(np.linspace(-1, 1, n).astype(np.float32).astype(BF16))
        lion8bit_(p, g, m, lr=1e-3, master=mw, rounding="stochastic", seed=seed, stream=stream)
        return to_numpy(p).view(np.uint16)

    a = run(1, 0)
    assert np.array_equal(a, run(1, 0))
    assert not np.array_equal(a, run(1, 1))
    assert not np.array_equal(a, run(2, 0))
    # p = round(1 + 1/512 − 1e-3·sign): both neighbours occur (not the nearest every time)
    assert 0.2 < np.mean(a == a.max()) < 0.8


def test_master_weights_keep_updates_below_half_an_ulp(xp):
    """bf16 p = 1 has an ulp of 2^-7: 100 Lion steps of 1e-4 move a master by 1e-2 and p
    with it; without masters every step rounds back to 1."""
    n = 4096
    g = xp.asarray(np.ones(n, np.float32).astype(BF16))
    for master in (True, False):
        p = xp.asarray(np.ones(n, np.float32).astype(BF16))
        mw = xp.asarray(np.ones(n, np.float32)) if master else None
        m = state8(n, True, xp=xp)
        for _ in range(100):
            lion8bit_(p, g, m, lr=1e-4, master=mw)
        got = to_numpy(p).astype(np.float32)
        if master:
            np.testing.assert_allclose(to_numpy(mw), 1 - 100 * 1e-4, rtol=1e-5)
            assert np.all(got == np.float32(np.float32(0.99).astype(BF16)))
        else:
            assert np.all(got == 1.0)


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        (dict(p=F16, master=True, master_dtype=np.float16), TypeError, "master: expected"),
        (dict(p=np.float32, master=True), TypeError, "master: fp32 master weights go with"),
        (dict(p=F16, rounding="stochastic"), ValueError, "rounding: stochastic rounding is for"),
        (dict(p=BF16, rounding="up"), ValueError, "rounding: expected one of"),
        (dict(p=BF16, stream=-1), ValueError, "stream: expected an integer"),
        (dict(p=BF16, g=F16), TypeError, "g"),
        (dict(p=np.float64), TypeError, "p: 8-bit states take float32, float16 or bfloat16"),
    ],
    ids=["master-dtype", "master-f32p", "sr-f16", "rounding", "stream", "g-dtype", "f64"],
)
def test_bad_policies_are_refused_and_nothing_written(change, exc, match):
    n = 5000
    p = np.ones(n, np.float32).astype(change["p"])
    g = np.ones(n, np.float32).astype(change.get("g", change["p"]))
    mw = np.ones(n, change.get("master_dtype", np.float32)) if change.get("master") else None
    m, v = state8(n, True), state8(n, False)
    kw = {k: change[k] for k in ("rounding", "stream") if k in change}
    keep = [a.copy() for a in (p, *m, *v)] + ([mw.copy()] if mw is not None else [])
    with pytest.raises(exc, match=match):
        adam8bit_(p, g, m, v, master=mw, **kw)
    now = [p, *m, *v] + ([mw] if mw is not None else [])
    for a, b in zip(now, keep, strict=True):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_traffic_of_the_half_precision_kernels():
    from gpugd import kernel_report as kr

    per_block = 2 * (2 + 8 / 2048)  # Adam: two states, a code and a scale each, r + w
    assert kr.bytes_per_element("gpugd_optim8_adam_b2048_bf16p") == 6 + per_block
    assert kr.bytes_per_element("gpugd_optim8_adam_b2048_bf16p_master") == 12 + per_block
    assert kr.bytes_per_element("gpugd_optim8_lion_b256_f16p") == 6 + 2 + 8 / 256
    assert quant8.BLOCK == 2048


# ---------------------------------------------------------------- the optimizer classes
# The class over SHAPES ("b" small: float32 states through gpugd.ops; "w", "v" in 8 bits)
# equals the hand-called ops with the class's rounding streams: the step's key is
# rounding_key(seed·2^32 + t); the small tensors' table takes streams 0 .. (here "b": 0), the
# 8-bit tensors the next ones in order ("w": 1, "v": 2).
CLASS_SHAPES = {"w": (70, 80), "b": (33,), "v": (4100,)}
CLASS_POLICIES = [(F16, False, "nearest"), (BF16, True, "stochastic"), (BF16, False, "stochastic")]


def _class_ref(cls_name):
    from gpugd import ops

    def adam(p, g, st, t, kw, small, stream):
        a = dict(lr=1e-2, weight_decay=0.01, step=t, **kw)
        if small:
            ops.adam_(p, g, st["exp_avg"], st["exp_avg_sq"], **a)
        else:
            adam8bit_(p, g, st["exp_avg"], st["exp_avg_sq"], **a, stream=stream)

    def lion(p, g, st, t, kw, small, stream):
        a = dict(lr=1e-3, weight_decay=0.1, **kw)
        if small:
            ops.lion_(p, g, st["exp_avg"], **a)
        else:
            lion8bit_(p, g, st["exp_avg"], **a, stream=stream)

    return {"Adam": adam, "Lion": lion}[cls_name]


@pytest.mark.parametrize("arena", [False, True], ids=["lists", "arena"])
@pytest.mark.parametrize(
    "pol", CLASS_POLICIES, ids=[PIDS[POLICIES.index(p)] for p in CLASS_POLICIES]
)
@pytest.mark.parametrize("cls_name", ["Adam", "Lion"])
def test_class_with_half_parameters_equals_the_ops(xp, cls_name, pol, arena):
    from gpugd import FlatParams
    from gpugd.optim import Adam, Lion

    pdt, master, rounding = pol
    cls = {"Adam": Adam, "Lion": Lion}[cls_name]
    hyper = (
        dict(lr=1e-2, weight_decay=0.01) if cls_name == "Adam" else dict(lr=1e-3, weight_decay=0.1)
    )
    fills = ["exp_avg", "exp_avg_sq"] if cls_name == "Adam" else ["exp_avg"]
    rng = np.random.default_rng(4)
    p0 = {n: rng.standard_normal(s).astype(np.float32).astype(pdt) for n, s in CLASS_SHAPES.items()}
    opt_kw = dict(state_bits=8, master_weights=master, rounding=rounding, seed=7, clip_value=2.0)
    if arena:
        flat = FlatParams(CLASS_SHAPES, dtype=pdt, xp=xp)
        for n in CLASS_SHAPES:
            flat[n][...] = xp.asarray(p0[n])
        ps, gs = {n: flat[n] for n in CLASS_SHAPES}, {n: flat.grads[n] for n in CLASS_SHAPES}
        opt = cls(flat, **hyper, **opt_kw)
    else:
        ps = {n: xp.asarray(p0[n].copy()) for n in CLASS_SHAPES}
        gs = {n: xp.zeros_like(p) for n, p in ps.items()}
        groups = [{"params": list(ps.values()), "grads": list(gs.values()), "names": list(ps)}]
        opt = cls(groups, **hyper, **opt_kw)
    ref = _class_ref(cls_name)
    rp = {n: xp.asarray(p0[n].copy()) for n in CLASS_SHAPES}
    rm = {n: xp.asarray(p0[n].astype(np.float32)) if master else None for n in CLASS_SHAPES}
    rs = {}
    for n, p in rp.items():
        if quant8.use_8bit(p.size):
            rs[n] = {s: state8(p.shape, quant8.SIGNED_STATES[s], xp=xp) for s in fills}
        else:
            rs[n] = {s: xp.zeros(p.shape, xp.float32) for s in fills}
    streams = {"w": 1, "b": 0, "v": 2}
    for t in range(1, 4):
        gt = {
            n: rng.standard_normal(s).astype(np.float32).astype(pdt)
            for n, s in CLASS_SHAPES.items()
        }
        for n in CLASS_SHAPES:
            gs[n][...] = xp.asarray(gt[n])
        opt.step()
        kw = dict(clip_value=2.0, master=None, rounding=rounding, seed=7 * (1 << 32) + t)
        for n in CLASS_SHAPES:
            small = not quant8.use_8bit(rp[n].size)
            ref(rp[n], xp.asarray(gt[n]), rs[n], t, {**kw, "master": rm[n]}, small, streams[n])
            _same_bits(to_numpy(ps[n]).view(np.uint16), to_numpy(rp[n]).view(np.uint16), f"{n} p")
            if master:
                _same_bits(opt.state[n]["master"], to_numpy(rm[n]), f"{n} master")
            for s in fills:
                if small:
                    _same_bits(opt.state[n][s], to_numpy(rs[n][s]), f"{n} {s}")
                else:
                    _same_bits(
                        opt.state[n][s + quant8.CODES], to_numpy(rs[n][s].codes), f"{n} {s} codes"
                    )
                    _same_bits(
                        opt.state[n][s + quant8.ABSMAX], to_numpy(rs[n][s].absmax), f"{n} {s}"
                    )
