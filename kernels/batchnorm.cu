// gpugd batchnorm family on the canonical (A, C, B) view: element (a, c, b) at
// (a·C + c)·B + b ((N, C) = (N, C, 1); NCHW = (N, C, H·W); NHWC = (N·H·W, C, 1)).
//
// Statistics and the backward's sums, two stages, no atomics (the result is the same run
// to run, whatever the order the blocks and warps run in):
//   1. gpugd_batchnorm_{stats,sums}_partial: one block per tile; per channel of the tile
//      it writes two doubles to partial[(c·tiles + t)·2 …]. Statistics: shifted sums
//      Σ(x − K), Σ(x − K)² about K = the tile's first value of that channel (one sample,
//      near the mean: nothing cancels when |mean| ≫ std), reduced in fixed trees and
//      written as the tile's (mean, M2); the backward: Σ dy and Σ dy·(x − mean).
//      - planes (B > 1, NCHW): a tile is one channel c × rows [t·rows, (t + 1)·rows); its
//        rows·B/W vectors (W elements each) are dealt to the threads in memory order, each
//        thread's position (row, column) advanced by counters, no division per element.
//      - rows (B = 1, NC and NHWC: the channel is the contiguous axis): a tile is TX
//        channel vectors × rows; thread (ty, tx) keeps its W channels and walks rows
//        ty, ty + TY, … (TY = 256 / TX), so a warp reads adjacent addresses; the threads'
//        sums of a channel meet in a fixed tree over ty in shared memory.
//      W = 16 / sizeof(T) (one 128-bit access) when the host found the rows (B = 1) or
//      planes (B > 1) 16-byte aligned, else 1; the host picks W, TX and the tiling from the
//      shape alone (gpugd/_cuda_batchnorm.py), so the bits do not depend on the device.
//   2. gpugd_batchnorm_merge: one warp per channel; lane l folds tiles l, l + 32, … by
//      Chan's formula (counts from the tiling), then the lanes merge in a fixed tree.
// The elementwise pass is out = p[c]·u + q[c]·(w − m[c]) + r[c]: x − mean first, so nothing
// cancels when |mean| ≫ std (the Numba kernels compute each element the same way, so both
// backends give the same bits); the forward passes u = w = x, read once. Planes: the grid
// strides over the vectors in memory order, column and channel advanced by counters, each
// vector's p, q, m, r one load from the interleaved (C, 4) table; rows: thread (ty, tx)
// keeps its channels' p, q, m, r in registers and walks rows.
#include "common.cuh"

namespace gpugd {

constexpr int BN_THREADS = 256;

// W elements of T in one aligned access (W = 1: a scalar; 16 / sizeof(T): 128 bits).
template <typename T, int W>
struct __align__(sizeof(T) * W) BnVec {
  T v[W];
};

// Vectors each thread loads before it uses them, per main-loop step, by path (chosen from
// ptxas sm_90: registers, and the loads really issued before the first use).
template <typename T, int W>
struct BnUnroll {
  static constexpr int planes = 4;   // statistics: one array
  static constexpr int planes2 = 2;  // backward sums: two arrays
  static constexpr int rows = W * sizeof(T) == 16 ? 2 : 4;  // + 4W accumulators, W shifts
  static constexpr int rows2 = 2;
  static constexpr int affine = 4;  // forward: u = w, one array read
  static constexpr int affine_rows = W * sizeof(T) == 16 ? 2 : 4;  // + 4W parameters
  static constexpr int affine2 = 2;  // backward: u ≠ w
};

// max(v, 0) that keeps a NaN (rounding can take M2 = Σd² − (Σd)²/n just below 0).
__device__ __forceinline__ double nonnegative(double v) { return v < 0.0 ? 0.0 : v; }

__device__ __forceinline__ void chan(double& n, double& m, double& s, double nb, double mb,
                                     double sb) {
  const double nn = n + nb;
  if (nn == 0.0) return;
  const double d = mb - m;
  m += d * (nb / nn);
  s += sb + d * d * (n * nb / nn);
  n = nn;
}

// Σ over the block of a and of b (fixed trees), valid in thread 0. scratch: 64 doubles.
__device__ __forceinline__ void block_sum_pair(double& a, double& b, double* scratch) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, off);
    b += __shfl_down_sync(0xffffffffu, b, off);
  }
  if (lane == 0) {
    scratch[warp] = a;
    scratch[32 + warp] = b;
  }
  __syncthreads();
  const unsigned nwarps = blockDim.x >> 5;
  a = threadIdx.x < nwarps ? scratch[threadIdx.x] : 0.0;
  b = threadIdx.x < nwarps ? scratch[32 + threadIdx.x] : 0.0;
  if (warp == 0) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, off);
      b += __shfl_down_sync(0xffffffffu, b, off);
    }
  }
}

