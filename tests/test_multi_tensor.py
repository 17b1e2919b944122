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


# Tensors 1.. of a list of exact NumPy arrays are screened against tensor 0 (the same dtype
# object, p's shape, C-contiguous, aligned, writable where written); whatever the screen
# does not vouch for gets every rule, so each fault below, at tensor 2 of any row, must be
# named there, and each oddity that the rules allow must still be accepted.
_ROWS = ("p", "g", "exp_avg", "exp_avg_sq", "master")


def _half_lists(n_tensors=4, size=12):
    import ml_dtypes

    bf = ml_dtypes.bfloat16
    rows = {
        "p": [np.full(size, 0.5, bf) for _ in range(n_tensors)],
        "g": [np.full(size, 0.25, bf) for _ in range(n_tensors)],
        "exp_avg": [np.zeros(size, np.float32) for _ in range(n_tensors)],
        "exp_avg_sq": [np.zeros(size, np.float32) for _ in range(n_tensors)],
        "master": [np.full(size, 0.5, np.float32) for _ in range(n_tensors)],
    }
    return rows


def _call(rows):
    return ops.adam_(
        rows["p"], rows["g"], rows["exp_avg"], rows["exp_avg_sq"], lr=1e-2, master=rows["master"]
    )


def _unaligned(a):
    raw = np.zeros(a.nbytes + 1, np.uint8)[1:]
    return raw.view(a.dtype).reshape(a.shape)


_FAULTS = {
    "dtype": (lambda a: a.astype(np.float64), TypeError, r"dtype|got float64"),
    "shape": (lambda a: np.zeros(a.size + 1, a.dtype), (ValueError, TypeError), r"shape"),
    "strided": (lambda a: np.repeat(a, 2)[::2], ValueError, r"C-contiguous"),
    "unaligned": (_unaligned, ValueError, r"not aligned"),
    "read-only": (lambda a: _read_only(a), ValueError, r"read-only"),
    "matrix": (lambda a: np.asmatrix(a.astype(np.float32)), TypeError, r"subclass"),
    "list": (lambda a: a.tolist(), TypeError, r"expected a numpy.ndarray"),
}


def _read_only(a):
    b = a.copy()
    b.flags.writeable = False
    return b


@pytest.mark.parametrize(
    ("row", "fault"),
    # g is only read: a read-only g is accepted (the next test)
    [(r, f) for r in _ROWS for f in sorted(_FAULTS) if (r, f) != ("g", "read-only")],
)
def test_a_fault_past_the_first_tensor_is_named_there(row, fault):
    make, exc, match = _FAULTS[fault]
    rows = _half_lists()
    rows[row][2] = make(rows[row][2])
    before = {k: [np.array(a, copy=True) for a in v] for k, v in rows.items()}
    with pytest.raises(exc, match=rf"^\w+\[2\]: .*({match})") as err:
        _call(rows)
    assert f"{row}[2]" in str(err.value)  # p's shape is named by the array it mismatches
    for k, arrays in rows.items():
        for i, a in enumerate(arrays):
            assert np.array_equal(np.asarray(a), before[k][i]), f"{k}[{i}] was written"


def test_what_the_screen_passes_over_the_rules_still_accept():
    """A read-only g, an equal dtype that is another object (float32 with metadata) and a
    memmap past tensor 0: the full rules accept them, and the update equals a plain call."""
    plain, odd = _half_lists(), _half_lists()
    odd["g"][1] = _read_only(odd["g"][1])
    odd["exp_avg"][2] = odd["exp_avg"][2].astype(np.dtype(np.float32, metadata={"k": 1}))
    assert odd["exp_avg"][2].dtype is not plain["exp_avg"][2].dtype
    _call(plain)
    _call(odd)
    for k in _ROWS:
        for i, (a, b) in enumerate(zip(plain[k], odd[k], strict=True)):
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"{k}[{i}]"


def test_a_memmap_past_the_first_tensor_is_accepted(tmp_path):
    plain, odd = _half_lists(), _half_lists()
    mm = np.memmap(tmp_path / "v.bin", np.float32, "w+", shape=(12,))
    mm[:] = 0
    odd["exp_avg_sq"][3] = mm
    _call(plain)
    _call(odd)
    assert np.array_equal(plain["exp_avg_sq"][3], np.asarray(mm))
    assert np.array_equal(plain["master"][3], odd["master"][3])
