"""The CUDA kernels against the Numba kernels, bit for bit (cuda marker: on a device, or the
kernels of kernels/*.cu executed by the CPU emulator of tests/cudaemu where none answers).

The arithmetic contract (README, "The same numbers on both backends"):
  * elementwise kernels without transcendental functions — every optimizer rule in every
    precision policy (with grad_scale and clip_value fused in), axpy_/scale_, dropout,
    the rounding of float16/bfloat16 stores (nearest-even and stochastic) — give the same
    bits on both backends: the scalars are computed once on the host in float64 and rounded
    once to the arrays' dtype for both, every a·b + c is an explicit fma on both, NVRTC
    contracts nothing else (--fmad=false), Numba's loops have no fastmath;
  * transcendental activations (exp, expm1, log1p, erfc) agree within ``ACT_ULPS`` ulps;
  * reductions (Σ x², norms) are deterministic on each backend and agree within
    ``REDUCE_RTOL`` (both accumulate in float64, in different orders); the CUDA reduction
    gives the same bits whatever the grid size.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from conftest import ODD_SIZES, to_numpy
from test_optim import ALL, IDS, INIT, run_op

from gpugd import ops
from gpugd import reference as ref

pytestmark = pytest.mark.cuda

F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# Worst seen on the emulator (glibc's exp/expm1/log1p/erfc against the Numba forms):
# float64 tanh-GELU backward 3.96, float32 2.72, SiLU backward 2.47. libdevice's own bounds
# (erfcf 4 ulps, expf 2) add to that on a GPU; 16 leaves room for them.
ACT_ULPS = {F32: 16, F64: 16}
REDUCE_RTOL = 1e-13


def _cupy():
    import cupy

    return cupy


def assert_same_bits(cpu, gpu, what: str) -> None:
    """Equal bit patterns (signed zeros included; any NaN equals any NaN, since which NaN
    an operation returns is the hardware's: x86 keeps payloads and makes 0·Inf the negative
    quiet NaN, NVIDIA GPUs return the canonical 0x7fffffff); else the first few."""
    a, b = to_numpy(cpu), to_numpy(gpu)
    assert a.dtype == b.dtype and a.shape == b.shape, (
        f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    )
    ua = a.reshape(-1).view(UINT[a.dtype.itemsize])
    ub = b.reshape(-1).view(UINT[b.dtype.itemsize])
    differ = ua != ub
    if a.dtype.kind == "f" or a.dtype == BF16:
        with np.errstate(invalid="ignore"):
            nan = np.isnan(a.reshape(-1).astype(np.float32)) & np.isnan(
                b.reshape(-1).astype(np.float32)
            )
        differ &= ~nan
    bad = np.flatnonzero(differ)
    if bad.size:
        rows = "\n".join(
            f"  [{i}] cpu={a.reshape(-1)[i]!r} ({ua[i]:#x}) cuda={b.reshape(-1)[i]!r} ({ub[i]:#x})"
            for i in bad[:6]
        )
        raise AssertionError(f"{what}: {bad.size} of {ua.size} elements differ:\n{rows}")


# (id, parameter dtype, state dtype, fp32 master weights, stochastic rounding, as a list)
POLICIES = [
    ("f32", F32, F32, False, False, False),
    ("f64", F64, F64, False, False, False),
    ("f32-list", F32, F32, False, False, True),
    ("f64-list", F64, F64, False, False, True),
    *[
        (f"{p.name}p-{s.name}s" + ("-master" if m else ""), p, s, m, False, True)
        for p in (F16, BF16)
        for s in (F32, BF16)
        for m in (False, True)
    ],
    ("bfloat16p-float32s-master-sr", BF16, F32, True, True, True),
    ("bfloat16p-bfloat16s-sr", BF16, BF16, False, True, True),
]
SIZES = {False: [4099], True: [1023, 5, 1, 70_003]}  # vector body + tail; several chunks
STEPS = 3


def _run_policy(xp, rule, hp, names, policy, seed=5):
    """STEPS steps of ``rule`` under ``policy``; every array the step writes, on the host."""
    _, pdt, sdt, master, sr, as_list = policy
    rng = np.random.default_rng(seed)
    sizes = SIZES[as_list]
    p0 = [rng.standard_normal(n).astype(pdt) for n in sizes]
    ps = [xp.asarray(a) for a in p0]
    states = {k: [xp.asarray(np.full(n, INIT.get(k, 0.0), sdt)) for n in sizes] for k in names}
    masters = [xp.asarray(a.astype(F32)) for a in p0] if master else None
    b1, mom_decay = hp.get("betas", (0.9, 0.999))[0], hp.get("momentum_decay", 4e-3)
    mu_product = 1.0
    for t in range(1, STEPS + 1):
        gs = [xp.asarray(rng.standard_normal(n).astype(pdt)) for n in sizes]
        extra = dict(grad_scale=0.75, clip_value=1.5) if t == 2 else {}
        if master:
            extra["master"] = masters if as_list else masters[0]
        if sr:
            extra.update(rounding="stochastic", seed=11 + t)
        if as_list:
            run_op(rule, xp, ps, gs, states, hp, t, mu_product, **extra)
        else:
            st = {k: v[0] for k, v in states.items()}
            run_op(rule, xp, ps[0], gs[0], st, hp, t, mu_product, **extra)
        mu_product *= ref.nadam_mu(t, b1, mom_decay)
    out = {f"p[{i}]": to_numpy(a) for i, a in enumerate(ps)}
    out.update({f"{k}[{i}]": to_numpy(a) for k, v in states.items() for i, a in enumerate(v)})
    if master:
        out.update({f"master[{i}]": to_numpy(a) for i, a in enumerate(masters)})
    return out


# every rule case × every policy (float64 lists for Adam only: fp64 single arrays cover
# every rule, and each Numba specialization costs compile time in CI)
RULE_POLICY = [
    pytest.param(case, pol, id=f"{IDS[i]}-{pol[0]}")
    for i, case in enumerate(ALL)
    for pol in POLICIES
    if not (pol[0] == "f64-list" and case[0] != "adam")
]


@pytest.mark.parametrize(("case", "policy"), RULE_POLICY)
def test_every_rule_and_policy_gives_the_same_bits(case, policy):
    rule, cid, hp, names = case
    cpu = _run_policy(np, rule, hp, names, policy)
    gpu = _run_policy(_cupy(), rule, hp, names, policy)
    assert cpu.keys() == gpu.keys()
    for k in cpu:
        assert_same_bits(cpu[k], gpu[k], f"{rule}-{cid} {policy[0]} {k}")


# fp32 values at the edges of float16/bfloat16 rounding: ties to even either way, the last
# values below the overflow thresholds, subnormals and the underflow edge, ±0, ±Inf, NaNs
# with payloads.
EDGE_BITS = np.array(
    [
        0x00000000,
        0x80000000,
        0x7F800000,
        0xFF800000,
        0x7FC00000,
        0xFFC00001,
        0x7F800001,
        0x7FA00000,
        0x3F800000,
        0x3F801000,
        0x3F803000,
        0x3F802000,
        0x3F800FFF,
        0x3F808000,
        0x3F818000,
        0x3F817FFF,
        0x477FE000,
        0x477FEFFF,
        0x477FF000,
        0x47800000,
        0x7F7FFFFF,
        0x7F7F8000,
        0x7F7F7FFF,
        0x38800000,
        0x387FFFFF,
        0x33800000,
        0x33000000,
        0x33000001,
        0x32FFFFFF,
        0x00000001,
        0x807FFFFF,
        0x00800000,
        0x34000000,
        0x35C00000,
        0xB5C00001,
    ],
    np.uint32,
)


@pytest.mark.parametrize(
    ("pdt", "rounding"),
    [(F16, "nearest"), (BF16, "nearest"), (BF16, "stochastic")],  # stochastic: bf16 only
    ids=["float16", "bfloat16", "bfloat16-stochastic"],
)
def test_half_precision_stores_round_the_same_bits(pdt, rounding):
    """p receives round(master) where lr = 0 leaves the fp32 master unchanged: the stores of
    every edge value (and 4,096 random ones) compared bit for bit, and with ml_dtypes."""
    rng = np.random.default_rng(2)
    rand = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    master = np.concatenate([EDGE_BITS, rand]).view(np.float32)
    out, masters = {}, {}
    for xp in (np, _cupy()):
        p = xp.asarray(np.zeros(master.size, pdt))
        m = xp.asarray(master.copy())
        g = xp.asarray(np.zeros(master.size, pdt))
        ops.sgd_([p], [g], lr=0.0, master=[m], rounding=rounding, seed=7)
        out[xp.__name__], masters[xp.__name__] = to_numpy(p), to_numpy(m)
    # finite masters stay as they are (p − 0·(0·p + 0) = p); ±Inf becomes NaN (0·Inf) and a
    # NaN stays a NaN (which NaN is the hardware's: compared as a class)
    assert_same_bits(masters["numpy"], masters["cupy"], "masters")
    finite = np.isfinite(master)
    assert_same_bits(masters["numpy"][finite], master[finite], "finite masters unchanged")
    assert_same_bits(out["numpy"], out["cupy"], f"{pdt.name} stores ({rounding})")
    if rounding == "nearest":  # IEEE round-to-nearest-even, as ml_dtypes casts
        with np.errstate(over="ignore"):  # values past the format's range round to ±Inf
            want = master[finite].astype(pdt)
        assert_same_bits(out["numpy"][finite], want, "against ml_dtypes")
        assert np.isnan(out["numpy"][~finite].astype(np.float32)).all()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n", ODD_SIZES)
def test_axpy_and_scale_give_the_same_bits(dtype, n):
    rng = np.random.default_rng(n)
    x0, y0 = rng.standard_normal((2, n)).astype(dtype)
    res = {}
    for xp in (np, _cupy()):
        x, y = xp.array(x0), xp.array(y0)  # copies: the CPU run must not move x0
        ops.axpy_(x, 0.3, y)
        ops.scale_(x, -1.7)
        ops.axpy_(x, 0.5, x)  # y is x: allowed, so the kernel's pointers are not restrict
        res[xp.__name__] = to_numpy(x)
    assert_same_bits(res["numpy"], res["cupy"], f"axpy/scale {dtype.name} n={n}")


@pytest.mark.parametrize("dtype", [F32, F64])
def test_dropout_gives_the_same_bits(dtype):
    cp = _cupy()
    x0 = np.random.default_rng(0).standard_normal(10_007).astype(dtype)
    cpu = ops.dropout(x0, 0.25, seed=3, offset=99)
    gpu = ops.dropout(cp.asarray(x0), 0.25, seed=3, offset=99)
    assert_same_bits(cpu, gpu, f"dropout {dtype.name}")
    dy = np.random.default_rng(1).standard_normal(10_007).astype(dtype)
    assert_same_bits(
        ops.dropout_backward(dy, 0.25, seed=3, offset=99),
        ops.dropout_backward(cp.asarray(dy), 0.25, seed=3, offset=99),
        "dropout_backward",
    )
    assert_same_bits(
        ops.dropout_mask(4099, 0.6, seed=5, offset=1),
        ops.dropout_mask(4099, 0.6, seed=5, offset=1, xp=cp),
        "dropout_mask",
    )


# name, keyword arguments; the algebraic ones give the same bits, the rest agree within
# ACT_ULPS (below)
ACTS = [
    ("relu", {}),
    ("leaky_relu", {}),
    ("elu", {}),
    ("selu", {}),
    ("gelu", {}),
    ("gelu", {"approximate": "tanh"}),
    ("softplus", {}),
    ("silu", {}),
    ("sigmoid", {}),
    ("tanh", {}),
]
EXACT = {"relu", "leaky_relu"}  # and every backward from the output (sigmoid, tanh)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize(("name", "kw"), ACTS, ids=[a + ("-tanh" if k else "") for a, k in ACTS])
def test_activations_agree_within_stated_ulps(name, kw, dtype):
    """|cpu − cuda| ≤ ACT_ULPS·eps·max(|cpu|, |cuda|, |u|) + the smallest normal, u = x for
    a forward and dy for a backward: within a few ulps of the result or, where the formula
    cancels (the tanh GELU's 1 + tanh for x < 0, SiLU's derivative near its zero), of the
    argument it scales with; results below the normal range may differ. Relative accuracy
    in GELU's far tail is not part of it: the float32 CUDA form rounds x/√2 before erfc,
    whose condition number 2z² makes that ~70 ulps at x = −12 (the Numba form splits x²
    exactly and stays within a few)."""
    cp = _cupy()
    rng = np.random.default_rng(4)
    x0 = np.concatenate([rng.standard_normal(4000) * 4, np.linspace(-30, 30, 97)]).astype(dtype)
    dy0 = rng.standard_normal(x0.size).astype(dtype)
    fwd, bwd = getattr(ops, name), getattr(ops, f"{name}_backward")
    v0 = fwd(x0, **kw) if name in ("sigmoid", "tanh") else x0  # their backward takes y
    cpu = {"forward": fwd(x0, **kw), "backward": bwd(dy0, v0, **kw)}
    gpu = {
        "forward": to_numpy(fwd(cp.asarray(x0), **kw)),
        "backward": to_numpy(bwd(cp.asarray(dy0), cp.asarray(v0), **kw)),
    }
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    for what in cpu:
        a, b = np.asarray(cpu[what], np.float64), gpu[what].astype(np.float64)
        if name in EXACT or (what == "backward" and name in ("sigmoid", "tanh")):
            assert_same_bits(cpu[what], gpu[what], f"{name} {what} {dtype.name}")
            continue
        u = dy0 if what == "backward" else x0
        scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.abs(u.astype(np.float64)))
        err = (np.abs(a - b) - tiny) / (eps * scale + (scale == 0))
        worst = int(np.argmax(err))
        assert err[worst] <= ACT_ULPS[dtype], (
            f"{name}{kw or ''} {what} {dtype.name}: {err[worst]:.1f} ulps apart at x={x0[worst]!r}"
            f" (cpu {a[worst]!r}, cuda {b[worst]!r})"
        )


@pytest.mark.parametrize("dtype", [F16, BF16, F32, F64])
def test_norms_agree_and_the_cuda_reduction_ignores_the_grid(dtype, monkeypatch):
    from gpugd import _cuda

    cp = _cupy()
    rng = np.random.default_rng(6)
    # 15 chunks: with 1 SM (8 blocks) blocks loop over several, as on a GPU for big tensors
    xs = [rng.standard_normal(n).astype(dtype) for n in (70_001, 3, 1024, 700_000)]
    cpu = ops.tensor_norms(xs)
    runs = []
    for sms in (1, 3, 132):
        monkeypatch.setattr(_cuda, "sm_count", lambda s=sms: s)
        gpu = ops.tensor_norms([cp.asarray(a) for a in xs])
        runs.append((to_numpy(gpu.norms), float(gpu.norm)))
    for norms, norm in runs[1:]:
        assert_same_bits(runs[0][0], norms, "per-tensor norms across grid sizes")
        assert runs[0][1] == norm
    np.testing.assert_allclose(runs[0][0], to_numpy(cpu.norms), rtol=REDUCE_RTOL, atol=0)
    np.testing.assert_allclose(runs[0][1], float(cpu.norm), rtol=REDUCE_RTOL)


def test_sum_of_squares_is_deterministic_on_each_backend():
    cp = _cupy()
    x0 = np.random.default_rng(8).standard_normal(300_007).astype(np.float32)
    x = cp.asarray(x0)
    first = float(ops.sum_of_squares(x))
    assert all(float(ops.sum_of_squares(x)) == first for _ in range(3))
    cpu = float(ops.sum_of_squares(x0))
    assert cpu == float(ops.sum_of_squares(x0))
    np.testing.assert_allclose(first, cpu, rtol=REDUCE_RTOL)