// ---- planes (B > 1): a thread's walk over one channel's vectors of a row tile ----------

// Vector k = tid + j·256 of a tile (channel c, planes a0, a0 + 1, … of bv vectors, C·bv
// vectors apart) is at plane a0 + k / bv, column k % bv. The quotients are taken once (in
// 32 bits: tid and 256 are below 2^31); each step adds 256 with one conditional carry.
// Col: the column's type, unsigned where bv < 2^31 (the kernels pick), else i64.
template <typename Col>
struct PlaneWalk {
  i64 off, dstep, wrap;
  Col b, bv, db;
  __device__ __forceinline__ PlaneWalk(i64 a0, i64 c, i64 C, i64 bv_)
      : bv(static_cast<Col>(bv_)) {
    const unsigned tid = threadIdx.x;
    const i64 rs = C * bv_;
    i64 a = 0, da = 0;
    b = tid;
    db = BN_THREADS;
    if (bv_ <= BN_THREADS) {
      const unsigned v = static_cast<unsigned>(bv_);
      a = tid / v;
      b = tid % v;
      da = BN_THREADS / v;
      db = BN_THREADS % v;
    }
    off = (a0 + a) * rs + c * bv_ + static_cast<i64>(b);
    dstep = da * rs + static_cast<i64>(db);
    wrap = rs - bv_;
  }
  // vectors of this thread among a tile's `total`
  __device__ __forceinline__ static i64 count(i64 total) {
    const i64 tid = threadIdx.x;
    return tid < total ? ((total - 1 - tid) >> 8) + 1 : 0;  // BN_THREADS = 2^8
  }
  __device__ __forceinline__ void next() {
    b += db;
    off += dstep;
    if (b >= bv) {
      b -= bv;
      off += wrap;
    }
  }
};

// Tile of block blockIdx.x = c·tiles + t: channel c, planes [a0, a0 + nrows).
struct PlaneTile {
  i64 c, t, a0, nrows;
  __device__ __forceinline__ PlaneTile(i64 A, i64 rows, i64 tiles) {
    const unsigned bx = blockIdx.x, nt = static_cast<unsigned>(tiles);
    c = bx / nt;
    t = bx % nt;
    a0 = t * rows;
    nrows = (a0 + rows < A ? a0 + rows : A) - a0;
  }
};

template <typename T, int W, typename Col>
__device__ __forceinline__ void stats_planes(const T* x, i64 A, i64 C, i64 B, i64 rows,
                                             i64 tiles, double* partial, double* scratch) {
  typedef BnVec<T, W> V;
  constexpr int U = BnUnroll<T, W>::planes;
  const PlaneTile tl(A, rows, tiles);
  const double K = static_cast<double>(x[(tl.a0 * C + tl.c) * B]);
  const V* xv = reinterpret_cast<const V*>(x);
  PlaneWalk<Col> pw(tl.a0, tl.c, C, B / W);
  double s1 = 0.0, s2 = 0.0;
  auto add = [&](const V& v) {
#pragma unroll
    for (int e = 0; e < W; ++e) {
      const double d = static_cast<double>(v.v[e]) - K;
      s1 += d;
      s2 += d * d;
    }
  };
  i64 k = PlaneWalk<Col>::count(tl.nrows * (B / W));
#pragma unroll 1
  for (; k >= U; k -= U) {
    V v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      v[u] = xv[pw.off];
      pw.next();
    }
#pragma unroll
    for (int u = 0; u < U; ++u) add(v[u]);
  }
#pragma unroll 1
  for (; k > 0; --k) {
    add(xv[pw.off]);
    pw.next();
  }
  block_sum_pair(s1, s2, scratch);
  if (threadIdx.x == 0) {
    const double m = s1 / static_cast<double>(tl.nrows * B);
    partial[2 * blockIdx.x] = K + m;
    partial[2 * blockIdx.x + 1] = nonnegative(s2 - s1 * m);
  }
}

