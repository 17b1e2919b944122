"""The multi-tensor path: lists of separate arrays updated in one launch (CUDA: a tensor
table in device memory; CPU: one parallel region over the same table). Reference: the
single-array op applied to each tensor on its own, which it must match bit for bit (the
same per-element code runs), and the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_rel_close, to_numpy
from test_optim import ALL, IDS, INIT, RTOL, run_op, run_ref

from gpugd import ops
from gpugd import reference as ref
from gpugd.ops.optim import CUDA_CHUNK

# Empty, tiny, odd, and past both the CPU task chunk (2^14) and the CUDA block chunk (2^16).
# The empty tensor comes first on purpose: CuPy gives it the address 0, and the CUDA
# kernels once read "momentum/centered/AMSGrad in use" from whether the first tensor's
# state address was null, so a list starting with an empty tensor lost those states for
# every tensor (found by the emulated suite; the flags are kernel arguments now).
SIZES = (0, 1, 7, 1023, 33, CUDA_CHUNK + 5, 3 * (1 << 14) + 1)


def _lists(xp, sizes, names, dtype, seed):
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(n).astype(dtype) for n in sizes]
    states = {k: [xp.full(n, INIT.get(k, 0.0), dtype=dtype) for n in sizes] for k in names}
    return p0, states


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("rule", "cid", "hp", "names"), ALL, ids=IDS)
def test_list_equals_each_tensor_alone_and_the_reference(xp, rule, cid, hp, names, dtype):
    p0, states = _lists(xp, SIZES, names, dtype, seed=21)
    _, alone = _lists(xp, SIZES, names, dtype, seed=21)
    ps = [xp.array(a) for a in p0]
    ps_alone = [xp.array(a) for a in p0]
    pr = [a.astype(np.float64) for a in p0]
    rstates = [{k: np.full(n, INIT.get(k, 0.0)) for k in names} for n in SIZES]
    rng = np.random.default_rng(22)
    b1, psi = hp.get("betas", (0.9, 0.999))[0], hp.get("momentum_decay", 4e-3)
    mu_product = 1.0
    for t in range(1, 4):
        gs = [rng.standard_normal(n).astype(dtype) for n in SIZES]
        run_op(rule, xp, ps, [xp.array(g) for g in gs], states, hp, t, mu_product, grad_scale=0.5)
        for i in range(len(SIZES)):
            one = {k: alone[k][i] for k in names}
            run_op(rule, xp, ps_alone[i], xp.array(gs[i]), one, hp, t, mu_product, grad_scale=0.5)
            pr[i] = run_ref(rule, pr[i], gs[i], rstates[i], hp, t, mu_product, 0.5)
        mu_product *= ref.nadam_mu(t, b1, psi)
    for i, n in enumerate(SIZES):
        np.testing.assert_array_equal(to_numpy(ps[i]), to_numpy(ps_alone[i]), err_msg=f"p[{i}]")
        for k in names:
            np.testing.assert_array_equal(
                to_numpy(states[k][i]), to_numpy(alone[k][i]), err_msg=f"{k}[{i}] (n={n})"
            )
        assert_rel_close(ps[i], pr[i], RTOL[dtype], f"{rule}-{cid} p[{i}] (n={n})")


def test_thousands_of_tiny_tensors_in_one_call(xp):
    # Far past CUDA's 4 KB kernel-argument limit (about 500 pointers): the table is in memory.
    rng = np.random.default_rng(23)
    sizes = rng.integers(1, 40, size=3000)
    p0 = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    g0 = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    ps, gs = [xp.array(a) for a in p0], [xp.array(a) for a in g0]
    ms, vs = [xp.zeros(n, np.float32) for n in sizes], [xp.zeros(n, np.float32) for n in sizes]
    ops.adam_(ps, gs, ms, vs, lr=1e-2, weight_decay=0.1, decoupled=True, step=1)
    for i in (0, 1, 1499, 2999):
        pa, m, v = xp.array(p0[i]), xp.zeros(sizes[i], np.float32), xp.zeros(sizes[i], np.float32)
        ops.adam_(pa, gs[i], m, v, lr=1e-2, weight_decay=0.1, decoupled=True, step=1)
        np.testing.assert_array_equal(to_numpy(ps[i]), to_numpy(pa), err_msg=f"p[{i}]")
        np.testing.assert_array_equal(to_numpy(vs[i]), to_numpy(v), err_msg=f"v[{i}]")


def test_skip_flag_covers_every_tensor(xp):
    ps = [xp.ones(n, np.float32) for n in SIZES]
    gs = [xp.full(n, np.nan, np.float32) for n in SIZES]
    bufs = [xp.zeros(n, np.float32) for n in SIZES]
    ops.sgd_(ps, gs, bufs, lr=0.1, momentum=0.9, skip_if=xp.ones(1, np.int32))
    for i, (p, b) in enumerate(zip(ps, bufs, strict=True)):
        assert (to_numpy(p) == 1).all() and (to_numpy(b) == 0).all(), f"tensor {i} was written"


def test_empty_list_is_a_no_op(xp):
    assert ops.adam_([], [], [], [], lr=1e-3) == []


def _bad_list_calls(xp):
    """(case id, call, expected exception, message): each call must be rejected up front."""
    buf = xp.zeros(64, np.float32)
    return [
        (
            "g-not-a-list",
            lambda p, g, m, v: ops.adam_(p, g[0], m, v),
            TypeError,
            "g: expected a list",
        ),
        (
            "short-state",
            lambda p, g, m, v: ops.adam_(p, g, m[:2], v),
            ValueError,
            "exp_avg: expected 3",
        ),
        (
            "wrong-shape",
            lambda p, g, m, v: ops.adam_(p, g, m, [*v[:2], xp.zeros(5, np.float32)]),
            ValueError,
            r"exp_avg_sq\[2\]: shape",
        ),
        (
            "mixed-dtype",
            lambda p, g, m, v: ops.adam_([*p[:2], xp.zeros(9)], g, m, v),
            TypeError,
            r"p\[2\]: dtype float64 differs",
        ),
        (
            "overlap-across-tensors",
            lambda p, g, m, v: ops.adam_(p, g, [buf[:7], buf[4:11], m[2]], v),
            ValueError,
            r"exp_avg\[1\] shares memory with exp_avg\[0\]",
        ),
        (
            "state-is-a-grad",
            lambda p, g, m, v: ops.adam_(p, g, [m[0], g[1], m[2]], v),
            ValueError,
            r"exp_avg\[1\] shares memory with g\[1\]",
        ),
    ]


@pytest.mark.parametrize("case", range(6))
def test_bad_lists_are_rejected_and_nothing_is_written(xp, case):
    sizes = (7, 7, 9)
    p = [xp.full(n, 1.0, np.float32) for n in sizes]
    g = [xp.full(n, 0.5, np.float32) for n in sizes]
    m = [xp.zeros(n, np.float32) for n in sizes]
    v = [xp.zeros(n, np.float32) for n in sizes]
    name, call, exc, match = _bad_list_calls(xp)[case]
    with pytest.raises(exc, match=match):
        call(p, g, m, v)
    for k, arrays in {"p": p, "m": m, "v": v}.items():
        for i, a in enumerate(arrays):
            fill = 1.0 if k == "p" else 0.0
            assert (to_numpy(a) == fill).all(), f"{name}: {k}[{i}] was written"
