"""CPU (Numba) batch-normalization kernels on a canonical (A, C, B) view of the input:
element (a, c, b) at (a·C + c)·B + b. (N, C) is (N, C, 1), (N, C, H, W) is (N, C, H·W) and
channels-last (N, H, W, C) is (N·H·W, C, 1).

Statistics are computed tile by tile in float64 — a plane's shifted sums Σ(x − K) and
Σ(x − K)² about its first element K (one pass; K is near the mean, so nothing cancels),
or the same for row tiles, about their first row — and the
tiles are merged with Chan's formula in a fixed order, so the variance is right even when
|mean| ≫ std (the E[x²] − E[x]² formula loses every digit there) and the result does not
depend on the thread count. Tiles: one (a, c) plane when B > 1 (taken in memory order, merged
per channel afterwards); ``tile_rows(C)`` rows × all channels when
B = 1 (the loops then run along C, contiguous, the rows a step sums a stretch of the tile
apart, so each is one long stream). The elementwise passes are one per-channel
affine map ``out = p[c]·u + q[c]·(w − m[c]) + r[c]`` (forward: p = 0, w = x, m = mean;
backward: u = dy, w = x): x − mean is taken first, so nothing cancels when |mean| ≫ std.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .vector import _REDUCE_MATH  # reassociation lets the sums vectorize; no NaN assumed away

ROWS = 256  # rows per tile of the elementwise pass when B = 1
STATS_WIDE = 256  # B = 1 statistics: eight rows a step from this many channels, else four


def tile_rows(channels: int) -> int:
    """Rows per tile of the B = 1 reductions (statistics, backward sums): about 128K
    elements (512 KB of fp32), 512 to 4096 rows. A tile is read as four or eight long
    streams (see ``_stats_rows``), each its own stretch of rows; the longer the stretch,
    the less each stream's prefetch ramp costs (C = 512: 256 → 512 rows; few channels
    want taller tiles still)."""
    return max(512, min(4096, (1 << 17) // max(channels, 1)))


# ---- statistics ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, parallel=True, fastmath=_REDUCE_MATH)
def _stats_planes(x, plane_mean, plane_m2):
    """B > 1: each (a, c) plane's mean and M2. The prange runs over the planes in memory
    order, so each thread reads one contiguous stretch (a prange over channels hopped
    between 4 KB planes 256 KB apart, which the prefetchers do not follow: 12 GB/s)."""
    A, C, B = x.shape
    for k in prange(A * C):
        a, c = k // C, k % C
        plane = x[a, c]
        # one pass of shifted sums: with the shift K = the plane's first element (close to
        # its mean, in float64) Σ(x − K) and Σ(x − K)² do not cancel
        shift = np.float64(plane[0])
        s1, s2 = 0.0, 0.0
        for b in range(B):
            d = np.float64(plane[b]) - shift
            s1 += d
            s2 += d * d
        m = s1 / B
        plane_mean[a, c] = shift + m
        plane_m2[a, c] = max(s2 - s1 * m, 0.0)


@njit(cache=True, nogil=True)
def _merge_in_order(tile_mean, tile_m2, counts, mean, m2):
    """Per channel, Chan's merge of the tiles t = 0, 1, … (counts[t] elements per channel
    each) into mean and M2: the order is fixed, whatever thread computed a tile. The loop
    over channels is the inner one, so it vectorizes (the counts, hence Chan's weights, are
    the same for every channel of a tile)."""
    T, C = tile_mean.shape
    mean[:] = 0.0
    m2[:] = 0.0
    n = 0.0
    for t in range(T):
        nb = counts[t]
        if nb == 0:
            continue
        na = n
        n = na + nb
        fb, fab = nb / n, na * nb / n
        for c in range(C):
            d = tile_mean[t, c] - mean[c]
            mean[c] = mean[c] + d * fb
            m2[c] = m2[c] + tile_m2[t, c] + d * d * fab


@njit(cache=True, nogil=True, parallel=True, fastmath=_REDUCE_MATH)
def _stats_rows(x, tile_mean, tile_m2, shift, rows, eight):
    """B = 1, ``x`` the 2-D (A, C) view: per tile of ``rows`` rows, each channel's mean and
    M2 in one pass of shifted sums about the tile's first row (``shift[t]``, converted to
    float64 once per tile; as the planes: K is one sample, within a few standard
    deviations of the mean, so nothing cancels). The inner loops run along the contiguous
    C and vectorize, several rows a step, their differences summed in registers and s1[c],
    s2[c] loaded and stored once per step: a row at a time, each s[c] += … is a store that
    the next row loads again within a few cycles, and the loop waited on that chain.
    ``eight`` (C ≥ STATS_WIDE) takes eight rows a step, else four. Two cores from memory:
    (16384, 2048) fp32 9.2-11.0 → 4.6-4.8 ms (read loop 2.9-4.0) eight rows a step against
    one; (65536, 512) 6.2-6.6 → 5.2-5.6 ms (flat read loop 3.4-3.7); at C = 64 eight were
    slower than four (3.2-5.4 against 2.4-3.8 ms). The shift converted once per tile, not
    once per step: (262144, 64), medians of 31 interleaved, 3.70-3.77 → 3.24-3.40 ms.
    The rows of a step are a, a + R, a + 2R, … (R = the tile's rows // step): each is one
    contiguous stream down its own stretch of R rows. Neighbouring rows a step (until
    2026-12-07) read 8 × 2 KB at C = 512 interleaved and then moved on, which the
    prefetchers did not follow: (65536, 512) 6.1-6.4 → 4.3-4.5 ms on two Zen 4 cores (flat
    read loop 3.9), (55000, 300) 4.2-4.4 → 2.6-2.8 (read loop 2.0), the same sums."""
    A, C = x.shape
    step = 8 if eight else 4
    for t in prange(tile_mean.shape[0]):
        lo, hi = t * rows, min(t * rows + rows, A)
        s1, s2, kd = tile_mean[t], tile_m2[t], shift[t]
        k = x[lo]
        for c in range(C):
            kd[c] = np.float64(k[c])
            s1[c] = 0.0
            s2[c] = 0.0
        R = (hi - lo) // step
        if eight:
            for a in range(lo, lo + R):
                r0, r1, r2, r3 = x[a], x[a + R], x[a + 2 * R], x[a + 3 * R]
                r4, r5, r6, r7 = x[a + 4 * R], x[a + 5 * R], x[a + 6 * R], x[a + 7 * R]
                for c in range(C):
                    kc = kd[c]
                    d0, d1 = np.float64(r0[c]) - kc, np.float64(r1[c]) - kc
                    d2, d3 = np.float64(r2[c]) - kc, np.float64(r3[c]) - kc
                    d4, d5 = np.float64(r4[c]) - kc, np.float64(r5[c]) - kc
                    d6, d7 = np.float64(r6[c]) - kc, np.float64(r7[c]) - kc
                    s1[c] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
                    q = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                    s2[c] += q + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7))
        else:
            for a in range(lo, lo + R):
                r0, r1, r2, r3 = x[a], x[a + R], x[a + 2 * R], x[a + 3 * R]
                for c in range(C):
                    kc = kd[c]
                    d0, d1 = np.float64(r0[c]) - kc, np.float64(r1[c]) - kc
                    d2, d3 = np.float64(r2[c]) - kc, np.float64(r3[c]) - kc
                    s1[c] += (d0 + d1) + (d2 + d3)
                    s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        for a in range(lo + step * R, hi):
            row = x[a]
            for c in range(C):
                d = np.float64(row[c]) - kd[c]
                s1[c] += d
                s2[c] += d * d
        n = np.float64(hi - lo)
        for c in range(C):
            m = s1[c] / n
            s2[c] = max(s2[c] - s1[c] * m, 0.0)
            s1[c] = kd[c] + m


def _two_tables(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (rows, cols) float64 tables whose rows are 64 bytes apart modulo 4 KB. Separate
    large allocations both start 16 bytes past a page, so s1[c] and s2[c] had equal low 12
    address bits: every store to one made the next load of the other wait ("4K aliasing";
    C = 512 statistics ran at 9-12 GB/s)."""
    n, pad = rows * cols, 8  # float64s
    buf = np.empty(2 * n + pad)
    return buf[:n].reshape(rows, cols), buf[n + pad :].reshape(rows, cols)


def stats(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, biased variance) per channel, float64, of the (A, C, B) view ``x3``."""
    A, C, B = x3.shape
    mean, m2 = np.zeros(C), np.zeros(C)
    if A * B == 0:
        return mean, m2
    if B > 1:
        pm, pq = np.empty((A, C)), np.empty((A, C))
        _stats_planes(x3, pm, pq)
        _merge_in_order(pm, pq, np.full(A, float(B)), mean, m2)
    else:
        rows = tile_rows(C)
        ntiles = -(-A // rows)
        tm, tq = _two_tables(ntiles, C)
        _stats_rows(x3.reshape(A, C), tm, tq, np.empty((ntiles, C)), rows, C >= STATS_WIDE)
        counts = np.minimum(rows, A - rows * np.arange(ntiles)).astype(np.float64)
        _merge_in_order(tm, tq, counts, mean, m2)
    return mean, m2 / (A * B)


# ---- backward reduction: Σ dy and Σ dy·(x − mean) per channel ------------------------------


@njit(cache=True, nogil=True, parallel=True, fastmath=_REDUCE_MATH)
def _sums_planes(dy, x, mean, plane_dy, plane_dyx):
    """B > 1: each (a, c) plane's Σ dy and Σ dy·(x − mean[c]), planes in memory order (as
    ``_stats_planes``)."""
    A, C, B = x.shape
    for k in prange(A * C):
        a, c = k // C, k % C
        g, u = dy[a, c], x[a, c]
        m = mean[c]
        s1, s2 = 0.0, 0.0
        for b in range(B):
            gv = np.float64(g[b])
            s1 += gv
            s2 += gv * (np.float64(u[b]) - m)
        plane_dy[a, c], plane_dyx[a, c] = s1, s2


@njit(cache=True, nogil=True, parallel=True, fastmath=_REDUCE_MATH)
def _sums_rows(dy, x, mean, t1, t2, rows):
    """B = 1, 2-D (A, C) views: per tile of ``rows`` rows, Σ dy and Σ dy·(x − mean[c]) per
    channel, four rows a step R = rows // 4 apart (as ``_stats_rows``: four long streams of
    each array) and the sums stored once per step. Two Zen 4 cores from memory, against
    one row a step (C < 1024, 256-row tiles) or four neighbouring rows (C ≥ 1024), in a
    slow and a fast hour: (65536, 512) 14.3 → 8.9 ms and 9.3 → 9.1-9.2 (read loop of both
    arrays 7.2 and 7.9), (262144, 64) 7.7 → 5.6 and 4.8 → 4.5, (16384, 2048) 12.6 → 10.6
    and 10.8 → 10.4; eight rows a step (sixteen streams) were slower than four."""
    A, C = x.shape
    for t in prange(t1.shape[0]):
        lo, hi = t * rows, min(t * rows + rows, A)
        s1, s2 = t1[t], t2[t]
        for c in range(C):
            s1[c] = 0.0
            s2[c] = 0.0
        R = (hi - lo) // 4
        for a in range(lo, lo + R):
            g0, g1, g2, g3 = dy[a], dy[a + R], dy[a + 2 * R], dy[a + 3 * R]
            u0, u1, u2, u3 = x[a], x[a + R], x[a + 2 * R], x[a + 3 * R]
            for c in range(C):
                m = mean[c]
                e0, e1 = np.float64(g0[c]), np.float64(g1[c])
                e2, e3 = np.float64(g2[c]), np.float64(g3[c])
                s1[c] += (e0 + e1) + (e2 + e3)
                p = e0 * (np.float64(u0[c]) - m) + e1 * (np.float64(u1[c]) - m)
                s2[c] += p + (e2 * (np.float64(u2[c]) - m) + e3 * (np.float64(u3[c]) - m))
        for a in range(lo + 4 * R, hi):
            g, u = dy[a], x[a]
            for c in range(C):
                gv = np.float64(g[c])
                s1[c] += gv
                s2[c] += gv * (np.float64(u[c]) - mean[c])


@njit(cache=True, nogil=True)
def _sum_planes_in_order(t):
    """Σ over a of t[a, c], per channel, in the order a = 0, 1, … (thread-count free)."""
    A, C = t.shape
    out = np.zeros(C)
    for a in range(A):
        for c in range(C):
            out[c] += t[a, c]
    return out


def grad_sums(dy3: np.ndarray, x3: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Σ dy, Σ dy·(x − mean)) per channel, float64; tiles summed in order."""
    A, C, B = x3.shape
    if B > 1:
        p1, p2 = np.empty((A, C)), np.empty((A, C))
        _sums_planes(dy3, x3, mean, p1, p2)
        return _sum_planes_in_order(p1), _sum_planes_in_order(p2)
    rows = tile_rows(C)
    ntiles = max(1, -(-A // rows))
    t1, t2 = _two_tables(ntiles, C)
    _sums_rows(dy3.reshape(A, C), x3.reshape(A, C), mean, t1, t2, rows)
    return _sum_planes_in_order(t1), _sum_planes_in_order(t2)


# ---- the elementwise pass: out = p[c]·u + q[c]·(w − m[c]) + r[c] ---------------------------


@njit(cache=True, nogil=True, parallel=True)
def _affine_planes(u, w, out, p, q, m, r):
    A, C, B = u.shape
    for k in prange(A * C):
        a, c = k // C, k % C
        pc, qc, mc, rc = p[c], q[c], m[c], r[c]
        uu, ww, oo = u[a, c], w[a, c], out[a, c]
        for b in range(B):
            oo[b] = pc * uu[b] + qc * (ww[b] - mc) + rc


@njit(cache=True, nogil=True, parallel=True)
def _affine_rows(u, w, out, p, q, m, r):
    A, C = u.shape  # 2-D (A, C) views
    for t in prange(-(-A // ROWS)):
        for a in range(t * ROWS, min(t * ROWS + ROWS, A)):
            uu, ww, oo = u[a], w[a], out[a]
            for c in range(C):
                oo[c] = p[c] * uu[c] + q[c] * (ww[c] - m[c]) + r[c]


def affine(u3, w3, out3, p, q, m, r) -> None:
    """out = p[c]·u + q[c]·(w − m[c]) + r[c] over the (A, C, B) views (per-channel arrays in
    the arrays' dtype)."""
    if u3.size == 0:
        return
    A, C, B = u3.shape
    if B > 1:
        _affine_planes(u3, w3, out3, p, q, m, r)
    else:
        _affine_rows(u3.reshape(A, C), w3.reshape(A, C), out3.reshape(A, C), p, q, m, r)
