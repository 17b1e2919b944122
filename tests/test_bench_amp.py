"""`gpugd bench --suite amp`: the bytes each mixed-precision policy must move, rows that
follow the DESIGN.md schema, and a NumPy peer that computes what gpugd computes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_bench_cli import SCHEMA

import benchmarks
from benchmarks import suite_amp as amp
from gpugd import get_backend

NUMEL = 1 << 12
# The fewest bytes per element, counted by hand: read g, m, v and p or the master copy;
# write m, v, the master copy and p.
BYTES = {
    "fp32": (4 + 4 + 8) + (4 + 8),
    "bf16p-f32s": (2 + 2 + 8) + (2 + 8),
    "bf16p-f32s-master": (2 + 4 + 8) + (4 + 2 + 8),
    "f16p-f32s-master": (2 + 4 + 8) + (4 + 2 + 8),
    "bf16p-bf16s": (2 + 2 + 4) + (2 + 4),
    "bf16p-f32s-master-sr": (2 + 4 + 8) + (4 + 2 + 8),
}


def test_bytes_per_policy():
    assert {k: amp.policy_bytes_per_elem(p) for k, p in amp.POLICIES.items()} == BYTES
    assert BYTES == {
        "fp32": 28,
        "bf16p-f32s": 22,
        "bf16p-f32s-master": 28,
        "f16p-f32s-master": 28,
        "bf16p-bf16s": 14,
        "bf16p-f32s-master-sr": 28,
    }
    # torch's nearest policy beside half-precision params: states in p's dtype, no master
    assert amp.bytes_per_elem(amp.F16, amp.F16, amp.F16, False) == 14
    assert amp.bytes_per_elem(np.float32, np.float32, np.float32, False, nstates=1) == 20


@pytest.fixture(scope="module")
def amp_run(tmp_path_factory):
    """The amp suite at a tiny size: --quick's repeats, every policy on the flat buffer."""
    path = tmp_path_factory.mktemp("bench-amp") / "amp.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(amp, "QUICK", tuple(amp.POLICIES))
        result = benchmarks.run(
            get_backend("cpu"),
            suite="amp",
            quick=True,
            numel=NUMEL,
            json_path=path,
            echo=lambda *a: None,
        )
    return result, json.loads(path.read_text())