template <typename T, int W, typename Col>
__device__ __forceinline__ void sums_planes(const T* dy, const T* x, const double* mean, i64 A,
                                            i64 C, i64 B, i64 rows, i64 tiles,
                                            double* partial, double* scratch) {
  typedef BnVec<T, W> V;
  constexpr int U = BnUnroll<T, W>::planes2;
  const PlaneTile tl(A, rows, tiles);
  const double mc = mean[tl.c];
  const V* gv = reinterpret_cast<const V*>(dy);
  const V* xv = reinterpret_cast<const V*>(x);
  PlaneWalk<Col> pw(tl.a0, tl.c, C, B / W);
  double s1 = 0.0, s2 = 0.0;
  auto add = [&](const V& g, const V& u) {
#pragma unroll
    for (int e = 0; e < W; ++e) {
      const double gd = static_cast<double>(g.v[e]);
      s1 += gd;
      s2 += gd * (static_cast<double>(u.v[e]) - mc);
    }
  };
  i64 k = PlaneWalk<Col>::count(tl.nrows * (B / W));
#pragma unroll 1
  for (; k >= U; k -= U) {
    V g[U], u[U];
#pragma unroll
    for (int j = 0; j < U; ++j) {
      g[j] = gv[pw.off];
      u[j] = xv[pw.off];
      pw.next();
    }
#pragma unroll
    for (int j = 0; j < U; ++j) add(g[j], u[j]);
  }
#pragma unroll 1
  for (; k > 0; --k) {
    add(gv[pw.off], xv[pw.off]);
    pw.next();
  }
  s1 = block_sum(s1, scratch);
  __syncthreads();
  s2 = block_sum(s2, scratch);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = s1;
    partial[2 * blockIdx.x + 1] = s2;
  }
}

// ---- rows (B = 1): thread (ty, tx) of a tile of TX channel vectors × rows ---------------

// Where thread (ty, tx) of channel tile ct works: channel vector cv = ct·TX + tx of
// cvs = C / W, rows ty, ty + TY, … (TY = 256 / TX; threads past TX·TY idle).
struct RowPos {
  i64 cv;
  int ty, nty;
  bool active;
  __device__ __forceinline__ RowPos(unsigned ct, int tx_n, i64 cvs) {
    nty = BN_THREADS / tx_n;
    ty = static_cast<int>(threadIdx.x) / tx_n;
    cv = static_cast<i64>(ct) * tx_n + (static_cast<int>(threadIdx.x) - ty * tx_n);
    active = ty < nty && cv < cvs;
  }
};

// Tile of block blockIdx.x = t·ctiles + ct: channel vectors of tile ct, rows
// [a0, a0 + nrows); off..end: this thread's first vector, and the end of its rows.
struct RowTile {
  i64 t, a0, nrows, cvs, off, end, step;
  RowPos pos;
  __device__ __forceinline__ RowTile(i64 A, i64 C, int W, i64 rows, int tx_n)
      : cvs(C / W),
        pos(static_cast<unsigned>(blockIdx.x) %
                static_cast<unsigned>((C / W + tx_n - 1) / tx_n),
            tx_n, C / W) {
    const unsigned ctiles = static_cast<unsigned>((cvs + tx_n - 1) / tx_n);
    t = static_cast<unsigned>(blockIdx.x) / ctiles;
    a0 = t * rows;
    nrows = (a0 + rows < A ? a0 + rows : A) - a0;
    end = (a0 + nrows) * cvs;
    off = pos.active ? (a0 + pos.ty) * cvs + pos.cv : end;
    step = pos.nty * cvs;
  }
};

// Sum over ty of r[e·256 + ty·TX + tx] (e < W) into the ty = 0 entries, in a fixed tree.
template <int W>
__device__ __forceinline__ void tree_over_rows(double* r1, double* r2, const RowPos& w,
                                               int tx_n) {
  int h = 1;
  while (h < w.nty) h <<= 1;
  for (h >>= 1; h > 0; h >>= 1) {
    __syncthreads();
    if (w.ty < h && w.ty + h < w.nty) {
#pragma unroll
      for (int e = 0; e < W; ++e) {
        r1[e * BN_THREADS + threadIdx.x] += r1[e * BN_THREADS + threadIdx.x + h * tx_n];
        r2[e * BN_THREADS + threadIdx.x] += r2[e * BN_THREADS + threadIdx.x + h * tx_n];
      }
    }
  }
  __syncthreads();
}

