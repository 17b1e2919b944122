"""Batch normalization against float64 and torch: statistics (stable for |mean| ≫ std,
with the E[x²] − E[x]² formula as the counter-example), training and inference forward,
running statistics (torch and Keras conventions), backward; three layouts, both backends."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_rel_close, to_numpy

from gpugd import ops
from gpugd import reference as ref

# Two values per channel would make dx the residue of an exact cancellation (x̂ = ±1), a
# test of fp32 rounding rather than of the kernels: the smallest batch here has three.
SHAPES = {
    # the last two: several row tiles with tails, four rows a step and one row a step
    "NC": [(1000, 7), (3, 5), (700, 33), (5001, 40), (601, 300)],
    "NCHW": [(4, 3, 5, 7), (5, 16, 1, 1), (3, 2, 33, 17)],
    "NHWC": [(4, 5, 7, 3), (5, 1, 1, 16), (3, 33, 17, 2)],
}
CASES = [(lay, s) for lay, shapes in SHAPES.items() for s in shapes]
IDS = [f"{lay}-{'x'.join(map(str, s))}" for lay, s in CASES]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def _channels(layout, shape):
    return shape[-1] if layout == "NHWC" else shape[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("layout", "shape"), CASES, ids=IDS)
def test_training_forward_and_backward_match_float64(xp, layout, shape, dtype):
    rng = np.random.default_rng(sum(shape))
    C = _channels(layout, shape)
    x0 = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy0 = rng.standard_normal(shape).astype(dtype)
    w0, b0 = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    eps = 1e-5
    res = ops.batch_norm_forward(
        xp.asarray(x0), xp.asarray(w0), xp.asarray(b0), eps=eps, layout=layout
    )
    mean, var = ref.batch_norm_stats(x0, layout)
    assert_rel_close(res.mean, mean, RTOL[dtype], "mean")
    assert_rel_close(res.invstd, 1 / np.sqrt(var + eps), RTOL[dtype], "invstd")
    want = ref.batch_norm_forward(x0, w0, b0, mean, var, eps, layout)
    assert_rel_close(res.y, want, RTOL[dtype], "y")
    dx, dw, db = ops.batch_norm_backward(
        xp.asarray(dy0), xp.asarray(x0), xp.asarray(w0), res.mean, res.invstd, layout=layout
    )
    rdx, rdw, rdb = ref.batch_norm_backward(dy0, x0, w0, eps, layout)
    assert_rel_close(dx, rdx, 10 * RTOL[dtype], "dx")
    assert_rel_close(dw, rdw, RTOL[dtype], "dweight")
    assert_rel_close(db, rdb, RTOL[dtype], "dbias")


def test_variance_with_mean_1e4_and_std_1_in_float32(xp):
    # The bar: within 1e-3 relative of float64. The one-pass E[x²] − E[x]² formula
    # in float32 (the counter-example) is off by far more: it cancels ~8 digits of 1e8.
    x0 = (np.random.default_rng(3).standard_normal((4096, 8)) + 1e4).astype(np.float32)
    _, want = ref.batch_norm_stats(x0, "NC")
    _, var = ops.batch_norm_stats(xp.asarray(x0), layout="NC")
    np.testing.assert_allclose(to_numpy(var), want, rtol=1e-3)
    naive = (x0 * x0).mean(axis=0, dtype=np.float32) - x0.mean(axis=0, dtype=np.float32) ** 2
    assert np.abs(naive / want - 1).max() > 1e-1
    # and the normalized output keeps its digits: x − mean is taken before scaling
    y = to_numpy(ops.batch_norm_forward(xp.asarray(x0), layout="NC").y)
    mean, _ = ref.batch_norm_stats(x0, "NC")
    ones = np.ones(8)
    want_y = ref.batch_norm_forward(x0, ones, 0 * ones, mean, want, 1e-5, "NC")
    assert np.abs(y - want_y).max() < 1e-3


@pytest.mark.parametrize("layout", ["NC", "NCHW", "NHWC"])
def test_layouts_agree(xp, layout):
    rng = np.random.default_rng(4)
    nchw = rng.standard_normal((3, 4, 5, 6))
    x = {"NC": nchw.transpose(0, 2, 3, 1).reshape(-1, 4), "NCHW": nchw}
    x["NHWC"] = np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
    mean, var = ops.batch_norm_stats(xp.asarray(np.ascontiguousarray(x[layout])), layout=layout)
    np.testing.assert_allclose(to_numpy(mean), nchw.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(var), nchw.var(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("convention", ["torch", "keras"])
def test_running_statistics_and_inference(xp, convention):
    rng = np.random.default_rng(5)
    x0 = rng.standard_normal((64, 3)) * 2 + 1
    rm, rv = xp.zeros(3), xp.ones(3)
    m = 0.1 if convention == "torch" else 0.99
    ops.batch_norm_forward(
        xp.asarray(x0),
        running_mean=rm,
        running_var=rv,
        momentum=m,
        layout="NC",
        momentum_convention=convention,
    )
    mean, var = x0.mean(axis=0), x0.var(axis=0)
    if convention == "torch":
        want_m, want_v = 0.1 * mean, 0.9 + 0.1 * var * 64 / 63
    else:
        want_m, want_v = 0.01 * mean, 0.99 + 0.01 * var
    np.testing.assert_allclose(to_numpy(rm), want_m, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(rv), want_v, rtol=1e-12)
    y = ops.batch_norm_forward(
        xp.asarray(x0), running_mean=rm, running_var=rv, training=False, layout="NC"
    ).y
    np.testing.assert_allclose(to_numpy(y), (x0 - want_m) / np.sqrt(want_v + 1e-5), rtol=1e-12)
    dx, _, _ = ops.batch_norm_backward(
        xp.asarray(x0),
        xp.asarray(x0),
        None,
        xp.asarray(want_m),
        xp.asarray(1 / np.sqrt(want_v + 1e-5)),
        training=False,
        layout="NC",
    )
    np.testing.assert_allclose(to_numpy(dx), x0 / np.sqrt(want_v + 1e-5), rtol=1e-12)


def test_matches_torch_when_importable():
    torch = pytest.importorskip("torch", reason="torch is an optional peer")
    rng = np.random.default_rng(6)
    x0 = rng.standard_normal((8, 3, 5, 5))
    dy0 = rng.standard_normal(x0.shape)
    w0, b0 = rng.standard_normal(3), rng.standard_normal(3)
    tx = torch.tensor(x0, requires_grad=True)
    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    trm, trv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training=True, momentum=0.1)
    ty.backward(torch.tensor(dy0))
    rm, rv = np.zeros(3), np.ones(3)
    res = ops.batch_norm_forward(x0, w0, b0, rm, rv, momentum=0.1)
    np.testing.assert_allclose(res.y, ty.detach().numpy(), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12)
    dx, dw, db = ops.batch_norm_backward(dy0, x0, w0, res.mean, res.invstd)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-11)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-11)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda x, c: ops.batch_norm_forward(x, layout="NHCW"),
            ValueError,
            "layout: expected one of",
        ),
        (lambda x, c: ops.batch_norm_forward(x[0], layout="NCHW"), ValueError, "needs a 4-D array"),
        (
            lambda x, c: ops.batch_norm_forward(x, np.ones(5, np.float32)),
            ValueError,
            r"weight: expected shape \(3,\)",
        ),
        (
            lambda x, c: ops.batch_norm_forward(x, eps=0.0),
            ValueError,
            "eps: expected a finite value > 0",
        ),
        (
            lambda x, c: ops.batch_norm_forward(
                x, momentum=1.5, running_mean=c[0], running_var=c[1]
            ),
            ValueError,
            r"momentum: expected a value in \[0, 1\]",
        ),
        (
            lambda x, c: ops.batch_norm_forward(x, running_mean=c[0]),
            ValueError,
            "give both or neither",
        ),
        (
            lambda x, c: ops.batch_norm_forward(x, training=False),
            ValueError,
            "required when training=False",
        ),
        (
            lambda x, c: ops.batch_norm_forward(
                x, running_mean=c[0], running_var=c[1], momentum_convention="tf"
            ),
            ValueError,
            "momentum_convention",
        ),
        (lambda x, c: ops.batch_norm_forward(x, np.ones(3)), TypeError, "weight: dtype float64"),
        (
            lambda x, c: ops.batch_norm_forward(np.ascontiguousarray(x[:1, :, :1, :1])),
            ValueError,
            "more than one value per channel",
        ),
    ],
)
def test_bad_input_is_refused_before_any_write(call, exc, match):
    x = np.full((2, 3, 4, 4), 5.0, np.float32)
    c = (np.zeros(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(exc, match=match):
        call(x, c)
    assert (x == 5.0).all() and (c[0] == 0).all() and (c[1] == 1).all()


@pytest.mark.parametrize(("layout", "shape"), [("NCHW", (6, 5, 33, 31)), ("NC", (9001, 24))])
def test_cpu_statistics_do_not_depend_on_the_thread_count(layout, shape):
    # plane / row-tile results are merged in a fixed order, whatever thread ran them
    import numba

    x = (np.random.default_rng(3).standard_normal(shape) * 5 + 1e3).astype(np.float32)
    dy = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    C = _channels(layout, shape)
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    runs = []
    before = numba.get_num_threads()
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            mean, var = ops.batch_norm_stats(x, layout=layout)
            res = ops.batch_norm_forward(x, w, b, layout=layout)
            grads = ops.batch_norm_backward(dy, x, w, res.mean, res.invstd, layout=layout)
            runs.append([mean, var, res.y, *grads])
    finally:
        numba.set_num_threads(before)
    for one, many in zip(*runs, strict=True):
        np.testing.assert_array_equal(one, many)