def test_amp_rows_follow_the_schema_and_count_bytes_per_policy(amp_run):
    result, data = amp_run
    rows = data["rows"]
    assert rows == json.loads(json.dumps(result["rows"]))
    latency = f"adam_ step latency {amp.LATENCY_TENSORS} tensors"
    expected = {f"adam_ {k} flat{o}" for k in amp.POLICIES for o in ("", " optim")}
    expected |= {f"adam_ {k} resnet50-list{o}" for k in amp.QUICK_LIST for o in ("", " optim")}
    expected |= {f"{latency} eager", f"{latency} ops"}  # "graph" on the GPU only
    assert {r["kernel"] for r in rows} == expected
    torch = benchmarks.harness.optional_torch()
    for r in rows:
        own = {"own_ceiling_gbps", "pct_of_own_ceiling", "detail", "bounds"}
        assert set(r) == SCHEMA | {"policy", "note"} | (set() if "latency" in r["kernel"] else own)
        pol = amp.POLICIES[r["policy"]]
        assert r["dtype"] == pol.param.name
        assert r["bytes"] == BYTES[r["policy"]] * r["numel"]
        layout = r["kernel"].removesuffix(" optim")
        if layout.endswith(" flat"):
            assert (r["numel"], r["tensors"]) == (NUMEL, 1)
        elif layout.endswith("resnet50-list"):
            assert r["tensors"] == 161
        else:
            assert r["policy"] == "fp32" and r["tensors"] == amp.LATENCY_TENSORS
            assert 0.8 * NUMEL < r["numel"] < 1.3 * NUMEL  # about --numel, 200 tensors
        assert r["gbps"] == pytest.approx(r["bytes"] / r["median_s"] / 1e9)
        # a policy row against the tighter of the loop with its own traffic over its own
        # buffers (whose bytes are the row's) and, on the CPU, its compute bound
        master = amp.POLICIES[r["policy"]].master
        want = "inplace" if "latency" in r["kernel"] else ("r1m3w1" if master else "r1m3")
        assert 0 < r["ceiling_gbps"] < float("inf")
        assert r["pct_of_ceiling"] == pytest.approx(100 * r["gbps"] / r["ceiling_gbps"])
        assert all(v > 0 for v in r["baselines"].values())
        if "latency" in r["kernel"]:
            assert r["ceiling"] == want
        else:
            b = r["bounds"]
            assert b["mem"] == want and r["own_ceiling_gbps"] == pytest.approx(b["mem_gbps"])
            assert r["pct_of_own_ceiling"] == pytest.approx(100 * r["gbps"] / r["own_ceiling_gbps"])
            assert 0 < b["math_ns_per_elem"] and 0 < b["math_gbps"] < float("inf")  # CPU run
            tight = min(b["mem_gbps"], b["math_gbps"])
            assert r["ceiling"] == ("math" if b["math_gbps"] < b["mem_gbps"] else want)
            assert r["ceiling_gbps"] == pytest.approx(tight)
            assert f"math {b['math_ns_per_elem']:.3f} ns/elem" in r["detail"]
        peers = set(r["baselines"])
        if r["kernel"].startswith(latency):
            torch_peers = {"torch-fused"} if torch is not None else set()
            eager = set() if r["kernel"].endswith(" eager") else {"gpugd-eager"}
            assert peers == torch_peers | eager
            continue
        numpy_peer = "numpy" if layout.endswith(" flat") else "numpy-loop"
        ops = {"gpugd-ops"} if r["kernel"].endswith(" optim") else set()
        if torch is None:
            assert peers == {numpy_peer} | ops
            continue
        tname, note = amp.torch_peer(pol)
        assert peers == {numpy_peer, tname} | ops
        assert (tname == "torch-fused") == (note == r["note"] == "")
    by = {r["kernel"]: r for r in rows}
    if torch is not None:  # torch runs the nearest policy it has, and the row says so
        assert "torch-fused-bf16state" in by["adam_ bf16p-f32s-master flat"]["baselines"]
        assert "torch-fused-f16state" in by["adam_ f16p-f32s-master flat"]["baselines"]
        assert "torch-fused" in by["adam_ bf16p-bf16s flat"]["baselines"]
        assert "14 B/elem against this policy's 28" in by["adam_ bf16p-f32s-master flat"]["note"]


def _bits(a):
    return a.view(np.uint16 if a.itemsize == 2 else np.uint32).astype(np.int64)