// The end of a rows pass: each thread's W sums s1, s2 into shared memory (r1, and r2 =
// r1 + 256·W), summed over the tile's rows (tree_over_rows), then for each channel e of the
// thread's vector f(e, Σs1, Σs2, out) writes its pair at out = partial + 2·((cv·W + e)·tiles
// + t).
template <int W, typename F>
__device__ __forceinline__ void finish_rows(const double (&s1)[W], const double (&s2)[W],
                                            double* r1, const RowTile& tl, int tx_n, i64 tiles,
                                            double* partial, F f) {
  double* r2 = r1 + BN_THREADS * W;
  const RowPos& w = tl.pos;
  if (w.ty < w.nty) {
#pragma unroll
    for (int e = 0; e < W; ++e) {
      r1[e * BN_THREADS + threadIdx.x] = s1[e];
      r2[e * BN_THREADS + threadIdx.x] = s2[e];
    }
  }
  tree_over_rows<W>(r1, r2, w, tx_n);
  if (w.ty == 0 && w.active) {
#pragma unroll
    for (int e = 0; e < W; ++e)
      f(e, r1[e * BN_THREADS + threadIdx.x], r2[e * BN_THREADS + threadIdx.x],
        partial + 2 * ((w.cv * W + e) * tiles + tl.t));
  }
}

template <typename T, int W>
__device__ __forceinline__ void stats_rows(const T* x, i64 A, i64 C, i64 rows, i64 tiles,
                                           int tx_n, double* partial, double* r1) {
  typedef BnVec<T, W> V;
  constexpr int U = BnUnroll<T, W>::rows;
  const RowTile tl(A, C, W, rows, tx_n);
  const RowPos& w = tl.pos;
  const V* xv = reinterpret_cast<const V*>(x);
  double K[W], s1[W], s2[W];
  const V k0 = xv[w.active ? tl.a0 * tl.cvs + w.cv : 0];
#pragma unroll
  for (int e = 0; e < W; ++e) {
    K[e] = static_cast<double>(k0.v[e]);
    s1[e] = 0.0;
    s2[e] = 0.0;
  }
  auto add = [&](const V& v) {
#pragma unroll
    for (int e = 0; e < W; ++e) {
      const double d = static_cast<double>(v.v[e]) - K[e];
      s1[e] += d;
      s2[e] += d * d;
    }
  };
  i64 off = tl.off;
  const i64 step = tl.step, end = tl.end;
#pragma unroll 1
  for (; off + (U - 1) * step < end; off += U * step) {
    V v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = xv[off + u * step];
#pragma unroll
    for (int u = 0; u < U; ++u) add(v[u]);
  }
#pragma unroll 1
  for (; off < end; off += step) add(xv[off]);
  finish_rows<W>(s1, s2, r1, tl, tx_n, tiles, partial,
                 [&](int e, double a, double b, double* out) {
                   const double m = a / static_cast<double>(tl.nrows);
                   out[0] = K[e] + m;
                   out[1] = nonnegative(b - a * m);
                 });
}

template <typename T, int W>
__device__ __forceinline__ void sums_rows(const T* dy, const T* x, const double* mean, i64 A,
                                          i64 C, i64 rows, i64 tiles, int tx_n,
                                          double* partial, double* r1) {
  typedef BnVec<T, W> V;
  constexpr int U = BnUnroll<T, W>::rows2;
  const RowTile tl(A, C, W, rows, tx_n);
  const RowPos& w = tl.pos;
  const V* gv = reinterpret_cast<const V*>(dy);
  const V* xv = reinterpret_cast<const V*>(x);
  double mc[W], s1[W], s2[W];
#pragma unroll
  for (int e = 0; e < W; ++e) {
    mc[e] = w.active ? mean[w.cv * W + e] : 0.0;
    s1[e] = 0.0;
    s2[e] = 0.0;
  }
  auto add = [&](const V& g, const V& v) {
#pragma unroll
    for (int e = 0; e < W; ++e) {
      const double gd = static_cast<double>(g.v[e]);
      s1[e] += gd;
      s2[e] += gd * (static_cast<double>(v.v[e]) - mc[e]);
    }
  };
  i64 off = tl.off;
  const i64 step = tl.step, end = tl.end;
#pragma unroll 1
  for (; off + (U - 1) * step < end; off += U * step) {
    V g[U], v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      g[u] = gv[off + u * step];
      v[u] = xv[off + u * step];
    }
#pragma unroll
    for (int u = 0; u < U; ++u) add(g[u], v[u]);
  }
