"""Mixed-precision updates: float16/bfloat16 parameters and gradients, float32 or bfloat16
states, optional fp32 master weights, round-to-nearest-even or stochastic rounding.

Reference: the float64 rule of ``gpugd.reference`` fed the same (half-precision) gradients,
with the storage emulated: after every step the reference rounds what the kernel stores in
half precision (p without master weights; bfloat16 states) to that format (ml_dtypes /
NumPy casts: IEEE round-to-nearest-even). Tolerances, per policy:
  * master weights, fp32 states: the master trajectory is an fp32 trajectory, so the fp32
    table's 1e-5 relative applies; p must equal round(master) bit for bit.
  * no master: the kernel and the emulation round the same values, computed in fp32 and
    fp64; they fall on different sides of a rounding boundary only when the value is
    within fp32 error of it, so a step flips a rounding of few elements by one ulp, and a
    flipped element can flip again in a later step: every element within STEPS ulps of
    the format, almost all (≥ 98%) equal.
  * bfloat16 states: as above, a state one bf16 ulp off moves p by a fraction of an ulp,
    which can flip p's rounding: within STEPS ulps, ≥ 95% equal.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from conftest import to_numpy
from test_optim import ALL, CASES_STATES, IDS, INIT, RTOL, run_op, run_ref

from gpugd import ops
from gpugd import reference as ref

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
ULP_BITS = {F16: 10, BF16: 7}  # explicit mantissa bits

# (param dtype, state dtype, master weights)
POLICIES = [
    (BF16, F32, True),
    (BF16, F32, False),
    (F16, F32, True),
    (F16, F32, False),
    (BF16, BF16, False),
]
POLICY_IDS = [f"{p.name}p-{s.name}s" + ("-master" if m else "") for p, s, m in POLICIES]
# Every policy for Adam; two for the other rules (each policy is a Numba specialization
# compiled on first use, so CI time grows with this list).
CASES = [
    (case, pol)
    for case in ALL
    for pol in POLICIES
    if case[0] == "adam" or pol in ((BF16, F32, True), (F16, F32, False))
]
CASE_IDS = [f"{IDS[ALL.index(case)]}-{POLICY_IDS[POLICIES.index(pol)]}" for case, pol in CASES]


def rounded(x, dtype) -> np.ndarray:
    """float64 values of x stored in ``dtype`` (round-to-nearest-even)."""
    return np.asarray(x, np.float64).astype(dtype).astype(np.float64)


def ulp(x, dtype) -> np.ndarray:
    """One unit in the last place of ``dtype`` at |x| (normal range)."""
    tiny = float(np.finfo(F16).tiny) if dtype == F16 else 1.2e-38
    e = np.floor(np.log2(np.maximum(np.abs(x), tiny)))
    return np.exp2(e - ULP_BITS[dtype])


STEPS = 4


def _trajectory(xp, rule, hp, names, pdt, sdt, master, n=1023, steps=STEPS, seed=3):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(pdt)
    p = xp.asarray(p0)
    states = {k: xp.asarray(np.full(n, INIT.get(k, 0.0), dtype=sdt)) for k in names}
    m = xp.asarray(p0.astype(F32)) if master else None
    pr = p0.astype(np.float64)
    rstate = {k: np.full(n, INIT.get(k, 0.0)) for k in names}
    b1, psi = hp.get("betas", (0.9, 0.999))[0], hp.get("momentum_decay", 4e-3)
    mu_product = 1.0
    for t in range(1, steps + 1):
        g0 = (rng.standard_normal(n) * 0.5).astype(pdt)
        run_op(rule, xp, p, xp.asarray(g0), states, hp, t, mu_product, master=m)
        pr = run_ref(rule, pr, g0.astype(np.float64), rstate, hp, t, mu_product, 1.0)
        if not master:
            pr = rounded(pr, pdt)
        if sdt == BF16:
            for k in rstate:
                rstate[k] = rounded(rstate[k], BF16)
        mu_product *= ref.nadam_mu(t, b1, psi)
    return p, m, states, pr, rstate


@pytest.mark.parametrize(("case", "policy"), CASES, ids=CASE_IDS)
def test_trajectory_against_float64_with_emulated_storage(xp, case, policy):
    rule, _, hp, names = case
    pdt, sdt, master = policy
    p, m, states, pr, _ = _trajectory(xp, rule, hp, names, pdt, sdt, master)
    got = to_numpy(p)
    assert got.dtype == pdt
    for k, s in states.items():
        assert s.dtype == sdt, k
    if master:
        mm = to_numpy(m).astype(np.float64)
        err = np.linalg.norm(mm - pr) / np.linalg.norm(pr)
        assert err <= RTOL[np.float32], f"master: relative error {err:.2e}"
        # p is exactly round(master): the same rounding, in the same pass
        assert np.array_equal(got.view(np.uint16), to_numpy(m).astype(pdt).view(np.uint16))
        return
    diff = np.abs(got.astype(np.float64) - pr)
    ulps = diff / ulp(pr, pdt)
    assert np.all(ulps <= STEPS * 1.0001), f"max diff {np.max(ulps)} ulps"
    equal = np.mean(diff == 0)
    assert equal >= (0.95 if sdt == BF16 else 0.98), f"only {equal:.3%} equal to the emulation"


def test_master_weights_keep_updates_below_half_an_ulp():
    """bf16 p = 1 (ulp 2^-7): an SGD step of 2^-10 is lost without master weights, kept with
    them, and after 8 such steps (2^-7) p has moved by one ulp."""
    n = 64
    g = np.full(n, 1.0, BF16)
    p_plain = np.ones(n, BF16)
    p_m = np.ones(n, BF16)
    master = np.ones(n, F32)
    for _ in range(8):
        ops.sgd_(p_plain, g, lr=2.0**-10)
        ops.sgd_(p_m, g, lr=2.0**-10, master=master)
    assert np.all(p_plain.astype(np.float64) == 1.0)
    np.testing.assert_array_equal(master, np.float32(1 - 8 * 2.0**-10))
    np.testing.assert_array_equal(p_m.astype(np.float64), 1 - 2.0**-7)


def test_stochastic_rounding_is_unbiased_and_reproducible():
    """From p = 1 an SGD step of −2^-9 (a quarter of bf16's ulp above 1): nearest rounding
    never moves; stochastic rounding moves a fraction 1/4 (5σ binomial bounds) and the mean
    follows the exact value; the same seed gives the same bits, another seed others."""
    n = 1 << 16
    g = np.full(n, -1.0, BF16)
    near = np.ones(n, BF16)
    ops.sgd_(near, g, lr=2.0**-9)
    assert np.all(near.astype(np.float64) == 1.0)
    runs = {}
    for seed in (7, 7, 8):
        p = np.ones(n, BF16)
        ops.sgd_(p, g, lr=2.0**-9, rounding="stochastic", seed=seed)
        runs.setdefault(seed, []).append(p.view(np.uint16).copy())
    p = runs[7][0].view(BF16).astype(np.float64)
    up = np.mean(p > 1)
    sigma = np.sqrt(0.25 * 0.75 / n)
    assert abs(up - 0.25) < 5 * sigma, up
    assert set(np.unique(p)) <= {1.0, 1.0 + 2.0**-7}
    assert abs(p.mean() - (1 + 2.0**-9)) < 5 * sigma * 2.0**-7
    assert np.array_equal(runs[7][0], runs[7][1])
    assert not np.array_equal(runs[7][0], runs[8][0])


def test_stochastic_rounding_with_master_weights_over_many_steps():
    """With master weights, stochastic rounding of p is centred on the master value."""
    n = 1 << 15
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(BF16)
    master = p.astype(F32)
    exp_avg, exp_avg_sq = np.zeros(n, F32), np.zeros(n, F32)
    for t in range(1, 6):
        g = rng.standard_normal(n).astype(BF16)
        ops.adam_(
            p,
            g,
            exp_avg,
            exp_avg_sq,
            lr=1e-3,
            step=t,
            master=master,
            rounding="stochastic",
            seed=t,
        )
    err = p.astype(np.float64) - master.astype(np.float64)
    u = ulp(master, BF16)
    assert np.all(np.abs(err) < u * 1.0001)
    # unbiased: the mean error in ulps is 0 within 5σ (each error uniform-ish in (−1, 1))
    assert abs(np.mean(err / u)) < 5 * np.sqrt(1 / 3 / n)


@pytest.mark.parametrize(("pdt", "sdt", "master"), [(BF16, F32, True), (F16, F32, False)])
def test_lists_equal_each_tensor_alone(xp, pdt, sdt, master):
    sizes = (0, 1, 7, 33, 1023, (1 << 16) + 5)
    rng = np.random.default_rng(5)
    p0 = [rng.standard_normal(n).astype(pdt) for n in sizes]
    g0 = [rng.standard_normal(n).astype(pdt) for n in sizes]

    def fresh():
        ps = [xp.asarray(a) for a in p0]
        ms = [xp.asarray(a.astype(F32)) for a in p0] if master else None
        st = {k: [xp.zeros(n, sdt) for n in sizes] for k in ("exp_avg", "exp_avg_sq")}
        return ps, ms, st

    ps, ms, st = fresh()
    ops.adam_(ps, [xp.asarray(a) for a in g0], st["exp_avg"], st["exp_avg_sq"], lr=1e-2, master=ms)
    ps1, ms1, st1 = fresh()
    for i in range(len(sizes)):
        ops.adam_(
            ps1[i],
            xp.asarray(g0[i]),
            st1["exp_avg"][i],
            st1["exp_avg_sq"][i],
            lr=1e-2,
            master=None if ms1 is None else ms1[i],
        )
    for a, b in zip(ps, ps1, strict=True):
        assert np.array_equal(to_numpy(a).view(np.uint16), to_numpy(b).view(np.uint16))


def test_nonfinite_values_survive_half_precision_storage():
    """NaN stays NaN and ±Inf stays ±Inf through the bfloat16 and float16 stores."""
    for dt in (BF16, F16):
        p = np.array([1.0, 1.0, 1.0, 1.0], dt)
        g = np.array([np.nan, np.inf, -np.inf, 0.0], dt)
        ops.sgd_(p, g, lr=1.0)
        out = p.astype(np.float64)
        assert np.isnan(out[0]) and out[1] == -np.inf and out[2] == np.inf and out[3] == 1.0


def _bad(kind):
    n = 16
    p = np.ones(n, BF16)
    g = np.ones(n, BF16)
    m = np.zeros(n, F32)
    v = np.zeros(n, F32)
    kw = {}
    if kind == "master-with-fp32-p":
        p, g, kw = np.ones(n, F32), np.ones(n, F32), {"master": np.ones(n, F32)}
    elif kind == "master-dtype":
        kw = {"master": np.ones(n, np.float64)}
    elif kind == "master-shape":
        kw = {"master": np.ones(n + 1, F32)}
    elif kind == "state-f16":
        m = np.zeros(n, F16)
    elif kind == "states-differ":
        v = np.zeros(n, BF16)
    elif kind == "g-dtype":
        g = np.ones(n, F32)
    elif kind == "stochastic-f16":
        p, g, kw = np.ones(n, F16), np.ones(n, F16), {"rounding": "stochastic"}
    elif kind == "rounding":
        kw = {"rounding": "up"}
    elif kind == "seed":
        kw = {"rounding": "stochastic", "seed": -1}
    elif kind == "fp32-state-with-fp32-p-bf16-state":
        p, g, m = np.ones(n, F32), np.ones(n, F32), np.zeros(n, BF16)
    return p, g, m, v, kw


@pytest.mark.parametrize(
    ("kind", "exc", "match"),
    [
        ("master-with-fp32-p", TypeError, "master: fp32 master weights go with float16"),
        ("master-dtype", TypeError, r"master: expected float32 of p's shape"),
        ("master-shape", TypeError, r"master: expected float32 of p's shape \(16,\)"),
        ("state-f16", TypeError, "exp_avg: states beside bfloat16 parameters are float32"),
        ("states-differ", TypeError, "exp_avg_sq: dtype bfloat16 differs from the other"),
        ("g-dtype", TypeError, "g: dtype float32 does not match p's bfloat16"),
        ("stochastic-f16", ValueError, "rounding: stochastic rounding is for bfloat16"),
        ("rounding", ValueError, "rounding: expected one of"),
        ("seed", ValueError, "seed: expected an integer"),
        ("fp32-state-with-fp32-p-bf16-state", TypeError, "exp_avg: expected dtype float32 or"),
    ],
)
def test_bad_policies_are_rejected_and_write_nothing(kind, exc, match):
    p, g, m, v, kw = _bad(kind)
    before = [a.copy() for a in (p, m, v, *kw.values()) if isinstance(a, np.ndarray)]
    with pytest.raises(exc, match=match):
        ops.adam_(p, g, m, v, lr=0.1, **kw)
    after = [a for a in (p, m, v, *kw.values()) if isinstance(a, np.ndarray)]
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_every_rule_takes_every_state_slot_in_bfloat16():
    """The three-state configurations (RMSprop centered with momentum, AMSGrad) in bf16."""
    for rule, cid, hp, names in ALL:
        if len(names) < 3:
            continue
        n = 33
        p = np.ones(n, BF16)
        st = {k: np.full(n, INIT.get(k, 0.0), BF16) for k in names}
        run_op(rule, np, p, np.full(n, 0.5, BF16), st, hp, 1, 1.0)
        pr = run_ref(
            rule, np.ones(n), np.full(n, 0.5), {k: np.full(n, 0.0) for k in names}, hp, 1, 1.0, 1.0
        )
        assert np.all(np.abs(p.astype(np.float64) - pr) <= ulp(pr, BF16)), (rule, cid)
        assert set(st) == set(n for n in CASES_STATES[rule] if n in st)


def test_serial_and_parallel_paths_round_the_same_bits():
    """A small array runs serially, a large one as a parallel table: element i gets the same
    value and the same random bits in both (stochastic and nearest)."""
    from gpugd._cpu.vector import PARALLEL_MIN

    n = PARALLEL_MIN + 1000
    rng = np.random.default_rng(11)
    p0 = rng.standard_normal(n).astype(BF16)
    g0 = rng.standard_normal(n).astype(BF16)
    for rounding in ("nearest", "stochastic"):
        big, small = p0.copy(), p0[:1000].copy()
        for p, g in ((big, g0), (small, g0[:1000].copy())):
            m = np.zeros(p.size, F32)
            v = np.zeros(p.size, F32)
            ops.adam_(p, g, m, v, lr=1e-2, master=p.astype(F32), rounding=rounding, seed=4)
        assert np.array_equal(big[:1000].view(np.uint16), small.view(np.uint16)), rounding
