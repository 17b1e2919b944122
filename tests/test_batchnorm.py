"""Batch normalization against float64 and torch: statistics (stable for |mean| ≫ std,
with the E[x²] − E[x]² formula as the counter-example), training and inference forward,
running statistics (torch and Keras conventions), backward; three layouts, both backends."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import assert_rel_close, emulated, to_numpy

from gpugd import ops
from gpugd import reference as ref

# Two values per channel would make dx the residue of an exact cancellation (x̂ = ±1), a
# test of fp32 rounding rather than of the kernels: the smallest batch here has three.
SHAPES = {
    # the last four: (5001, 40) and (601, 300) span two row tiles; statistics four rows a step
    # (C below batchnorm.STATS_WIDE) and eight, each step's rows R = tile rows // step apart,
    # with leftover rows (1 for C = 40 and 300, 7 for C = 1030); the backward sums four rows
    # a step, leftovers 1 (C = 40, 300) and 3 (C = 1030)
    "NC": [(1000, 7), (3, 5), (700, 33), (5001, 40), (601, 300), (263, 1030)],
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


@pytest.mark.parametrize(
    ("layout", "shape"), [("NCHW", (6, 5, 33, 31)), ("NC", (9001, 24)), ("NC", (1037, 1030))]
)
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


# ---- the CUDA kernels' layout paths against the Numba kernels -----------------------------
# Each shape takes a path of kernels/batchnorm.cu (the tiling of gpugd.ops.batchnorm.plan):
# planes (B > 1) read in 16-byte vectors when B is a multiple of 16 / itemsize, with more,
# exactly or fewer than 256 vectors a plane, or one element at a time (B odd); rows (B = 1,
# channels contiguous) in vectors when C is a multiple of the width, else scalars; one or
# several channel tiles (C = 132 f32: 33 vectors in tiles of 17 and 16), several row tiles,
# one-sample batches, grids with fewer blocks than channel tiles (C = 8192), more tiles a
# channel than the merge has lanes.
PATH_CASES = [
    ("NCHW", (8, 3, 64, 64)),  # f32 1024 vectors a plane, 2 row tiles a channel
    ("NCHW", (40, 1, 128, 128)),  # 40 tiles of one plane: the merge's lanes take 2 each
    ("NCHW", (6, 5, 32, 32)),  # f32 256 vectors a plane
    ("NCHW", (7, 4, 6, 4)),  # 6 (f32) / 12 (f64) vectors a plane
    ("NCHW", (5, 3, 7, 7)),  # B = 49: scalars
    ("NCHW", (1, 4, 9, 10)),  # one sample, B = 90: f32 scalars (90 % 4), f64 vectors
    ("NCHW", (3, 6, 1, 2)),  # B = 2
    ("NHWC", (1, 9, 10, 12)),  # one sample
    ("NHWC", (3, 20, 30, 132)),  # 2 channel tiles (f32), 3 of 22 vectors (f64)
    ("NHWC", (2, 5, 7, 5)),  # C odd: scalars
    ("NC", (3, 8192)),  # 64 channel tiles (f32), 3 rows
    ("NC", (40001, 6)),  # f32 scalars, f64 vectors; many row tiles with a tail
]
PATH_IDS = [f"{lay}-{'x'.join(map(str, s))}" for lay, s in PATH_CASES]


def _cuda_and_cpu_inputs(shape, dtype, offset):
    """x, dy on both backends; the CUDA copies ``offset`` elements into an allocation (a
    view that is not 16-byte aligned when offset is odd)."""
    import cupy

    rng = np.random.default_rng(sum(shape) + offset)
    x0 = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy0 = rng.standard_normal(shape).astype(dtype)
    n = x0.size

    def device(a):
        buf = cupy.empty(n + offset, dtype)
        view = buf[offset:].reshape(shape)
        view[...] = cupy.asarray(a)
        return view

    return x0, dy0, device(x0), device(dy0)


@pytest.mark.cuda
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "offset1"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("layout", "shape"), PATH_CASES, ids=PATH_IDS)
def test_cuda_paths_match_the_numba_kernels(layout, shape, dtype, offset):
    """Statistics and the backward's sums within 1e-13 of the Numba kernels (float64
    accumulation, different tilings); the elementwise pass bit for bit (the same per-element
    arithmetic) — inference forward (u = w = x) and inference backward (u = dy, w = x)."""
    import cupy

    bn = importlib.import_module("gpugd.ops.batchnorm")
    from gpugd._lazy import cpu

    x0, dy0, x, dy = _cuda_and_cpu_inputs(shape, dtype, offset)
    if offset:
        assert x.data.ptr % 16 != 0
    a, c, b = ops.batchnorm._layout(layout, x0)
    want_m, want_v = cpu("batchnorm").stats(x0.reshape(a, c, b))
    got_m, got_v = bn.cuda_stats(x.reshape(a, c, b))
    assert_rel_close(got_m, want_m, 1e-13, "mean")
    assert_rel_close(got_v, want_v, 1e-13, "var")
    s1, s2 = cpu("batchnorm").grad_sums(dy0.reshape(a, c, b), x0.reshape(a, c, b), want_m)
    g1, g2 = bn.cuda_grad_sums(dy.reshape(a, c, b), x.reshape(a, c, b), cupy.asarray(want_m))
    assert_rel_close(g1, s1, 1e-13, "sum dy")
    assert_rel_close(g2, s2, 1e-13, "sum dy (x - mean)")
    rm, rv = want_m.astype(dtype), want_v.astype(dtype)
    rng = np.random.default_rng(1)
    w0, b0 = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    y_cpu = ops.batch_norm_forward(x0, w0, b0, rm, rv, training=False, layout=layout).y
    y = ops.batch_norm_forward(
        x, *map(cupy.asarray, (w0, b0, rm, rv)), training=False, layout=layout
    ).y
    np.testing.assert_array_equal(to_numpy(y), y_cpu)
    inv = (1 / np.sqrt(want_v + 1e-5)).astype(dtype)
    dx_cpu = ops.batch_norm_backward(dy0, x0, w0, rm, inv, training=False, layout=layout)[0]
    dx = ops.batch_norm_backward(
        dy, x, *map(cupy.asarray, (w0, rm, inv)), training=False, layout=layout
    )[0]
    np.testing.assert_array_equal(to_numpy(dx), dx_cpu)


@pytest.mark.cuda
@pytest.mark.parametrize(("layout", "shape"), [("NCHW", (3, 5, 8, 8)), ("NHWC", (2, 3, 40, 12))])
def test_cuda_training_pass_in_a_misaligned_out_and_a_small_grid(monkeypatch, layout, shape):
    """The same bits with one multiprocessor (grids of a few blocks, each looping) as with
    the device's full grid, with out a misaligned view."""
    import cupy

    from gpugd import _cuda

    x0, _, x, dy = _cuda_and_cpu_inputs(shape, np.float32, 0)
    C = _channels(layout, shape)
    w = cupy.asarray(np.linspace(0.5, 1.5, C).astype(np.float32))

    def run():
        out = cupy.empty(x.size + 3, cupy.float32)[3:].reshape(shape)
        res = ops.batch_norm_forward(x, w, layout=layout, out=out)
        grads = ops.batch_norm_backward(dy, x, w, res.mean, res.invstd, layout=layout)
        return [to_numpy(a) for a in (res.y, res.mean, res.invstd, *grads)]

    full = run()
    monkeypatch.setattr(_cuda, "sm_count", lambda: 1)
    small = run()
    for i, (one, many) in enumerate(zip(full, small, strict=True)):
        assert one.tobytes() == many.tobytes(), f"output {i}"
    mean, var = ref.batch_norm_stats(x0, layout)
    assert_rel_close(
        full[0],
        ref.batch_norm_forward(x0, to_numpy(w), 0 * mean, mean, var, 1e-5, layout),
        1e-5,
        "y",
    )