#pragma unroll 1
  for (; off < end; off += step) add(gv[off], xv[off]);
  finish_rows<W>(s1, s2, r1, tl, tx_n, tiles, partial,
                 [](int, double a, double b, double* out) {
                   out[0] = a;
                   out[1] = b;
                 });
}

// ---- the elementwise pass ----------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T affine1(T p, T u, T q, T w, T m, T r) {
  return p * u + q * (w - m) + r;
}

// Planes (B > 1): grid-stride over the A·C·B/W vectors in memory order; a thread's column
// b and channel c advance by counters (the stride's quotients are taken once per thread).
// Each step loads U items (vectors and their channel's p, q, m, r) before it stores any:
// out may be u or w (in place), so a load after a store would wait for it.
template <typename T, int W, bool SAME, typename Col>
__device__ __forceinline__ void affine_planes(const T* u, const T* w, T* out, i64 n, i64 C,
                                              i64 B, const T* pqmr) {
  typedef BnVec<T, W> V;
  constexpr int U = SAME ? BnUnroll<T, W>::affine : BnUnroll<T, W>::affine2;
  const i64 bv = B / W, nv = n / W;
  i64 i = grid_start();
  if (i >= nv) return;
  const i64 S = grid_stride();
  Col b = static_cast<Col>(i % bv), c = static_cast<Col>((i / bv) % C);
  const Col db = static_cast<Col>(S % bv), dc = static_cast<Col>((S / bv) % C);
  const Col bvc = static_cast<Col>(bv), Cc = static_cast<Col>(C);
  const V* uv = reinterpret_cast<const V*>(u);
  const V* wv = reinterpret_cast<const V*>(w);
  V* ov = reinterpret_cast<V*>(out);
  auto next = [&]() {
    i += S;
    b += db;
    Col cc = c + dc;
    if (b >= bvc) {
      b -= bvc;
      cc += 1;
    }
    c = cc >= Cc ? cc - Cc : cc;
  };
  const BnVec<T, 4>* prm = reinterpret_cast<const BnVec<T, 4>*>(pqmr);
  struct Item {
    V a, z;
    BnVec<T, 4> k;  // p, q, m, r of the item's channel
  };
  auto load = [&]() {
    Item it;
    it.a = uv[i];
    if (!SAME) it.z = wv[i];
    it.k = prm[c];
    return it;
  };
  auto apply = [&](i64 j, const Item& it) {
    const T* k = it.k.v;
    V o;
#pragma unroll
    for (int e = 0; e < W; ++e)
      o.v[e] = affine1(k[0], it.a.v[e], k[1], SAME ? it.a.v[e] : it.z.v[e], k[2], k[3]);
    ov[j] = o;
  };
#pragma unroll 1
  while (i + (U - 1) * S < nv) {
    i64 j[U];
    Item it[U];
#pragma unroll
    for (int x = 0; x < U; ++x) {
      j[x] = i;
      it[x] = load();
      next();
    }
#pragma unroll
    for (int x = 0; x < U; ++x) apply(j[x], it[x]);
  }
#pragma unroll 1
  while (i < nv) {
    apply(i, load());
    next();
  }
}