@pytest.mark.parametrize("code", list(amp.POLICIES))
def test_numpy_peer_computes_what_gpugd_computes(code):
    """The peer is an honest composition of the same policy: after three steps from the
    same arrays, states and master weights agree to fp32 rounding, fp32 p to the fp32
    roundings of three steps of |p| and of the update ≈ lr (the same arithmetic in another
    order), half-precision p to one
    ulp (almost all to the bit under round-to-nearest, where both round nearly the same
    fp32 value)."""
    pol = amp.POLICIES[code]
    a = amp._arrays(np, [(1023,)], pol)
    b = amp.Arrays(*[None if x is None else [y.copy() for y in x] for x in vars(a).values()])
    step, peer = amp._gpugd_call(a, pol, flat=True), amp._numpy_call(np, b, pol)
    for _ in range(3):
        step()
        peer()
    for x, y in [(a.m, b.m), (a.v, b.v), *([(a.master, b.master)] if pol.master else [])]:
        x64, y64 = x[0].astype(np.float64), y[0].astype(np.float64)
        tol = 1e-5 if x[0].dtype == np.float32 else 2e-2
        assert np.linalg.norm(x64 - y64) <= tol * np.linalg.norm(y64)
    if pol.param == np.float32:
        p, q = a.p[0].astype(np.float64), b.p[0].astype(np.float64)
        # three steps, each rounding p once on each side (≤ ½ ulp of |p| each) and computing
        # the update (≈ lr) in ~6 fp32 operations in another order (≤ ½ ulp of lr each):
        # |p − q| ≤ 2^-24·(3|q| + 18·lr). The old 4·2^-24·(|q| + lr) failed on ~2% of
        # random draws (worst 4.9 of its units over 150 seeds; 0.66 of these over 120).
        assert np.all(np.abs(p - q) <= 2.0**-24 * (3 * np.abs(q) + 18 * amp.HP["lr"]))
        return
    ulps = np.abs(_bits(a.p[0]) - _bits(b.p[0]))
    assert ulps.max() <= 1
    if pol.rounding == "stochastic":  # both round the master copy down or up
        m = a.master[0].view(np.uint32).astype(np.int64)
        low = m >> 16
        assert np.all((_bits(a.p[0]) == low) | (_bits(a.p[0]) == low + 1))
        assert 0 < np.mean(ulps) < 1  # different random bits, same rule
    else:
        assert np.mean(ulps == 0) > 0.99


@pytest.mark.parametrize("code", list(amp.POLICIES))
def test_optim_row_runs_the_policy_through_the_optimizer(code):
    """The ``optim`` rows time ``optim.Adam.step`` with the row's policy: its states in the
    policy's dtype, a master copy exactly when the policy has one, and p updated."""
    pol = amp.POLICIES[code]
    a = amp._arrays(np, [(1023,)], pol)
    before = a.p[0].copy()
    step = amp._optimizer_call(a, pol)
    opt = step.__self__
    assert opt.rounding == pol.rounding
    state = opt.state[opt.names[0]]
    assert state["exp_avg"].dtype == pol.state and state["exp_avg_sq"].dtype == pol.state
    assert ("master" in state) == pol.master
    step()
    assert opt.step_count == 2
    assert not np.array_equal(a.p[0].view(np.uint8), before.view(np.uint8))


# The GPU branch of own_inplace (one elementwise xor per array through the array module) run
# on NumPy arrays through a stand-in module: the same code path a CuPy run takes.
GPU_STYLE_XP = SimpleNamespace(uint8=np.uint8, bitwise_xor=np.bitwise_xor)


@pytest.mark.parametrize("xp", [np, GPU_STYLE_XP], ids=["table", "per-array"])
def test_own_inplace_rewrites_every_byte_unchanged_and_counts_them(xp):
    """The own-buffers ceiling loop reaches every byte (with key 0xFF each flips), leaves
    the arrays bit for bit as they were with key 0 (NaN payloads, odd byte counts, several
    chunks), and counts a read and a write of each."""
    from benchmarks.ceilings import _XOR_CHUNK, own_inplace

    rng = np.random.default_rng(3)
    bits = rng.integers(0, 1 << 16, 3 * _XOR_CHUNK // 2 + 7, dtype=np.uint16)
    arrays = [
        bits.view(amp.BF16),  # every bf16 pattern, NaNs included
        rng.standard_normal(1023).astype(np.float32),
        np.zeros(0, np.float32),
        rng.standard_normal((5, 3)).astype(np.float64),
    ]
    before = [a.copy() for a in arrays]
    own_inplace(arrays, xp, key=0xFF).fn()
    for a, b in zip(arrays, before, strict=True):
        assert np.array_equal(a.view(np.uint8), ~b.view(np.uint8))
    own_inplace(arrays, xp, key=0xFF).fn()
    loop = own_inplace(arrays, xp)
    loop.fn()
    for a, b in zip(arrays, before, strict=True):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))
    assert loop.nbytes == 2 * sum(a.nbytes for a in arrays)


