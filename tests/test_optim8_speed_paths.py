"""The CPU 8-bit kernels' quantizer (gpugd._cpu.optim8: a code from r's bits and one table
entry, no search) against the specification's code selection, gpugd.reference8.nearest_code
(the largest entry ≤ r, moved up when q[i+1] − r < r − q[i] in float32):
  - densely, against reference8 itself: every float32 of [−2, 2] at a stride, every midpoint
    of neighbouring entries and every entry ±8 ulp, every bucket edge ±2 ulp, special values;
  - exhaustively, every float32 of [−1, 1] (both signs, 2.1e9 values per map), against a
    Numba transcription of reference8's rule (a binary search) that the dense test ties to
    reference8;
and the kernels' block absmax (an integer maximum of |x|'s bits) with NaN, ±0 and ∞ in a
block, bit for bit against reference8.quantize."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit, prange

from gpugd import quant8
from gpugd import reference8 as r8
from gpugd._cpu import optim8 as k8

MAPS = {True: quant8.code_map(True), False: quant8.code_map(False)}
IDS = {True: "signed", False: "unsigned"}


def _fast(r: np.ndarray, signed: bool) -> np.ndarray:
    out = np.empty(r.size, np.uint8)
    k8.codes(np.ascontiguousarray(r, np.float32), k8.bucket_table(MAPS[signed]), out)
    return out


def _floats(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, np.int64).astype(np.uint32).view(np.float32)


def _around(x: np.ndarray, ulps: int) -> np.ndarray:
    """x and its ±1..ulps float32 neighbours (in the float order, across 0 for ±0)."""
    b = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    mag, neg = b & 0x7FFFFFFF, b < 0
    ordinal = np.where(neg, -mag, mag)  # monotone in x
    near = (ordinal[:, None] + np.arange(-ulps, ulps + 1)[None, :]).reshape(-1)
    return _floats(np.where(near < 0, (-near) | (1 << 31), near))


def _dense(signed: bool) -> np.ndarray:
    q = MAPS[signed]
    q64 = quant8.dynamic_map(signed)
    pos = np.arange(0, 0x40000001, 61, dtype=np.int64)  # [0, 2] at a stride of 61 ulps
    stride = np.concatenate([_floats(pos), _floats(pos | (1 << 31))])
    mids = np.concatenate([(q64[:-1] + q64[1:]) / 2, (q[:-1] + q[1:]) / np.float32(2)])
    edges = _floats(np.arange(k8.INF_BUCKET + 1, dtype=np.int64) << k8.SHIFT)
    edges = np.concatenate([_around(edges[1:-1], 2), _around(-edges[1:-1], 2)])
    tiny = np.array([0.0, 1e-45, 1e-40, 1.17e-38, 1e-30, 1e-10, 1e-7, 1.5e-7, 3e-7], np.float32)
    special = np.array([np.inf, 3.4e38, 2.0, 1.0000001, 1.0, 0.99999994], np.float32)
    nans = _floats(np.array([0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0xFFC00000, 0xFF800001]))
    return np.concatenate(
        [stride, _around(mids, 8), _around(q, 8), edges, tiny, -tiny, special, -special, nans]
    ).astype(np.float32)


@pytest.mark.parametrize("signed", [True, False], ids=IDS.get)
def test_fast_codes_are_the_references_densely(signed):
    r = _dense(signed)
    assert r.size > 30_000_000
    want = r8.nearest_code(MAPS[signed], r)
    got = _fast(r, signed)
    bad = np.flatnonzero(got != want)
    assert not bad.size, (
        f"{bad.size} of {r.size} differ, first r {r[bad[:5]]}: {got[bad[:5]]} vs {want[bad[:5]]}"
    )
    # the Numba transcription used by the exhaustive test is the reference too
    np.testing.assert_array_equal(_searched(r, signed), want)


@njit(cache=True, nogil=True, error_model="numpy")
def _search(q, r):
    """reference8.nearest_code's rule, written out: a binary search (q padded with +inf)."""
    i = 0
    for s in (128, 64, 32, 16, 8, 4, 2, 1):
        i = i + s if q[i + s] <= r else i
    return i + 1 if (i < 255 and (q[i + 1] - r) < (r - q[i])) else i