@pytest.mark.cuda
@pytest.mark.skipif(not emulated(), reason="thread and block orders are the emulator's")
def test_cuda_vector_paths_give_the_same_bits_in_every_order():
    """The 16-byte planes and rows paths (the suite's order test runs scalar ones): blocks
    and threads in index, reversed and shuffled order give the same bits."""
    import cupy
    from cudaemu import runtime

    rng = np.random.default_rng(8)
    x = cupy.asarray(rng.standard_normal((6, 5, 16, 20)).astype(np.float32))
    dy = cupy.asarray(rng.standard_normal((6, 5, 16, 20)).astype(np.float32))
    nc = cupy.asarray(rng.standard_normal((3000, 20)).astype(np.float32) + 7)

    def case():
        out = [*ops.batch_norm_stats(x), *ops.batch_norm_stats(nc, layout="NC")]
        res = ops.batch_norm_forward(x)
        out += [*ops.batch_norm_backward(dy, x, None, res.mean, res.invstd)]
        out += [*ops.batch_norm_backward(nc, nc, None, out[2], out[3], layout="NC")]
        return [to_numpy(a) for a in out]

    results = {}
    for order, seed in (("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2)):
        with runtime.order(order, seed):
            results[f"{order}{seed}"] = case()
    first = results.pop("forward0")
    for name, arrays in results.items():
        for i, (a, b) in enumerate(zip(first, arrays, strict=True)):
            assert a.tobytes() == b.tobytes(), f"output {i} differs in order {name}"


@pytest.mark.cuda
def test_cuda_plan_vector_width_and_tiles():
    """16-byte accesses only where every array starts 16-byte aligned and the contiguous run
    is a multiple of the width; channel tiles as even as they go, at most 32 vectors; tiles
    of MIN_TILE to MAX_TILE elements, about TARGET_BLOCKS of them in between."""
    import cupy

    bn = importlib.import_module("gpugd.ops.batchnorm")

    buf = cupy.zeros(1001, cupy.float32)
    a, b = buf[:1000], buf[1:1001]
    assert bn.vector_width((a,), 100, 4) == 4
    assert bn.vector_width((a,), 102, 4) == 1
    assert bn.vector_width((a, b), 100, 4) == 1
    assert bn.vector_width((cupy.zeros(8),), 6, 8) == 2
    assert bn.channel_tiles(132, 4) == (17, 2)
    assert bn.channel_tiles(128, 4) == (32, 1)
    assert bn.channel_tiles(3, 1) == (3, 1)
    assert bn.channel_tiles(8192, 4) == (32, 64)
    # NCHW (512, 64, 56, 56): 64K-element tiles (21 planes); (256, 64, 56, 56): about 1024
    # blocks; NHWC (256, 56, 56, 64): 16 vectors × 784 rows
    assert bn.plan(512, 64, 3136, 4) == bn.Plan(4, 1, 21, 25, 64 * 25)
    assert bn.plan(256, 64, 3136, 4) == bn.Plan(4, 1, 16, 16, 1024)
    assert bn.plan(802816, 64, 1, 4) == bn.Plan(4, 16, 784, 1024, 1024)
    p = bn.plan(5, 3, 1, 1)
    assert (p.tx, p.tiles, p.blocks) == (3, 1, 1)


@pytest.mark.cuda
@pytest.mark.parametrize(("layout", "shape"), [("NCHW", (4, 3, 8, 8)), ("NHWC", (4, 6, 6, 8))])
def test_cuda_elementwise_pass_in_place(layout, shape):
    """out = x (forward) and out = dy (backward): each thread loads its items before it
    stores them, so in place gives the out-of-place bits."""
    import cupy

    x0, _, x, dy = _cuda_and_cpu_inputs(shape, np.float32, 0)
    C = _channels(layout, shape)
    w = cupy.asarray(np.linspace(0.5, 1.5, C).astype(np.float32))
    rm, rv = cupy.asarray(x0.mean() * np.ones(C, np.float32)), cupy.ones(C, cupy.float32)
    y = ops.batch_norm_forward(x, w, None, rm, rv, training=False, layout=layout).y
    res = ops.batch_norm_forward(x, w, layout=layout)
    dx = ops.batch_norm_backward(dy, x, w, res.mean, res.invstd, layout=layout)[0]
    ops.batch_norm_backward(dy, x, w, res.mean, res.invstd, layout=layout, out=dy)
    ops.batch_norm_forward(x, w, None, rm, rv, training=False, layout=layout, out=x)
    np.testing.assert_array_equal(x.get(), y.get())
    np.testing.assert_array_equal(dy.get(), dx.get())
    assert not np.array_equal(x0, x.get())  # it did write in place


# ------------------------------------------------- aliasing among the arguments (issue 20)


def _bn_arrays(xp):
    """x (N, C) = (6, 4) and a (6, 4) buffer whose rows can stand in for every channel array."""
    rng = np.random.default_rng(20)
    x = xp.asarray(rng.standard_normal((6, 4)).astype(np.float32))
    spare = xp.asarray((np.abs(rng.standard_normal((6, 4))) + 0.5).astype(np.float32))
    return x, spare


@pytest.mark.parametrize(
    ("alias", "match"),
    [
        ("running_mean=x", "running_mean shares memory with x"),
        ("running_var=x", "running_var shares memory with x"),
        ("running_mean=running_var", "running_mean shares memory with running_var"),
        ("running_mean=weight", "running_mean shares memory with weight"),
        ("running_var=bias", "running_var shares memory with bias"),
        ("running_mean=out", "running_mean shares memory with out"),
        ("running_var=out", "running_var shares memory with out"),
        ("weight=out", "out shares memory with weight"),
        ("bias=out", "out shares memory with bias"),
    ],
)
def test_forward_refuses_written_arrays_aliasing_another_argument(xp, alias, match):
    # The running statistics are written before y: aliasing x rewrote the input, aliasing
    # out (or each other) lost the update; nothing may be written when refused.
    x, spare = _bn_arrays(xp)
    out = xp.zeros((6, 4), np.float32)
    args = {
        "weight": spare[0],
        "bias": spare[1],
        "running_mean": spare[2],
        "running_var": spare[3],
    }
    target, source = alias.split("=")
    args[target] = {"x": x[0], "out": out[1], **args}[source]
    x0, spare0, out0 = to_numpy(x).copy(), to_numpy(spare).copy(), to_numpy(out).copy()
    with pytest.raises(ValueError, match=match):
        ops.batch_norm_forward(x, **args, layout="NC", out=out)
    np.testing.assert_array_equal(to_numpy(x), x0)
    np.testing.assert_array_equal(to_numpy(spare), spare0)
    np.testing.assert_array_equal(to_numpy(out), out0)


def test_forward_in_place_over_x_with_running_statistics_still_works(xp):
    x, spare = _bn_arrays(xp)
    host = to_numpy(x).astype(np.float64)
    rm, rv = spare[2], spare[3]
    rm0, rv0 = to_numpy(rm).astype(np.float64), to_numpy(rv).astype(np.float64)
    res = ops.batch_norm_forward(x, running_mean=rm, running_var=rv, layout="NC", out=x)
    assert res.y is x
    mean, var = host.mean(0), host.var(0)
    assert_rel_close(x, (host - mean) / np.sqrt(var + 1e-5), 1e-6, "y")
    assert_rel_close(rm, 0.9 * rm0 + 0.1 * mean, 1e-6, "running_mean")
    assert_rel_close(rv, 0.9 * rv0 + 0.1 * var * 6 / 5, 1e-6, "running_var")


@pytest.mark.parametrize("name", ["weight", "mean", "invstd"])
def test_backward_refuses_out_over_a_channel_array(xp, name):
    x, spare = _bn_arrays(xp)
    dy = xp.asarray(np.ones((6, 4), np.float32))
    out = xp.zeros((6, 4), np.float32)
    args = {"weight": spare[0], "mean": spare[1], "invstd": spare[2], name: out[3]}
    with pytest.raises(ValueError, match=f"out shares memory with {name}"):
        ops.batch_norm_backward(
            dy, x, args["weight"], args["mean"], args["invstd"], layout="NC", out=out
        )
    np.testing.assert_array_equal(to_numpy(out), 0)


@pytest.mark.parametrize("value", ["False", 0, 1.0, np.array([True, False]), None])
def test_training_must_be_a_bool(value):
    x = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match="training: expected True or False"):
        ops.batch_norm_forward(x, running_mean=rm, running_var=rv, training=value, layout="NC")
    with pytest.raises(TypeError, match="training: expected True or False"):
        ops.batch_norm_backward(x, x, None, rm, rv, training=value, layout="NC")
    assert (rm == 0).all() and (rv == 1).all()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"layout": ["NC"]}, "layout: expected one of"),
        ({"layout": "NC", "momentum_convention": ["torch"]}, "momentum_convention"),
    ],
)
def test_unhashable_options_are_named(kw, match):
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=match):
        ops.batch_norm_forward(x, **kw)
