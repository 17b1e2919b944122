"""Activations against the float64 reference, finite differences of the forward, torch's
definitions, stability for large inputs, out=/in-place, and bad input. Both backends."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ODD_SIZES, assert_rel_close, to_numpy

from gpugd import ops
from gpugd import reference as ref

# public name -> (reference kind, op kwargs, reference a, b; backward from the output?)
ACTS = {
    "sigmoid": ("sigmoid", {}, 0.0, 0.0, True),
    "tanh": ("tanh", {}, 0.0, 0.0, True),
    "relu": ("relu", {}, 0.0, 0.0, False),
    "leaky_relu": ("leaky_relu", {"negative_slope": 0.2}, 0.2, 0.0, False),
    "elu": ("elu", {"alpha": 0.7}, 0.7, 0.0, False),
    "selu": ("selu", {}, 0.0, 0.0, False),
    "gelu": ("gelu", {}, 0.0, 0.0, False),
    "gelu-tanh": ("gelu_tanh", {"approximate": "tanh"}, 0.0, 0.0, False),
    "softplus": ("softplus", {"beta": 2.0, "threshold": 5.0}, 2.0, 5.0, False),
    "silu": ("silu", {}, 0.0, 0.0, False),
}
RTOL = {np.float32: 2e-6, np.float64: 1e-13}


def _op(name):
    return name.split("-")[0]


def _kw(name):
    kw = dict(ACTS[name][1])
    return kw


def _call(name, direction, *args, **extra):
    fn = getattr(ops, _op(name) + ("_backward" if direction == "bwd" else ""))
    kw = _kw(name)
    if _op(name) in ("leaky_relu", "elu"):  # positional parameters, as torch's functional
        return fn(*args, *kw.values(), **extra)
    return fn(*args, **kw, **extra)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", ODD_SIZES)
@pytest.mark.parametrize("name", list(ACTS))
def test_forward_and_backward_match_float64(xp, name, n, dtype):
    kind, _, a, b, from_output = ACTS[name]
    rng = np.random.default_rng(n)
    x0 = (rng.standard_normal(n) * 3).astype(dtype)
    dy0 = rng.standard_normal(n).astype(dtype)
    y = _call(name, "fwd", xp.asarray(x0))
    assert_rel_close(y, ref.act_forward(kind, x0, a, b), RTOL[dtype], f"{name} forward")
    v0 = to_numpy(y) if from_output else x0
    dx = _call(name, "bwd", xp.asarray(dy0), xp.asarray(v0))
    assert_rel_close(dx, ref.act_backward(kind, dy0, v0, a, b), RTOL[dtype], f"{name} backward")


@pytest.mark.parametrize("name", list(ACTS))
def test_backward_is_the_derivative_of_the_forward(name):
    # central differences of the float64 forward kernel, away from kinks
    kind, _, a, b, from_output = ACTS[name]
    x = np.random.default_rng(1).uniform(-4, 4, 2001)
    x = x[np.abs(x) > 1e-3]
    if kind == "softplus":
        x = x[np.abs(a * x - b) > 1e-3]
    h = 1e-6
    fd = (_call(name, "fwd", x + h) - _call(name, "fwd", x - h)) / (2 * h)
    v = _call(name, "fwd", x) if from_output else x
    dx = _call(name, "bwd", np.ones_like(x), v)
    np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(ACTS))
def test_large_inputs_stay_finite(xp, name):
    x = xp.asarray(np.array([-1e4, -100.0, -88.0, -20.0, 20.0, 88.0, 100.0, 1e4], np.float32))
    y = _call(name, "fwd", x)
    v = y if ACTS[name][4] else x
    dx = _call(name, "bwd", xp.ones_like(x), v)
    assert np.isfinite(to_numpy(y)).all(), to_numpy(y)
    assert np.isfinite(to_numpy(dx)).all(), to_numpy(dx)


@pytest.mark.parametrize("name", ["gelu", "silu", "softplus", "sigmoid", "elu"])
def test_tails_keep_relative_accuracy_elementwise(xp, name):
    # Where the naive forms cancel (1 + erf(x/√2) for x ≪ 0, 1 − e^x near 0): every element
    # close to float64, not just the array norm. The bound is 2e-5, not a few ulps: in the
    # far tail e^(−x²/2) multiplies the rounding of x²/2 by x²/2 (≈ 70 at x = −12); the
    # naive 1 + erf form is off by 100% there.
    kind, _, a, b, _ = ACTS[name]
    x0 = np.concatenate([-np.geomspace(1e-6, 12, 200), np.geomspace(1e-6, 12, 200)]).astype(
        np.float32
    )
    y = to_numpy(_call(name, "fwd", xp.asarray(x0))).astype(np.float64)
    want = ref.act_forward(kind, x0, a, b)
    nz = want != 0
    np.testing.assert_allclose(y[nz], want[nz], rtol=2e-5)
    if name == "gelu" and xp is np:
        # the CPU's Φ splits x² exactly (vmath._phi_gauss32): measured 4.1e-7 over ±13
        np.testing.assert_allclose(y[nz], want[nz], rtol=1e-6)


def test_nan_propagates(xp):
    x = xp.asarray(np.array([np.nan, 1.0], np.float32))
    for name in ACTS:
        assert np.isnan(to_numpy(_call(name, "fwd", x))[0]), name


@pytest.mark.parametrize("name", ["sigmoid", "gelu", "softplus", "leaky_relu"])
@pytest.mark.parametrize("n", [1001, 3 * 4096 + 5, (1 << 17) + 4099])
def test_out_and_in_place(xp, name, n):
    # sizes: one block, several blocks and a tail of the CPU's in-place path (computed into
    # an L1 scratch and copied back, so the loops vectorize), and the parallel path
    x0 = np.linspace(-3, 3, n).astype(np.float32)
    want = to_numpy(_call(name, "fwd", xp.asarray(x0)))
    out = xp.full_like(xp.asarray(x0), np.nan)
    assert _call(name, "fwd", xp.asarray(x0), out=out) is out
    np.testing.assert_array_equal(to_numpy(out), want)
    x = xp.asarray(x0)
    _call(name, "fwd", x, out=x)  # in place
    np.testing.assert_array_equal(to_numpy(x), want)
    dy0 = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    dy = xp.asarray(dy0.copy())
    v = xp.asarray(want) if ACTS[name][4] else xp.asarray(x0)
    want_dx = to_numpy(_call(name, "bwd", dy, v))
    _call(name, "bwd", dy, v, out=dy)  # into grad_out
    np.testing.assert_array_equal(to_numpy(dy), want_dx)
    _call(name, "bwd", xp.asarray(dy0.copy()), v, out=v)  # over the saved input/output
    np.testing.assert_array_equal(to_numpy(v), want_dx)


def test_matches_torch_when_importable():
    torch = pytest.importorskip("torch", reason="torch is an optional peer")
    F = torch.nn.functional
    x = np.random.default_rng(2).standard_normal(5000) * 3
    tx = torch.tensor(x, requires_grad=True)
    pairs = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": F.relu,
        "leaky_relu": lambda t: F.leaky_relu(t, 0.2),
        "elu": lambda t: F.elu(t, 0.7),
        "selu": F.selu,
        "gelu": F.gelu,
        "gelu-tanh": lambda t: F.gelu(t, approximate="tanh"),
        "softplus": lambda t: F.softplus(t, beta=2.0, threshold=5.0),
        "silu": F.silu,
    }
    for name, f in pairs.items():
        ty = f(tx)
        (g,) = torch.autograd.grad(ty.sum(), tx)
        y = _call(name, "fwd", x)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-15, err_msg=name)
        v = y if ACTS[name][4] else x
        dx = _call(name, "bwd", np.ones_like(x), v)
        np.testing.assert_allclose(dx, g.numpy(), rtol=1e-11, atol=1e-14, err_msg=name)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda x: ops.relu(x.astype(np.int32)), TypeError, "x: expected dtype"),
        (lambda x: ops.relu(x[::2]), ValueError, "x: expected a C-contiguous"),
        (lambda x: ops.relu(x, out=np.empty(3, np.float32)), ValueError, "out: shape"),
        (lambda x: ops.relu(x, out=np.empty(8)), TypeError, "out: dtype"),
        (lambda x: ops.relu(x[:6], out=x[2:]), ValueError, "out partially overlaps x"),
        (lambda x: ops.relu_backward(x, x[:4]), ValueError, "x: shape"),
        (lambda x: ops.softplus(x, beta=0.0), ValueError, "beta: expected a finite value > 0"),
        (lambda x: ops.gelu(x, approximate="fast"), ValueError, "approximate"),
        (lambda x: ops.leaky_relu(x, float("nan")), ValueError, "negative_slope"),
        (lambda x: ops.elu(x, "1"), TypeError, "alpha"),
    ],
)
def test_bad_input_is_refused_before_any_write(call, exc, match):
    x = np.full(8, -2.0, np.float32)
    with pytest.raises(exc, match=match):
        call(x)
    assert (x == -2.0).all()


# ------------------------------------------------- every loop of the CUDA kernels

# With one multiprocessor the grid holds a few blocks (at most 2048 threads), so threads loop:
# 70_001 elements reach the unrolled main loop (several 16-byte packs per thread) and the
# packs left after it, 4099 the latter; 1, 3 and odd sizes the tail after the packs; one
# element of offset (views x[1:]) the misaligned scalar path.
PATH_SIZES = (0, 1, 3, 4099, 70_001)
# (offset of x or grad_out, of y or the saved input, of the output; or "in place")
LAYOUTS = [(0, 0, 0), (1, 1, 1), (0, 1, 0), (0, 0, 1), "in place"]


def _bits(a):
    a = to_numpy(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", PATH_SIZES)
@pytest.mark.parametrize("name", list(ACTS))
def test_cuda_loops_give_the_bits_of_the_aligned_full_grid(monkeypatch, name, n, dtype):
    """Each element's result is the same function of its inputs on every path of the kernel
    (main loop, leftover packs, tail, misaligned scalar loop, in place), so the bits equal
    those of the default launch over fresh (aligned) arrays, which the float64 tests and
    test_cuda_parity check."""
    import cupy

    from gpugd import _cuda

    rng = np.random.default_rng(n)
    x0 = (rng.standard_normal(n) * 3).astype(dtype)
    dy0 = rng.standard_normal(n).astype(dtype)
    v0 = to_numpy(_call(name, "fwd", x0)) if ACTS[name][4] else x0
    want_y = _bits(_call(name, "fwd", cupy.asarray(x0)))
    want_dx = _bits(_call(name, "bwd", cupy.asarray(dy0), cupy.asarray(v0)))
    monkeypatch.setattr(_cuda, "sm_count", lambda: 1)

    def view(h, o):  # h at offset o of a buffer one element longer, poisoned around it
        buf = cupy.full(n + 1, np.nan, dtype)
        buf[o : o + n] = cupy.asarray(h)
        return buf, buf[o : o + n]

    for lay in LAYOUTS:
        if lay == "in place":
            _, x = view(x0, 1)
            _call(name, "fwd", x, out=x)
            np.testing.assert_array_equal(_bits(x), want_y, f"{name} forward in place")
            _, g = view(dy0, 0)
            _call(name, "bwd", g, cupy.asarray(v0), out=g)
            np.testing.assert_array_equal(_bits(g), want_dx, f"{name} backward into grad_out")
            continue
        o1, o2, o3 = lay
        _, x = view(x0, o1)
        ybuf, y = view(np.zeros(n, dtype), o3)
        _call(name, "fwd", x, out=y)
        np.testing.assert_array_equal(_bits(y), want_y, f"{name} forward {lay}")
        outside = n if o3 == 0 else 0  # the buffer's element beside the view
        assert np.isnan(to_numpy(ybuf)[outside]), f"{name} forward {lay} wrote outside"
        _, g = view(dy0, o1)
        _, v = view(v0, o2)
        dbuf, d = view(np.zeros(n, dtype), o3)
        _call(name, "bwd", g, v, out=d)
        np.testing.assert_array_equal(_bits(d), want_dx, f"{name} backward {lay}")
        assert np.isnan(to_numpy(dbuf)[outside]), f"{name} backward {lay} wrote outside"


EDGE_X = [-0.0, 0.0, -np.inf, np.inf, np.nan, -90.0, -103.9, -13.3, -14.0, 1e-40, -1e-40]


def _exact_forward(name: str, x: float, a: float, b: float):
    """f(x) in mpmath (200 bits), the independent reference of the edge test."""
    import mpmath as mp

    if x == -math.inf and name in ("silu", "gelu"):
        return -0.0  # the limit x·σ(x), x·Φ(x) → −0 (mpmath's −Inf·0 is NaN, as torch's)
    with mp.workprec(200):
        v = mp.mpf(x)
        if name == "tanh":
            return mp.tanh(v)
        if name == "sigmoid":
            return 1 / (1 + mp.exp(-v))
        if name == "elu":
            return v if v > 0 else a * mp.expm1(v)
        if name == "selu":
            return ref.SELU_SCALE * (v if v > 0 else ref.SELU_ALPHA * mp.expm1(v))
        if name == "softplus":
            return v if a * v > b else mp.log1p(mp.exp(a * v)) / a
        if name == "silu":
            return v / (1 + mp.exp(-v))
        return v * mp.ncdf(v)  # gelu


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "elu", "selu", "softplus", "silu", "gelu"])
def test_forward_edges_keep_signed_zeros_subnormals_and_infinities(name, dtype):
    """Against mpmath: ±0 keep their sign (tanh(−0) = −0, elu(−0) = −0), softplus(−Inf) = 0,
    ±Inf and NaN, results in the subnormal range not flushed (silu(−90) in float32 is
    −7.4e-38, where torch gives −0). Within 4 ulps, plus |x| units of the least subnormal
    where f is x times a subnormal factor (silu, gelu: that factor rounds once); the deep
    tail of GELU too (x/√2 carried as head + tail, test_activation_edges.py has the grid).
    silu(−Inf) = gelu(−Inf) = −0, the limit (torch: NaN)."""
    _, _, a, b, _ = ACTS[name]
    x = np.array(EDGE_X, dtype)
    got = _call(name, "fwd", x.copy())
    with np.errstate(over="ignore"):
        want = np.array(
            [np.nan if v != v else float(_exact_forward(name, float(v), a, b)) for v in x]
        ).astype(dtype)
    zero = (x == 0) & (want == 0)
    want[zero] = x[zero]  # f(±0) = ±0 where f(0) = 0 (mpmath has no signed zero)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[ok]), np.signbit(want[ok]))
    np.testing.assert_array_equal(got[ok] == 0, want[ok] == 0)
    np.testing.assert_array_equal(got[ok & ~np.isfinite(want)], want[ok & ~np.isfinite(want)])
    fin = ok & np.isfinite(want)
    tiny = np.finfo(dtype).smallest_subnormal
    tol = 4 * np.maximum(np.spacing(np.abs(want[fin])), tiny) + np.abs(x[fin]) * tiny
    assert (np.abs(got[fin] - want[fin]) <= tol).all(), (x[fin], got[fin], want[fin])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_loops_store_every_element_with_plain_stores(dtype):
    """In place, a branch that gives dy back (relu's x > 0, softplus past its threshold)
    would have its store dropped as redundant, and LLVM would vectorize the rest with
    masked stores (vmaskmovps: microcoded on AMD Zen 3, where relu in place ran at 0.6×
    its out-of-place speed; AVX-512's are ``{%k}``-masked moves). ``vmath.opaque`` keeps
    every store a plain one, and the loops still vectorize: the machine code says so."""
    import platform
    import re

    from numba import njit

    from gpugd._cpu import activations as act

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("masked stores are an x86 AVX instruction")
    t = dtype

    @njit(error_model="numpy", fastmath={"contract"})
    def relu_in(dy, x, c):
        act._map3(act._relu_b, dy, x, dy, t(0), t(0), c, False)

    @njit(error_model="numpy", fastmath={"contract"})
    def softplus_in(dy, x, c):
        act._map3(act._softplus_b, dy, x, dy, t(1), t(20), c, False)

    @njit(error_model="numpy", fastmath={"contract"})
    def relu_fwd_in(x, c):
        act._map2(act._relu_f, x, x, t(0), t(0), c, False)

    x = np.linspace(-3, 3, 1000).astype(dtype)
    # a masked store: maskmov (AVX2), or an AVX-512 move into memory under a mask (a masked
    # move between registers is a blend, which is fine)
    masked = re.compile(r"maskmov|\bvmov\w+\s+%[xyz]mm\d+,\s*[-\w]*\([^)\n]*\)\s*\{%k[1-7]\}")
    packed = re.compile(r"\bv\w+p[sd]\s[^\n]*%[yz]mm")  # 256/512-bit vector arithmetic
    for fn, args in (
        (relu_in, (x.copy(), x, act.K32)),
        (softplus_in, (x.copy(), x, act.K32)),
        (relu_fwd_in, (x.copy(), act.K32)),
    ):
        fn(*args)
        asm = "\n".join(fn.inspect_asm().values())
        assert not masked.search(asm), fn.__name__
        assert packed.search(asm), f"{fn.__name__} did not vectorize"
    dy = np.arange(1000, dtype=dtype) - 500
    want = np.where(x > 0, dy, 0).astype(dtype)
    relu_in(dy, x, act.K32)
    np.testing.assert_array_equal(dy, want)


def test_transcendental_loops_take_their_constants_as_runtime_values():
    """``vmath.K32`` passed in as an argument: the vector loops of gelu and silu backward
    hold every constant in a register or a stack slot, none re-materialized from the
    constant pool per iteration (Numba's large code model: a ``movabs`` of its address,
    then a broadcast; gelu's loop was 180 instructions with 26 of them, now 132 with
    none, 2.28 → 1.79 ns/element on one core). The bits are those of literal constants."""
    import platform

    from benchmarks.experiments.hoisted_consts import hot_loop, loops
    from gpugd._cpu import activations as act

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("movabs is an x86-64 instruction")
    x = np.linspace(-12, 12, 4096).astype(np.float32)
    dy = np.cos(x).astype(np.float32)
    zero = np.float32(0)
    for name, rule in {"gelu": act._gelu_b, "silu": act._silu_b}.items():
        literal, argument = loops(rule)
        got, want = np.empty_like(x), np.empty_like(x)
        argument(dy, x, got, zero, zero, act.K32, 1)
        literal(dy, x, want, zero, zero, 1)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        loop = "\n".join(hot_loop(argument))
        wide = loop.count("ymm") + loop.count("zmm")  # AVX2 or AVX-512
        assert wide > 50, f"{name} did not vectorize"
        # none on AVX2 (Zen 3); silu's AVX-512 loop (Zen 4) reloads one (was 26 in gelu)
        assert loop.count("movabs") <= 1, f"{name}: {loop.count('movabs')} constants reloaded"