@njit(cache=True, nogil=True, error_model="numpy")
def _search_all(q, r, out):
    for i in range(r.size):
        out[i] = _search(q, r[i])


def _searched(r: np.ndarray, signed: bool) -> np.ndarray:
    out = np.empty(r.size, np.uint8)
    _search_all(np.append(MAPS[signed], np.float32(np.inf)), r, out)
    return out


# not cached: Numba's cache would not see a change to gpugd._cpu.optim8's _code
@njit(nogil=True, parallel=True, error_model="numpy")
def _exhaustive(q, tab, top, chunk):
    """Mismatches of the fast code against the search over every float32 with magnitude bits
    0..top, both signs: (count, first bits)."""
    tasks = (top + chunk) // chunk
    bad = np.zeros(tasks, np.int64)
    first = np.full(tasks, -1, np.int64)
    for t in prange(tasks):
        r = np.empty(chunk, np.float32)
        u = r.view(np.uint32)
        for sign in (0, 1):
            lo = t * chunk
            cnt = min(chunk, top + 1 - lo)
            for j in range(cnt):
                u[j] = np.uint32(lo + j) | np.uint32(sign << 31)
            for j in range(cnt):
                if k8._code(r[j], tab) != _search(q, r[j]):
                    bad[t] += 1
                    if first[t] < 0:
                        first[t] = (lo + j) | (sign << 31)
    return bad, first


@pytest.mark.parametrize("signed", [True, False], ids=IDS.get)
def test_fast_codes_equal_the_search_for_every_float32_in_the_unit_interval(signed):
    top = int(np.float32(1.0).view(np.uint32))  # every |r| ≤ 1, both signs
    q = np.append(MAPS[signed], np.float32(np.inf))
    bad, first = _exhaustive(q, k8.bucket_table(MAPS[signed]), top, 1 << 20)
    hit = first[first >= 0]
    assert bad.sum() == 0, f"{bad.sum()} differ, first bits {[hex(b) for b in hit[:5]]}"


def test_a_planted_off_by_one_table_entry_is_caught():
    """The dense check can fail: one entry's threshold moved by one ulp is found."""
    tab = k8.bucket_table(MAPS[True]).copy()
    k = int(np.flatnonzero((tab & 0xFFFF) < k8.NONE)[100])
    tab[k] += 1
    r = _dense(True)
    out = np.empty(r.size, np.uint8)
    k8.codes(r, tab, out)
    assert np.count_nonzero(out != r8.nearest_code(MAPS[True], r)) >= 1