// Rows (B = 1): thread (ty, tx) keeps channel vector ct·TX + tx and its p, q, m, r in
// registers and walks rows. Block b takes channel tile b % ctiles as the (b / ctiles)-th
// of that tile's blocks; with fewer blocks than tiles a block loops over tiles, so any
// grid covers the array.
template <typename T, int W, bool SAME>
__device__ __forceinline__ void affine_rows(const T* u, const T* w, T* out, i64 A, i64 C,
                                            int tx_n, const T* pqmr) {
  typedef BnVec<T, W> V;
  constexpr int U = SAME ? BnUnroll<T, W>::affine_rows : BnUnroll<T, W>::affine2;
  const i64 cvs = C / W, end = A * cvs;
  const unsigned ctiles = static_cast<unsigned>((cvs + tx_n - 1) / tx_n), G = gridDim.x;
  const unsigned rb = blockIdx.x / ctiles;
  const V* uv = reinterpret_cast<const V*>(u);
  const V* wv = reinterpret_cast<const V*>(w);
  V* ov = reinterpret_cast<V*>(out);
#pragma unroll 1
  for (unsigned ct = blockIdx.x % ctiles; ct < ctiles; ct += G) {
    const unsigned nb = G >= ctiles ? (G - 1 - ct) / ctiles + 1 : 1;  // blocks on tile ct
    const RowPos rw(ct, tx_n, cvs);
    if (!rw.active) continue;
    const i64 step = static_cast<i64>(nb) * rw.nty * cvs;  // a thread's rows: nb·TY apart
    i64 off = (static_cast<i64>(rb) * rw.nty + rw.ty) * cvs + rw.cv;
    T pc[W], qc[W], mc[W], rc[W];
#pragma unroll
    for (int e = 0; e < W; ++e) {
      const BnVec<T, 4> k = reinterpret_cast<const BnVec<T, 4>*>(pqmr)[rw.cv * W + e];
      pc[e] = k.v[0];
      qc[e] = k.v[1];
      mc[e] = k.v[2];
      rc[e] = k.v[3];
    }
    auto one = [&](i64 j, const V& a, const V& z) {
      V o;
#pragma unroll
      for (int e = 0; e < W; ++e) o.v[e] = affine1(pc[e], a.v[e], qc[e], z.v[e], mc[e], rc[e]);
      ov[j] = o;
    };
#pragma unroll 1
    for (; off + (U - 1) * step < end; off += U * step) {
      V a[U], z[U];
#pragma unroll
      for (int x = 0; x < U; ++x) {
        a[x] = uv[off + x * step];
        if (!SAME) z[x] = wv[off + x * step];
      }
#pragma unroll
      for (int x = 0; x < U; ++x) one(off + x * step, a[x], SAME ? a[x] : z[x]);
    }
#pragma unroll 1
    for (; off < end; off += step) {
      const V a = uv[off];
      one(off, a, SAME ? a : wv[off]);
    }
  }
}

// Planes (or channels) longer than this are walked with 64-bit counters, one element at a
// time whatever w is (correct at any alignment; no real tensor gets there).
constexpr i64 kMaxCol = 0x7fffffffll;

// The kernels' dispatch on the access width w (1, 2 or 16 / sizeof(T); the host checked
// the alignment) and the layout.
template <typename T>
__device__ __forceinline__ void stats_partial(const T* x, i64 A, i64 C, i64 B, i64 rows,
                                              i64 tiles, int w, int tx, double* partial,
                                              double* smem) {
  constexpr int P = 16 / sizeof(T);
  if (B > 1) {
    if (B > kMaxCol)
      stats_planes<T, 1, i64>(x, A, C, B, rows, tiles, partial, smem);
    else if (w == P)
      stats_planes<T, P, unsigned>(x, A, C, B, rows, tiles, partial, smem);
    else
      stats_planes<T, 1, unsigned>(x, A, C, B, rows, tiles, partial, smem);
  } else {
    if (w == P)
      stats_rows<T, P>(x, A, C, rows, tiles, tx, partial, smem);
    else
      stats_rows<T, 1>(x, A, C, rows, tiles, tx, partial, smem);
  }
}

template <typename T>
__device__ __forceinline__ void sums_partial(const T* dy, const T* x, const double* mean, i64 A,
                                             i64 C, i64 B, i64 rows, i64 tiles, int w, int tx,
                                             double* partial, double* smem) {
  constexpr int P = 16 / sizeof(T);
  if (B > 1) {
    if (B > kMaxCol)
      sums_planes<T, 1, i64>(dy, x, mean, A, C, B, rows, tiles, partial, smem);
    else if (w == P)
      sums_planes<T, P, unsigned>(dy, x, mean, A, C, B, rows, tiles, partial, smem);
    else
      sums_planes<T, 1, unsigned>(dy, x, mean, A, C, B, rows, tiles, partial, smem);
  } else {
    if (w == P)
      sums_rows<T, P>(dy, x, mean, A, C, rows, tiles, tx, partial, smem);
    else
      sums_rows<T, 1>(dy, x, mean, A, C, rows, tiles, tx, partial, smem);
  }
}

template <typename T, int W>
__device__ __forceinline__ void affine_layout(const T* u, const T* w, T* out, i64 n, i64 C,
                                              i64 B, int tx, const T* pqmr) {
  if (B > 1) {
    if (B > kMaxCol || C > kMaxCol) {
      affine_planes<T, 1, false, i64>(u, w, out, n, C, B, pqmr);
    } else if (u == w) {
      affine_planes<T, W, true, unsigned>(u, w, out, n, C, B, pqmr);
    } else {
      affine_planes<T, W, false, unsigned>(u, w, out, n, C, B, pqmr);
    }
  } else {
    if (u == w)
      affine_rows<T, W, true>(u, w, out, n / C, C, tx, pqmr);
    else
      affine_rows<T, W, false>(u, w, out, n / C, C, tx, pqmr);
  }
}

