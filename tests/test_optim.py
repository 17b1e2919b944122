"""Fused optimizer updates against the float64 reference (torch.optim's semantics), both
backends, odd sizes, fp32 and fp64, several steps; skip flag, grad_scale, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ODD_SIZES, assert_rel_close, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from gpugd import ops
from gpugd import reference as ref

DTYPES = (np.float32, np.float64)
# Several fp32 roundings per element per step, compounded over STEPS steps of a division
# by a small denominator (Adagrad, RMSprop): 1e-6 holds for one step; we allow 1e-5.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
STEPS = 4

# rule -> list of (id, hyperparameters, state names); the reference and the op take the
# same hyperparameters, so each case is one line.
CASES = {
    "sgd": [
        ("plain", dict(lr=0.1), []),
        (
            "momentum",
            dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2),
            ["momentum_buffer"],
        ),
        (
            "nesterov",
            dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
            ["momentum_buffer"],
        ),
    ],
    "adagrad": [
        ("default", dict(lr=0.1), ["sum"]),
        ("decay", dict(lr=0.1, lr_decay=0.05, weight_decay=1e-2, eps=1e-6), ["sum"]),
    ],
    "rmsprop": [
        ("plain", dict(lr=1e-2, alpha=0.9), ["square_avg"]),
        (
            "centered-momentum",
            dict(lr=1e-3, alpha=0.9, momentum=0.5, centered=True, weight_decay=1e-2),
            ["square_avg", "grad_avg", "momentum_buffer"],
        ),
    ],
    "adam": [
        ("adam", dict(lr=1e-2, weight_decay=1e-2), ["exp_avg", "exp_avg_sq"]),
        (
            "amsgrad",
            dict(lr=1e-2, betas=(0.8, 0.99), amsgrad=True),
            ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
        ),
        ("adamw", dict(lr=1e-2, weight_decay=0.1, decoupled=True), ["exp_avg", "exp_avg_sq"]),
    ],
    "nadam": [
        ("nadam", dict(lr=1e-2, weight_decay=1e-2), ["exp_avg", "exp_avg_sq"]),
        (
            "nadamw",
            dict(lr=1e-2, weight_decay=0.1, decoupled=True, momentum_decay=1e-2),
            ["exp_avg", "exp_avg_sq"],
        ),
    ],
    "lion": [
        ("default", dict(lr=1e-2), ["exp_avg"]),
        ("decay", dict(lr=3e-3, betas=(0.8, 0.95), weight_decay=0.5), ["exp_avg"]),
    ],
}
NO_STEP = ("rmsprop", "lion")  # rules whose update does not depend on the step count
ALL = [(rule, cid, hp, names) for rule, cases in CASES.items() for cid, hp, names in cases]
IDS = [f"{rule}-{cid}" for rule, cid, _, _ in ALL]
INIT = {"sum": 0.1}  # Adagrad's initial_accumulator_value; the other states start at 0
STATE_ARG = {"sum": "state_sum"}  # the op's argument name where it differs from torch's


def run_op(rule, xp, p, g, states, hp, step, mu_product, **extra):
    kw = dict(hp, **extra)
    if rule not in NO_STEP:
        kw["step"] = step
    if rule == "nadam":
        kw["mu_product"] = mu_product
    args = [states[n] for n in CASES_STATES[rule] if n in states]
    return getattr(ops, f"{rule}_")(p, g, *args, **kw)


CASES_STATES = {
    "sgd": ["momentum_buffer"],
    "adagrad": ["sum"],
    "rmsprop": ["square_avg", "grad_avg", "momentum_buffer"],
    "adam": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
    "nadam": ["exp_avg", "exp_avg_sq"],
    "lion": ["exp_avg"],
}


def run_ref(rule, p, g, state, hp, step, mu_product, grad_scale):
    kw = dict(hp, grad_scale=grad_scale)
    if rule not in NO_STEP:
        kw["step"] = step
    if rule == "nadam":
        kw["mu_product"] = mu_product
    return getattr(ref, rule)(p, g, state, **kw)


def trajectory(xp, rule, hp, names, n, dtype, steps, seed, grad_scale=1.0):
    """Run the op and the reference side by side; return (op p, ref p, op states, ref)."""
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(dtype)
    p = xp.array(p0)
    states = {k: xp.full(n, INIT.get(k, 0.0), dtype=dtype) for k in names}
    rstate = {k: np.full(n, INIT.get(k, 0.0)) for k in names}
    pr = p0.astype(np.float64)
    b1, mom_decay = hp.get("betas", (0.9, 0.999))[0], hp.get("momentum_decay", 4e-3)
    mu_product = 1.0
    for t in range(1, steps + 1):
        g0 = rng.standard_normal(n).astype(dtype)
        run_op(rule, xp, p, xp.array(g0), states, hp, t, mu_product, grad_scale=grad_scale)
        pr = run_ref(rule, pr, g0, rstate, hp, t, mu_product, grad_scale)
        mu_product *= ref.nadam_mu(t, b1, mom_decay)
    return p, pr, states, rstate


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", ODD_SIZES)
@pytest.mark.parametrize(("rule", "cid", "hp", "names"), ALL, ids=IDS)
def test_rule_matches_reference(xp, rule, cid, hp, names, n, dtype):
    p, pr, states, rstate = trajectory(
        xp, rule, hp, names, n, dtype, STEPS, seed=n + 1, grad_scale=0.75
    )
    assert_rel_close(p, pr, RTOL[dtype], f"{rule}-{cid} p")
    for k in names:
        assert_rel_close(states[k], rstate[k], RTOL[dtype], f"{rule}-{cid} {k}")


@pytest.mark.parametrize(("rule", "cid", "hp", "names"), ALL, ids=IDS)
def test_skip_flag_leaves_everything_untouched(xp, rule, cid, hp, names):
    n = 1023
    p, _, states, _ = trajectory(xp, rule, hp, names, n, np.float32, 2, seed=3)
    before = {k: to_numpy(a).copy() for k, a in {"p": p, **states}.items()}
    g = xp.full(n, np.nan, dtype=np.float32)
    flag = xp.ones(1, dtype=np.int32)
    run_op(rule, xp, p, g, states, hp, 3, 0.5, skip_if=flag)
    for k, a in {"p": p, **states}.items():
        np.testing.assert_array_equal(to_numpy(a), before[k], err_msg=f"{k} was written")
    flag[...] = 0  # the same call without the flag does write, so the check above is live
    run_op(rule, xp, p, xp.ones(n, dtype=np.float32), states, hp, 3, 0.5, skip_if=flag)
    assert not np.array_equal(to_numpy(p), before["p"])


@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_grad_scale_equals_prescaled_gradient(xp, rule):
    hp = dict(lr=0.1, momentum=0.9) if rule == "sgd" else dict(lr=1e-2)
    names = ["momentum_buffer"] if rule == "sgd" else ["exp_avg", "exp_avg_sq"]
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(777)
    g = rng.standard_normal(777)
    pa, pb = xp.array(p0), xp.array(p0)
    sa = {k: xp.zeros(777) for k in names}
    sb = {k: xp.zeros(777) for k in names}
    run_op(rule, xp, pa, xp.array(g), sa, hp, 1, 1.0, grad_scale=0.25)
    run_op(rule, xp, pb, xp.array(0.25 * g), sb, hp, 1, 1.0)
    np.testing.assert_array_equal(to_numpy(pa), to_numpy(pb))


def test_gradient_is_never_written(xp):
    g0 = np.random.default_rng(6).standard_normal(1023)
    g = xp.array(g0)
    p, m, v = xp.zeros(1023), xp.zeros(1023), xp.zeros(1023)
    ops.adam_(p, g, m, v, lr=0.1, grad_scale=3.0, weight_decay=0.1)
    np.testing.assert_array_equal(to_numpy(g), g0)


@given(
    n=st.integers(0, 2000),
    case=st.sampled_from(ALL),
    dtype=st.sampled_from(DTYPES),
    steps=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=40, deadline=None)
def test_rules_property(n, case, dtype, steps, seed):
    rule, cid, hp, names = case
    p, pr, _, _ = trajectory(np, rule, hp, names, n, dtype, steps, seed)
    assert_rel_close(p, pr, RTOL[dtype], f"{rule}-{cid}")


@pytest.mark.parametrize(("rule", "cid", "hp", "names"), ALL, ids=IDS)
def test_thousand_step_trajectory(rule, cid, hp, names):
    # fp64 kernels follow the float64 reference over 1,000 steps to near rounding level.
    p, pr, _, _ = trajectory(np, rule, hp, names, 257, np.float64, 1000, seed=11)
    assert_rel_close(p, pr, 1e-10, f"{rule}-{cid} after 1000 steps")


def test_matches_torch_optim_when_importable():
    torch = pytest.importorskip("torch", reason="torch is an optional peer, not a dependency")
    rng = np.random.default_rng(9)
    n = 1000
    pairs = [
        (
            torch.optim.SGD,
            dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
            "sgd",
            dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
            ["momentum_buffer"],
        ),
        (
            torch.optim.Adagrad,
            dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
            "adagrad",
            dict(lr=0.1, lr_decay=0.01),
            ["sum"],
        ),
        (
            torch.optim.RMSprop,
            dict(lr=1e-3, momentum=0.5, centered=True),
            "rmsprop",
            dict(lr=1e-3, momentum=0.5, centered=True),
            ["square_avg", "grad_avg", "momentum_buffer"],
        ),
        (
            torch.optim.Adam,
            dict(lr=1e-2, amsgrad=True),
            "adam",
            dict(lr=1e-2, amsgrad=True),
            ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
        ),
        (
            torch.optim.AdamW,
            dict(lr=1e-2, weight_decay=0.1),
            "adam",
            dict(lr=1e-2, weight_decay=0.1, decoupled=True),
            ["exp_avg", "exp_avg_sq"],
        ),
        (torch.optim.NAdam, dict(lr=1e-2), "nadam", dict(lr=1e-2), ["exp_avg", "exp_avg_sq"]),
    ]
    for tcls, tkw, rule, hp, names in pairs:
        p0 = rng.standard_normal(n)
        tp = torch.tensor(p0.copy(), requires_grad=True)
        opt = tcls([tp], **tkw)
        p = p0.copy()
        states = {k: np.full(n, INIT.get(k, 0.0)) for k in names}
        mu_product = 1.0
        for t in range(1, 21):
            g = rng.standard_normal(n)
            tp.grad = torch.tensor(g)
            opt.step()
            run_op(rule, np, p, g, states, hp, t, mu_product)
            mu_product *= ref.nadam_mu(t, 0.9, 4e-3)
        # torch keeps NAdam's μ-product in float32: that, not gpugd, limits this one.
        assert_rel_close(
            p, tp.detach().numpy(), 1e-8 if rule == "nadam" else 1e-13, f"{tcls.__name__}"
        )


# ------------------------------------------------------------------------ bad input


def _adam_arrays(xp, n=64, dtype=np.float32):
    return [xp.arange(n, dtype=dtype) for _ in range(4)]


BAD = [
    (dict(lr=-1.0), ValueError, r"lr: expected a finite value in \[0.0, inf\)"),
    (dict(lr=float("nan")), ValueError, "lr: expected a finite value"),
    (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]: expected a finite value in \[0.0, 1.0\)"),
    (dict(betas=(-0.1, 0.9)), ValueError, r"betas\[0\]"),
    (dict(betas=0.9), TypeError, "betas: expected a pair"),
    (dict(eps=0.0), ValueError, r"eps: expected a finite value in \(0.0, inf\)"),
    (dict(weight_decay=-1e-2), ValueError, "weight_decay"),
    (dict(step=0), ValueError, "step: expected an integer"),
    (dict(step=1.5), ValueError, "step: expected an integer"),
    (dict(grad_scale=float("inf")), ValueError, "grad_scale: expected a finite"),
    (dict(amsgrad=True), ValueError, "max_exp_avg_sq: required when amsgrad=True"),
]


@pytest.mark.parametrize(("kw", "exc", "match"), BAD)
def test_adam_rejects_bad_hyperparameters_and_writes_nothing(xp, kw, exc, match):
    p, g, m, v = _adam_arrays(xp)
    before = [to_numpy(a).copy() for a in (p, m, v)]
    with pytest.raises(exc, match=match):
        ops.adam_(p, g, m, v, **kw)
    for a, b in zip((p, m, v), before, strict=True):
        np.testing.assert_array_equal(to_numpy(a), b)


@pytest.mark.parametrize(
    ("mutate", "exc", "match"),
    [
        (lambda xp, a: a.__setitem__(1, a[1][:-1]), ValueError, r"g: shape \(63,\)"),
        (
            lambda xp, a: a.__setitem__(2, a[2].astype(xp.float64)),
            TypeError,
            "exp_avg: dtype float64",
        ),
        (
            lambda xp, a: a.__setitem__(3, xp.zeros((8, 16), xp.float32)[:, :8].copy().T),
            ValueError,
            "exp_avg_sq: expected a C-contiguous",
        ),
        (
            lambda xp, a: a.__setitem__(0, a[0].astype(xp.int32)),
            TypeError,
            "p: expected dtype float32, float64, float16 or bfloat16",
        ),
        (lambda xp, a: a.__setitem__(3, a[2]), ValueError, "exp_avg_sq shares memory with exp_avg"),
        (lambda xp, a: a.__setitem__(1, a[0]), ValueError, "g shares memory with p"),
        (lambda xp, a: a.__setitem__(2, list(range(64))), TypeError, "exp_avg: expected a numpy"),
    ],
    ids=["shape", "dtype", "contiguous", "int", "aliased-states", "aliased-p-g", "list"],
)
def test_adam_rejects_bad_arrays_and_writes_nothing(xp, mutate, exc, match):
    arrays = _adam_arrays(xp)
    mutate(xp, arrays)
    before = [to_numpy(a).copy() if hasattr(a, "dtype") else None for a in arrays]
    with pytest.raises(exc, match=match):
        ops.adam_(*arrays, lr=0.1)
    for a, b in zip(arrays, before, strict=True):
        if b is not None:
            np.testing.assert_array_equal(to_numpy(a), b)


def test_other_rules_reject_their_own_bad_hyperparameters():
    p, g, s1, s2 = _adam_arrays(np)
    with pytest.raises(ValueError, match="nesterov: requires momentum > 0 and dampening = 0"):
        ops.sgd_(p, g, s1, lr=0.1, momentum=0.9, dampening=0.5, nesterov=True)
    with pytest.raises(ValueError, match="momentum_buffer: required when momentum != 0"):
        ops.sgd_(p, g, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"alpha: expected a finite value in \[0.0, 1.0\)"):
        ops.rmsprop_(p, g, s1, alpha=1.5)
    with pytest.raises(ValueError, match="grad_avg: required when centered=True"):
        ops.rmsprop_(p, g, s1, centered=True)
    with pytest.raises(ValueError, match="lr_decay"):
        ops.adagrad_(p, g, s1, lr_decay=-1.0)
    with pytest.raises(ValueError, match="momentum_decay"):
        ops.nadam_(p, g, s1, s2, momentum_decay=-1.0)
    with pytest.raises(ValueError, match="mu_product"):
        ops.nadam_(p, g, s1, s2, mu_product=0.0)
    with pytest.raises(TypeError, match="skip_if: expected a one-element int32 array"):
        ops.sgd_(p, g, lr=0.1, skip_if=np.zeros(1, np.float32))
    np.testing.assert_array_equal(p, np.arange(64, dtype=np.float32))