@pytest.mark.parametrize("rule", ["momentum", "rmsprop"])
def test_kernel_absmax_and_codes_with_nan_zeros_and_inf_in_a_block(rule):
    """SGD momentum's first step (the new buffer is g itself: signed map) and RMSprop (v from
    d²: unsigned map) over gradients with NaN (ignored by the absmax), ±0, ±inf (an inf
    absmax: 1/inf = 0, r = NaN or 0) and subnormal blocks (1/absmax = inf): p, the codes and
    the scales equal reference8.step bit for bit."""
    from gpugd.ops.optim8 import momentum8bit_, rmsprop8bit_, state8

    rng = np.random.default_rng(5)
    bs = 256
    g = (rng.standard_normal(bs * 8) * 1e-3).astype(np.float32)
    g[3] = np.nan
    g[bs : 2 * bs] = 0.0
    g[bs + 7] = -0.0
    g[2 * bs + 5] = np.inf
    g[3 * bs : 4 * bs] = np.float32(1e-41)
    g[3 * bs + 1] = -2e-41
    g[4 * bs + 9] = -np.inf
    g[5 * bs + 2 : 5 * bs + 6] = [np.nan, -np.nan, np.nan, 1e-30]
    g[6 * bs : 7 * bs] = np.float32(1e-20)  # d² subnormal or 0
    p0 = rng.standard_normal(g.size).astype(np.float32)
    p = p0.copy()
    if rule == "momentum":
        s = state8(g.shape, True, bs)
        momentum8bit_(p, g, s, lr=0.1, momentum=0.9, block_size=bs, step=1)
        sc, signed = (0.1, 0.0, 0.9, 1.0, False, True), True
    else:
        s = state8(g.shape, False, bs)
        rmsprop8bit_(p, g, s, lr=0.1, alpha=0.9, eps=1e-8, block_size=bs)
        sc, signed = (0.1, 0.0, 0.9, 0.1, 1e-8), False
    start = [(*quant8.zeros(g.size, signed, bs), signed)]
    with np.errstate(all="ignore"):
        want_p, [(want_c, want_a)] = r8.step(rule, p0, g, start, sc, 1.0, np.inf, bs, MAPS)
    assert np.isnan(want_a).sum() == 0 and np.isinf(want_a).any()  # the cases are reached
    np.testing.assert_array_equal(p.view(np.uint32), want_p.view(np.uint32))
    np.testing.assert_array_equal(s.absmax.view(np.uint32), want_a.view(np.uint32))
    np.testing.assert_array_equal(s.codes, want_c)


def test_bench_rows_of_the_8bit_states_count_their_bytes_and_time_the_fp32_peer():
    """gpugd bench --suite optim (not --quick): adam8bit_ and lion8bit_ rows over fp32 and
    bf16 parameters, their bytes (Adam 16 / 10 B, Lion 14 / 8 B per element and the block
    scales), the own-traffic ceiling over their buffers, and the same rule with fp32 states
    as the peer."""
    from benchmarks import ceilings
    from benchmarks import suite_optim as so
    from benchmarks.harness import Context, now, versions
    from gpugd import get_backend

    n = 1 << 16
    ctx = Context(backend=get_backend("cpu"), quick=False, numel=n)
    ctx.versions, ctx.time, ctx.log = versions("cpu"), now(), lambda *a: None
    ceilings.setup(ctx)
    rows = {r["kernel"]: r for r in so._state8_rows(ctx, n)}
    nb = quant8.blocks(n)
    assert rows["adam8bit_"]["bytes"] == 16 * n + 16 * nb
    assert rows["lion8bit_"]["bytes"] == 14 * n + 8 * nb
    assert set(rows["adam8bit_"]["baselines"]) == {"adam_ fp32 states"}
    assert set(rows["lion8bit_"]["baselines"]) == {"lion_ fp32 states"}
    assert rows["adam8bit_ bf16p"]["bytes"] == 10 * n + 16 * nb
    assert rows["lion8bit_ bf16p"]["bytes"] == 8 * n + 8 * nb
    for k, r in rows.items():
        # held against the tighter of the own-traffic loop and the kernel's compute bound
        # (ceilings.optim8_math), both named in the row
        b, mem = r["bounds"], "r1m5" if k.startswith("adam8bit_") else "r1m3"
        assert b["mem"] == mem and 0 < b["math_ns_per_elem"] and 0 < b["math_gbps"]
        assert r["ceiling"] == ("math" if b["math_gbps"] < b["mem_gbps"] else mem)
        assert r["ceiling_gbps"] == pytest.approx(min(b["math_gbps"], b["mem_gbps"]))
        assert f"math {b['math_ns_per_elem']:.3f} ns/elem" in r["detail"]
        dtype = "bfloat16" if k.endswith("bf16p") else "float32"
        assert r["dtype"] == dtype and r["numel"] == n and 0 < r["pct_of_ceiling"]
    ctx.quick = True
    assert so._state8_rows(ctx, n) == []