template <typename T>
__device__ __forceinline__ void affine(const T* u, const T* w, T* out, i64 n, i64 C, i64 B,
                                       int vw, int tx, const T* pqmr) {
  constexpr int P = 16 / sizeof(T);
  if (vw == P)
    affine_layout<T, P>(u, w, out, n, C, B, tx, pqmr);
  else
    affine_layout<T, 1>(u, w, out, n, C, B, tx, pqmr);
}

}  // namespace gpugd

// w, vw: elements per access (1, or 16 / sizeof(T) where the host found the alignment);
// tx: channel vectors per rows tile (B = 1). partial: 2 doubles per (channel, tile); pqmr:
// row c = p[c], q[c], m[c], r[c] (a (C, 4) array: one 16-byte load for float). One shared
// buffer per kernel: the rows tree's 2·256·w doubles, or block_sum's scratch.
#define GPUGD_BATCHNORM_KERNELS(T, SFX)                                                       \
  extern "C" __global__ void gpugd_batchnorm_stats_partial_##SFX(                             \
      const T* x, i64 A, i64 C, i64 B, i64 rows, i64 tiles, int w, int tx, double* partial) { \
    __shared__ double smem[2 * gpugd::BN_THREADS * (16 / sizeof(T))];                         \
    gpugd::stats_partial<T>(x, A, C, B, rows, tiles, w, tx, partial, smem);                   \
  }                                                                                           \
  extern "C" __global__ void gpugd_batchnorm_sums_partial_##SFX(                              \
      const T* dy, const T* x, const double* mean, i64 A, i64 C, i64 B, i64 rows, i64 tiles,  \
      int w, int tx, double* partial) {                                                       \
    __shared__ double smem[2 * gpugd::BN_THREADS * (16 / sizeof(T))];                         \
    gpugd::sums_partial<T>(dy, x, mean, A, C, B, rows, tiles, w, tx, partial, smem);          \
  }                                                                                           \
  extern "C" __global__ void gpugd_batchnorm_affine_##SFX(                                    \
      const T* u, const T* w, T* out, i64 n, i64 C, i64 B, int vw, int tx, const T* pqmr) {   \
    gpugd::affine<T>(u, w, out, n, C, B, vw, tx, pqmr);                                       \
  }

GPUGD_BATCHNORM_KERNELS(float, f32)
GPUGD_BATCHNORM_KERNELS(double, f64)

// Per channel c, one warp folds the `tiles` partials of c: lane l takes tiles l, l + 32, …
// in turn, then the lanes merge in a fixed tree (bitwise the same for any grid). mode 0:
// (mean, M2) of tile t over min(rows, A − t·rows)·B values, by Chan → out0 = mean, out1 =
// biased variance; mode 1: plain sums → out0, out1.
extern "C" __global__ void gpugd_batchnorm_merge(const double* partial, i64 C, i64 tiles,
                                                 i64 A, i64 B, i64 rows, int mode,
                                                 double* out0, double* out1) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const i64 warps = gpugd::grid_stride() / 32;
  for (i64 c = gpugd::grid_start() / 32; c < C; c += warps) {
    double n = 0.0, m = 0.0, s = 0.0;
    for (i64 t = lane; t < tiles; t += 32) {
      const double* q = partial + 2 * (c * tiles + t);
      if (mode == 0) {
        const i64 left = A - t * rows;
        const double nb = static_cast<double>((left < rows ? left : rows) * B);
        gpugd::chan(n, m, s, nb, q[0], q[1]);
      } else {
        m += q[0];
        s += q[1];
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const double nb = __shfl_down_sync(0xffffffffu, n, off);
      const double mb = __shfl_down_sync(0xffffffffu, m, off);
      const double sb = __shfl_down_sync(0xffffffffu, s, off);
      if (mode == 0) {
        gpugd::chan(n, m, s, nb, mb, sb);
      } else {
        m += mb;
        s += sb;
      }
    }
    if (lane == 0) {
      out0[c] = m;
      out1[c] = mode == 0 ? (n > 0.0 ? s / n : 0.0) : s;
    }
  }
}
