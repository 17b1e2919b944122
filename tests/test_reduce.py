"""Gradient statistics (tensor_norms, global_norm) and the clipping ops, against float64
and torch's definitions; determinism; bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ODD_SIZES, assert_rel_close, to_numpy

from gpugd import ops
from gpugd.ops.reduce import CHUNK

SIZES = (*ODD_SIZES, CHUNK, CHUNK + 1, 3 * CHUNK - 5)


def _ref_norm(arrays):
    return math.sqrt(
        sum(
            float(np.dot(a.astype(np.float64).ravel(), a.astype(np.float64).ravel()))
            for a in arrays
        )
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stats_match_float64(xp, dtype):
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    host[3][::7] = 0
    arrays = [xp.array(a) for a in host]
    st = ops.tensor_norms(arrays)
    want = np.array([np.linalg.norm(a.astype(np.float64)) for a in host])
    np.testing.assert_allclose(to_numpy(st.norms), want, rtol=1e-12)
    assert float(st.norm) == pytest.approx(_ref_norm(host), rel=1e-12)
    np.testing.assert_array_equal(to_numpy(st.zero_counts), [int((a == 0).sum()) for a in host])
    assert not bool(st.nonfinite) and to_numpy(st.flag).tolist() == [0]
    np.testing.assert_array_equal(to_numpy(st.nonfinite_counts), 0)


def test_one_array_and_arena_shapes(xp):
    a = xp.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert float(ops.global_norm(a)) == pytest.approx(math.sqrt(sum(i * i for i in range(12))))


@pytest.mark.parametrize("where", [5, CHUNK + 1])  # a full (four-stream) chunk, a tail chunk
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_is_counted_and_flagged(xp, bad, where):
    host = [np.ones(n, np.float32) for n in (5, CHUNK + 3, 9)]
    host[1][where] = bad
    st = ops.tensor_norms([xp.array(a) for a in host])
    assert bool(st.nonfinite) and to_numpy(st.flag).tolist() == [1]
    np.testing.assert_array_equal(to_numpy(st.nonfinite_counts), [0, 1, 0])
    assert not math.isfinite(float(st.norm))
    assert math.isfinite(float(to_numpy(st.norms)[0]))


def test_zero_counts_are_exact_over_full_chunks(xp):
    # whole 65,536-element tasks
    # of zeros, a partial one, and -0.0, which is a zero too
    a = np.zeros((1 << 17) + 3, np.float32)
    a[5] = -0.0
    a[-1] = 1.5
    st = ops.tensor_norms([xp.asarray(a), xp.zeros(7, np.float32)])
    np.testing.assert_array_equal(to_numpy(st.zero_counts), [(1 << 17) + 2, 7])
    assert float(st.norm) == 1.5


def test_empty_list_is_norm_zero(xp):
    st = ops.tensor_norms([])
    assert float(st.norm) == 0.0 and len(st.norms) == 0
    assert float(ops.global_norm([xp.zeros(0, np.float32)])) == 0.0


def test_bitwise_deterministic_over_repeats(xp):
    rng = np.random.default_rng(1)
    arrays = [
        xp.asarray(rng.standard_normal(n).astype(np.float32) * 1e3)
        for n in (3 * CHUNK + 7, 1 << 18, 11)
    ]
    first = ops.tensor_norms(arrays)
    for _ in range(5):
        again = ops.tensor_norms(arrays)
        assert to_numpy(again.norm).tobytes() == to_numpy(first.norm).tobytes()
        assert to_numpy(again.norms).tobytes() == to_numpy(first.norms).tobytes()


@pytest.mark.slow
def test_global_norm_accuracy_on_2_27_elements(xp):
    # The accuracy bar: relative error under 1e-6 against float64 on 2^27 fp32.
    x = np.random.default_rng(2).standard_normal(1 << 27, dtype=np.float32)
    want = math.sqrt(float(np.dot(x.astype(np.float64), x.astype(np.float64))))
    got = float(ops.global_norm(xp.asarray(x)))
    assert abs(got - want) / want < 1e-6, (got, want)


# ---- clipping ---------------------------------------------------------------------------


def test_clip_by_global_norm_is_torchs(xp):
    rng = np.random.default_rng(3)
    host = [rng.standard_normal(n).astype(np.float64) for n in (10, 1000, 3)]
    arrays = [xp.array(a) for a in host]
    norm = ops.clip_by_global_norm_(arrays, 2.0)
    want = _ref_norm(host)
    assert norm == pytest.approx(want, rel=1e-12)
    coef = 2.0 / (want + 1e-6)
    for a, h in zip(arrays, host, strict=True):
        np.testing.assert_allclose(to_numpy(a), h * coef, rtol=1e-14)
    # under the bound: untouched
    before = [to_numpy(a).copy() for a in arrays]
    ops.clip_by_global_norm_(arrays, 100.0)
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(to_numpy(a), b)


def test_clip_by_global_norm_matches_torch_when_importable():
    torch = pytest.importorskip("torch", reason="torch is an optional peer")
    rng = np.random.default_rng(4)
    host = [rng.standard_normal(n).astype(np.float32) for n in (100, 7, 5000)]
    tp = [torch.zeros(len(h), requires_grad=True) for h in host]
    for t, h in zip(tp, host, strict=True):
        t.grad = torch.tensor(h)
    tnorm = torch.nn.utils.clip_grad_norm_(tp, 1.0)
    norm = ops.clip_by_global_norm_(host, 1.0)
    assert norm == pytest.approx(float(tnorm), rel=1e-6)
    for t, h in zip(tp, host, strict=True):
        np.testing.assert_allclose(h, t.grad.numpy(), rtol=1e-6)


def test_clip_by_norm_is_keras_clipnorm(xp):
    host = [np.full(4, 3.0), np.full(4, 0.1)]
    arrays = [xp.array(a) for a in host]
    norms = to_numpy(ops.clip_by_norm_(arrays, 1.0))
    np.testing.assert_allclose(norms, [6.0, 0.2])
    np.testing.assert_allclose(to_numpy(arrays[0]), np.full(4, 0.5))  # 3·1/6
    np.testing.assert_array_equal(to_numpy(arrays[1]), host[1])  # under the bound


def test_clip_by_value_keeps_nan(xp):
    a = xp.asarray(np.array([-5.0, -0.5, 0.5, 5.0, np.nan], np.float32))
    ops.clip_by_value_([a], 1.0)
    np.testing.assert_array_equal(to_numpy(a), [-1.0, -0.5, 0.5, 1.0, np.nan])


def test_nonfinite_norm_raises_when_asked_and_writes_nothing():
    a = np.ones(10, np.float32)
    a[3] = np.inf
    before = a.copy()
    with pytest.raises(FloatingPointError, match="nothing was clipped"):
        ops.clip_by_global_norm_([a], 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(a, before)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda a: ops.clip_by_global_norm_([a], -1.0), ValueError, "max_norm: expected"),
        (lambda a: ops.clip_by_global_norm_([a], math.nan), ValueError, "max_norm"),
        (lambda a: ops.clip_by_norm_([a], 0), ValueError, "max_norm"),
        (lambda a: ops.clip_by_value_([a], -2), ValueError, "clip_value"),
        (lambda a: ops.tensor_norms([a, a.astype(np.float64)]), TypeError, r"xs\[1\]: dtype"),
        (lambda a: ops.tensor_norms([a, a.tolist()]), TypeError, r"xs\[1\]"),
        (lambda a: ops.clip_by_value_([a[::2]], 1.0), ValueError, "C-contiguous"),
    ],
)
def test_bad_input_is_refused_before_any_write(call, exc, match):
    a = np.full(8, 10.0, np.float32)
    with pytest.raises(exc, match=match):
        call(a)
    assert (a == 10.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 1023, 3 * CHUNK + 5])
@pytest.mark.parametrize("alias", [None, 0, 2])  # out separate, out = buffers[0], = buffers[2]
def test_average_of_k_buffers_in_one_pass(xp, dtype, n, alias):
    rng = np.random.default_rng(n)
    host = [rng.standard_normal(n).astype(dtype) for _ in range(3)]
    bufs = [xp.asarray(h.copy()) for h in host]
    out = xp.empty(n, dtype) if alias is None else bufs[alias]
    assert ops.average_(out, bufs) is out
    want = sum(h.astype(np.float64) for h in host) / 3  # float64; the sum order may differ
    assert_rel_close(out, want, 1e-6 if dtype == np.float32 else 1e-15, "average_")


def test_average_refuses_bad_buffers():
    out = np.zeros(4)
    with pytest.raises(ValueError, match="buffers: expected a non-empty list"):
        ops.average_(out, [])
    with pytest.raises(ValueError, match=r"buffers\[1\]: shape"):
        ops.average_(out, [np.zeros(4), np.zeros(5)])
    with pytest.raises(ValueError, match="partially overlaps"):
        big = np.zeros(8)
        ops.average_(big[:4], [big[2:6], np.zeros(4)])


# ------------------------------------------------- every loop of the CUDA kernels

# With one multiprocessor the grid holds a few blocks (at most 2048 threads), so threads loop:
# 70_001 elements reach the unrolled main loop (several 16-byte packs of each input per
# thread) and the packs left after it, 4099 the latter, 1, 3 and odd sizes the tail after
# the packs; an input one element into its buffer (b[1:]) the misaligned scalar path.
PATH_SIZES = (0, 1, 3, 4099, 70_001)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", PATH_SIZES)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])  # 1–4 specialized, 5 and 6 the any-k loop
def test_cuda_average_every_path_bitwise(monkeypatch, dtype, n, k):
    """out = (b_0 + … + b_{k−1})·(1/k), summed in that order in dtype, bit for bit: aligned,
    one input misaligned (out and the rest aligned), out misaligned, out = an input."""
    import cupy

    from gpugd import _cuda

    monkeypatch.setattr(_cuda, "sm_count", lambda: 1)
    rng = np.random.default_rng(100 * k + n)
    host = [rng.standard_normal(n + 1).astype(dtype) for _ in range(k)]
    u = {4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]

    def expected(views):
        acc = views[0].copy()
        for b in views[1:]:
            acc += b
        return acc * dtype(1.0 / k)

    # (offset of each input, offset of out or the input out is)
    cases = [([0] * k, 0), ([0] * (k - 1) + [1], 0), ([0] * k, 1), ([1] * k, "alias 0")]
    if k > 1:
        cases += [([0] * k, f"alias {k - 1}"), ([0] * (k - 2) + [1, 0], f"alias {k - 1}")]
    for offs, out_at in cases:
        bufs = [cupy.asarray(h) for h in host]
        views = [b[o : o + n] for b, o in zip(bufs, offs, strict=True)]
        want = expected([h[o : o + n] for h, o in zip(host, offs, strict=True)])
        if isinstance(out_at, str):
            j = int(out_at.split()[1])
            out, outbuf, o_out = views[j], bufs[j], offs[j]
        else:
            outbuf = cupy.full(n + 1, np.nan, dtype)
            out, o_out = outbuf[out_at : out_at + n], out_at
        assert ops.average_(out, views) is out
        got = to_numpy(outbuf)
        what = f"k={k} inputs at +{offs}, out {out_at}"
        np.testing.assert_array_equal(got[o_out : o_out + n].view(u), want.view(u), what)
        rest = np.delete(np.arange(n + 1), np.arange(o_out, o_out + n))
        if isinstance(out_at, str):  # the buffer's element beside the view is untouched
            np.testing.assert_array_equal(got[rest], host[j][rest], what)
        else:
            assert np.isnan(got[rest]).all(), f"{what}: wrote outside out"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1])
def test_cuda_norm_pass_every_path(monkeypatch, dtype, offset):
    """tensor_norms over tensors of every path size, aligned and misaligned views, with a
    small grid: norms within 1e-13 of the CPU's, the zero and non-finite counts exact, and
    the same bits as with a full grid."""
    import cupy

    from gpugd import _cuda

    rng = np.random.default_rng(offset)
    sizes = (1, 3, 4099, 70_001, CHUNK + 77)
    host = [rng.standard_normal(n + offset).astype(dtype) for n in sizes]
    for i, h in enumerate(host):
        h[offset::5] = 0
        if i % 2:
            h[-1] = np.inf
    views = [h[offset:] for h in host]
    cpu = ops.tensor_norms(views)
    runs = []
    for sms in (1, 132):
        monkeypatch.setattr(_cuda, "sm_count", lambda s=sms: s)
        runs.append(ops.tensor_norms([cupy.asarray(h)[offset:] for h in host]))
    np.testing.assert_array_equal(to_numpy(runs[0].norms), to_numpy(runs[1].norms))
    for st in runs:
        np.testing.assert_array_equal(to_numpy(st.zero_counts), to_numpy(cpu.zero_counts))
        np.testing.assert_array_equal(to_numpy(st.nonfinite_counts), to_numpy(cpu.nonfinite_counts))
        np.testing.assert_allclose(to_numpy(st.norms), to_numpy(cpu.norms), rtol=1e-13)


# ------------------------------------------------- aliasing among the arguments (issue 20)


@pytest.mark.parametrize(
    "places",
    [(0, 2), (0, 1, 2), (1, 3), (2, 3), (0, 1, 2, 3)],  # where out stands among 4 inputs
)
def test_average_with_out_listed_more_than_once_is_the_mean(xp, places):
    # Each place of out counts out's value before the call: a = 1, b = 4 and
    # average_(a, [a, b, a]) is 2 (the Numba kernel accumulated into out and re-read it:
    # 3.33). On the GPU every input of an element is loaded before it is stored.
    rng = np.random.default_rng(len(places))
    n = 1029
    host = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
    out_host = rng.standard_normal(n).astype(np.float32)
    out = xp.asarray(out_host)
    bufs = [out if i in places else xp.asarray(h) for i, h in enumerate(host)]
    values = [out_host if i in places else h for i, h in enumerate(host)]
    want = sum(v.astype(np.float64) for v in values) / 4
    ops.average_(out, bufs)
    assert_rel_close(out, want, 1e-6, "average_ with out repeated")


def test_average_of_the_reported_case():
    a, b = np.ones(5, np.float32), np.full(5, 4.0, np.float32)
    ops.average_(a, [a, b, a])
    np.testing.assert_array_equal(a, 2.0)


def test_average_refuses_a_non_list():
    with pytest.raises(TypeError, match="buffers: expected a list of arrays, got ndarray"):
        ops.average_(np.zeros(3), np.zeros((2, 3)))


@pytest.mark.parametrize("clip", ["global", "norm", "value"])
@pytest.mark.parametrize(
    "make",
    [
        lambda a: [a, a],  # the same tensor twice
        lambda a: [a[:6], a[4:]],  # overlapping views
        lambda a: [a, a.reshape(2, 5)[1]],  # a view inside another
    ],
)
def test_clipping_refuses_gradients_that_share_memory(xp, clip, make):
    a = xp.asarray(np.arange(1.0, 11.0, dtype=np.float32))
    grads = make(a)
    call = {
        "global": lambda: ops.clip_by_global_norm_(grads, 1.0),
        "norm": lambda: ops.clip_by_norm_(grads, 1.0),
        "value": lambda: ops.clip_by_value_(grads, 1.0),
    }[clip]
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory with grads\[0\]"):
        call()
    np.testing.assert_array_equal(to_numpy(a), np.arange(1.0, 11.0))


def test_clipping_disjoint_views_of_one_buffer_is_fine(xp):
    buf = xp.asarray(np.full(10, 3.0, np.float32))
    norm = ops.clip_by_global_norm_([buf[:5], buf[5:]], 1.0)
    assert norm == pytest.approx(math.sqrt(90.0), rel=1e-6)
    np.testing.assert_allclose(to_numpy(buf), 3.0 / (math.sqrt(90.0) + 1e-6), rtol=1e-6)


@pytest.mark.parametrize("flag", ["False", 1, np.array([True, False]), None])
def test_error_if_nonfinite_must_be_a_bool(flag):
    a = np.full(4, np.inf, np.float32)
    with pytest.raises(TypeError, match="error_if_nonfinite: expected True or False"):
        ops.clip_by_global_norm_([a], 1.0, error_if_nonfinite=flag)
    assert np.isinf(a).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ops.tensor_norms([[1.0, 2.0]]), r"xs\[0\]: expected a numpy.ndarray"),
        (lambda: ops.global_norm(1.5), r"xs: expected a numpy.ndarray or cupy.ndarray"),
        (lambda: ops.clip_by_norm_([[1.0]], 1.0), r"grads\[0\]: expected a numpy.ndarray"),
        (lambda: ops.clip_by_value_(2.0, 1.0), r"grads: expected a numpy.ndarray"),
        (lambda: ops.average_(np.zeros(2), [[0.0, 1.0]]), r"buffers\[0\]: expected"),
        (
            lambda: ops.global_norm(np.ones(3, np.float16).astype(">f2")),
            r"xs: expected dtype .* got >f2",
        ),
    ],
)
def test_non_arrays_are_type_errors_naming_the_argument(call, match):
    with pytest.raises(TypeError, match=match):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("n", [0, 3, 1023, 4 * 4096 + 7])
def test_both_stream_layouts_count_and_sum_alike(dtype, n):
    """The chunk loops of both layouts (``vector.FOUR_STREAMS`` picks one per host, so the
    other never runs in the suite on that host): Σ x² against float64 and the exact zero
    count, ±0 both counted, subnormals and NaN-free values only."""
    from gpugd._cpu import precision, vector
    from gpugd._cpu import reduce as red

    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    x[rng.random(n) < 0.3] = 0
    x[rng.random(n) < 0.05] = -0.0
    if n:
        x[-1] = np.finfo(dtype).smallest_subnormal
    want_ssq, want_zeros = float(np.sum(x.astype(np.float64) ** 2)), int(np.sum(x == 0))
    v = precision.kernel_view(x)
    q = n // 4
    parts = [v[i * q : (i + 1) * q] for i in range(4)]
    s4, z4 = red._ssq_zeros_four_streams(*parts)
    s_rest, z_rest = red._ssq_zeros_stream(v[4 * q :])
    s1, z1 = red._ssq_zeros_stream(v)
    plain4 = vector._ssq_four_streams(*parts) + vector._ssq_stream(v[4 * q :])
    for ssq, zeros in [(s4 + s_rest, z4 + z_rest), (s1, z1), (plain4, want_zeros)]:
        assert zeros == want_zeros
        assert abs(ssq - want_ssq) <= 1e-13 * want_ssq
    assert red.chunk_stats(v, True) in {(s4 + s_rest, z4 + z_rest), (s1, z1)}