@pytest.mark.parametrize("xp", [np, GPU_STYLE_XP], ids=["table", "per-array"])
def test_traffic_reads_rewrites_and_writes_what_it_is_told_and_counts_it(xp):
    """``ceilings.traffic``: reads leave their bytes alone, mods are xor-ed with the key
    (0: unchanged), writes are set to it, each byte of every buffer reached (several chunks,
    odd sizes); an in-place output listed as a read too counts once, as a mod; bytes are
    Σ reads + 2·Σ mods + Σ writes."""
    from benchmarks.ceilings import _XOR_CHUNK, mix_name, traffic

    rng = np.random.default_rng(5)
    r = rng.standard_normal(3 * _XOR_CHUNK // 8 + 3)  # float64: several byte chunks
    m = rng.standard_normal(1023).astype(np.float32)
    w = rng.standard_normal(2 * _XOR_CHUNK + 1).astype(np.float32).view(np.uint8)
    before_r, before_m = r.copy(), m.copy()
    loop = traffic([r, m], [m], [w], xp, key=0xFF)
    loop.fn()
    assert np.array_equal(r, before_r)
    assert np.array_equal(m.view(np.uint8), ~before_m.view(np.uint8))
    assert (w == 0xFF).all()
    assert loop.nbytes == r.nbytes + 2 * m.nbytes + w.nbytes
    traffic([], [m], [], xp, key=0xFF).fn()
    assert np.array_equal(m, before_m)
    assert mix_name(2, 0, 1) == "r2w1" and mix_name(1, 3, 0) == "r1m3"


@pytest.mark.parametrize("zeros", [True, False])
def test_reduce_math_runs_the_norm_kernels_per_chunk_code(zeros):
    """The tensor_norms row's compute bound computes what the kernel computes (Σ x² in
    float64 and the zero count of each L1 block), not a loop the compiler could drop."""
    from benchmarks.ceilings import reduce_math

    loop = reduce_math(zeros, numel=1 << 14)
    x = loop.block.astype(np.float64)
    np.testing.assert_allclose(loop.out[:, 0], (x * x).sum(axis=1), rtol=1e-12)
    want = (x == 0).sum(axis=1) if zeros else np.zeros(len(x))
    np.testing.assert_array_equal(loop.out[:, 1], want)
    assert loop.nbytes == 4 * loop.numel > 0


@pytest.mark.parametrize("rule", ["adam", "lion"])
@pytest.mark.parametrize("param", ["float32", "bfloat16"])
def test_optim8_math_runs_the_8bit_kernels_per_task_code(rule, param):
    """The 8-bit rows' compute bound computes what ``gpugd.ops`` computes: one call of its
    loop (one repetition) leaves p and every state's codes and scales bitwise where the op
    with the loop's hyperparameters leaves copies of them (Adam with step 10^6: bias
    corrections 1)."""
    import ml_dtypes

    from benchmarks.ceilings import optim8_math
    from gpugd import ops
    from gpugd.ops.optim8 import State8

    dt = np.dtype(ml_dtypes.bfloat16) if param == "bfloat16" else np.dtype(np.float32)
    loop = optim8_math(rule, dt, 1.0, numel=1)
    w, g, states = loop.arrays
    assert loop.reps == 1 and loop.numel == w.size
    p = w.copy().view(dt)
    copies = [State8(c.copy(), a.copy()) for c, a in states]
    loop.fn()
    if rule == "adam":
        ops.adam8bit_(p, g.view(dt), *copies, lr=1e-3, step=10**6)
    else:
        ops.lion8bit_(p, g.view(dt), *copies, lr=1e-4, betas=(0.9, 0.99))
    assert np.array_equal(p.view(w.dtype), w)
    for (c, a), s in zip(states, copies, strict=True):
        assert np.array_equal(c, s.codes) and np.array_equal(a, s.absmax)
    assert np.any(copies[0].codes != copies[0].codes[0])  # the states are past their zero start
