// gpugd reduce family: gradient statistics of many tensors in one read-only pass.
// For every tensor of a tensor table (row 0: addresses, row 5: sizes; see optim.cu's
// apply_table) and in the same pass: Σ x² (in double), the count of non-finite elements and
// the count of exact zeros. Two stages, no atomics, so the result is bitwise the same run
// to run whatever the grid size:
//   1. stats_partial: one block per chunk (of at most `chunk` elements of one tensor) at a
//      time writes that chunk's three sums — a fixed-order block reduction, so a chunk's
//      partials depend only on its data and the block size.
//   2. stats_tensors (a block per tensor): its chunks' partials by a fixed tree;
//      stats_finish (one block): the totals over tensors by a fixed tree.
#include "common.cuh"
#include "precision.cuh"

namespace gpugd {

template <typename T>
__device__ __forceinline__ void stats_add(T x, double& ssq, double& nonfinite, double& zeros) {
  const auto f = to_float(x);  // float16/bfloat16 widened (precision.cuh)
  const double v = static_cast<double>(f);
  ssq += v * v;
  nonfinite += isfinite(f) ? 0.0 : 1.0;
  zeros += v == 0.0 ? 1.0 : 0.0;
}

// 16-byte packs (elements on the scalar path) each thread loads before it sums them, per
// iteration (common.cuh's stream_items), from ptxas sm_90: 3 for float and double (32
// registers, 8 blocks of 256 per SM, 48 B in flight per thread: 96 KB per SM; at 4 ptxas
// issues the last two after the first sums, 32 B, and float takes 34 registers), 2 for
// the half types (32 B; at 3 still 32 B); the scalar path (misaligned tensors, tails) as
// many elements. A thread takes its items in increasing order, as a plain loop would: the
// chunk's partials keep their bits.
template <typename T>
struct StatsUnroll {
  static constexpr int packs = sizeof(T) >= 4 ? 3 : 2;
};

template <typename P, int U>
__device__ __forceinline__ void stats_loop(const P* x, i64 m, double& ssq, double& nonfinite,
                                           double& zeros) {
  stream_items<U>(
      threadIdx.x, blockDim.x, m, [&](i64 j) { return x[j]; },
      [&](i64, const P& v) {
#pragma unroll
        for (int k = 0; k < P::width; ++k) stats_add(v.v[k], ssq, nonfinite, zeros);
      });
}

template <typename T>
__device__ __forceinline__ void stats_partial_body(const i64* __restrict__ table, i64 ntensors,
                                                   const i64* __restrict__ chunks, i64 nchunks,
                                                   i64 chunk, double* __restrict__ partial) {
  __shared__ double scratch[32];
  constexpr int W = Pack<T>::width;
  for (i64 c = blockIdx.x; c < nchunks; c += gridDim.x) {
    const i64 t = chunks[2 * c], lo = chunks[2 * c + 1];
    const i64 size = table[5 * ntensors + t];
    const i64 n = size - lo < chunk ? size - lo : chunk;
    const T* x = reinterpret_cast<const T*>(table[t]) + lo;
    assume_global(x);  // LDG, not generic loads
    double ssq = 0.0, nonfinite = 0.0, zeros = 0.0;
    i64 done = 0;
    if (aligned16(x)) {
      typedef AlignedPack<T> P;
      stats_loop<P, StatsUnroll<T>::packs>(reinterpret_cast<const P*>(x), n / W, ssq, nonfinite,
                                           zeros);
      done = n / W * W;
    }
    typedef Single<T> S;
    stats_loop<S, StatsUnroll<T>::packs>(reinterpret_cast<const S*>(x + done), n - done, ssq,
                                         nonfinite, zeros);
    ssq = block_sum(ssq, scratch);
    __syncthreads();
    nonfinite = block_sum(nonfinite, scratch);
    __syncthreads();
    zeros = block_sum(zeros, scratch);
    if (threadIdx.x == 0) {
      partial[3 * c] = ssq;
      partial[3 * c + 1] = nonfinite;
      partial[3 * c + 2] = zeros;
    }
    __syncthreads();
  }
}

}  // namespace gpugd

#define GPUGD_REDUCE_STATS_PARTIAL(T, SFX)                                                     \
  extern "C" __global__ void gpugd_reduce_stats_partial_##SFX(                                  \
      const i64* table, i64 ntensors, const i64* chunks, i64 nchunks, i64 chunk,                \
      double* partial) {                                                                        \
    gpugd::stats_partial_body<T>(table, ntensors, chunks, nchunks, chunk, partial);             \
  }

GPUGD_REDUCE_STATS_PARTIAL(float, f32)
GPUGD_REDUCE_STATS_PARTIAL(double, f64)
GPUGD_REDUCE_STATS_PARTIAL(gpugd::f16_t, f16)
GPUGD_REDUCE_STATS_PARTIAL(gpugd::bf16_t, bf16)

// Stage 2, in two launches. first_chunk[t] .. first_chunk[t + 1]: tensor t's chunks
// (ntensors + 1 entries); `partial` holds `ncols` (≤ 3) sums per chunk. Also folds the optim
// family's per-chunk update statistics.
//   stats_tensors: one block per tensor at a time; thread i sums chunks i, i + blockDim, …
//     in order, then a fixed tree: per_tensor[ncols·t + k] depends only on the data, the
//     chunking and the block size (not the grid). A 10^9-element tensor's 15,259 chunks
//     take 60 dependent loads per thread instead of 15,259 in one thread.
//   stats_finish: one block; total[k] sums the tensors by a fixed tree; flag (may be null)
//     = 1 when column 1, the non-finite count, is > 0.
// The columns are three registers (a runtime-indexed array would live in local memory).
namespace gpugd {
// The block sums of up to three columns (ncols ≤ 3, uniform over the block), valid in
// thread 0: one fixed tree each, a barrier between them so the scratch is free again.
__device__ __forceinline__ void block_sum3(double& s0, double& s1, double& s2, int ncols,
                                           double* scratch) {
  s0 = block_sum(s0, scratch);
  __syncthreads();
  if (ncols > 1) s1 = block_sum(s1, scratch);
  __syncthreads();
  if (ncols > 2) s2 = block_sum(s2, scratch);
}

// out[0..ncols) = (s0, s1, s2)
__device__ __forceinline__ void store3(double* out, double s0, double s1, double s2,
                                       int ncols) {
  out[0] = s0;
  if (ncols > 1) out[1] = s1;
  if (ncols > 2) out[2] = s2;
}
}  // namespace gpugd

extern "C" __global__ void gpugd_reduce_stats_tensors(const i64* first_chunk, i64 ntensors,
                                                      const double* partial, int ncols,
                                                      double* per_tensor) {
  __shared__ double scratch[32];
  for (i64 t = blockIdx.x; t < ntensors; t += gridDim.x) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0;
    for (i64 c = first_chunk[t] + threadIdx.x; c < first_chunk[t + 1]; c += blockDim.x) {
      const double* row = partial + ncols * c;
      s0 += row[0];
      if (ncols > 1) s1 += row[1];
      if (ncols > 2) s2 += row[2];
    }
    gpugd::block_sum3(s0, s1, s2, ncols, scratch);
    if (threadIdx.x == 0) gpugd::store3(per_tensor + ncols * t, s0, s1, s2, ncols);
    __syncthreads();
  }
}

extern "C" __global__ void gpugd_reduce_stats_finish(const double* per_tensor, i64 ntensors,
                                                     int ncols, double* total, int* flag) {
  __shared__ double scratch[32];
  double s0 = 0.0, s1 = 0.0, s2 = 0.0;
  for (i64 t = threadIdx.x; t < ntensors; t += blockDim.x) {
    const double* row = per_tensor + ncols * t;
    s0 += row[0];
    if (ncols > 1) s1 += row[1];
    if (ncols > 2) s2 += row[2];
  }
  gpugd::block_sum3(s0, s1, s2, ncols, scratch);
  if (threadIdx.x == 0) {
    gpugd::store3(total, s0, s1, s2, ncols);
    if (flag != nullptr) flag[0] = ncols > 1 && s1 > 0.0 ? 1 : 0;
  }
}

// out[i] = (b_0[i] + … + b_{k−1}[i])·inv, the inputs' addresses in device memory: the mean of
// k local gradient buffers. Every input element is read before out[i] is written, so out
// may be one of the inputs. The sum runs b_0, b_1, … in order for every path. For k ≤ 4 the
// addresses are loaded once per thread (a specialization per k), one pass; k ≥ 5 in passes
// accumulated in out (average_groups: 4 inputs, then 3 or 2 at a time; where out is one of
// b_4 …, the any-k loop, one pass); 16-byte packs when out and every input are 16-byte
// aligned, elements otherwise and for the tail.
namespace gpugd {

// Packs per thread per iteration for k inputs (k·U 16-byte loads in flight): 4 for k = 1,
// 2 for k = 2, 1 for k ≥ 3.
template <int K>
struct AverageUnroll {
  static constexpr int packs = K == 1 ? 4 : K == 2 ? 2 : 1;
};

// out[j] = (b[0][j] + … + b[K−1][j])·inv for items j < m of pack type P.
template <typename P, int K, int U, typename T>
__device__ __forceinline__ void average_loop(const P* const* b, P* out, i64 m, T inv) {
  struct In {
    P v[K];
  };
  stream_items<U>(
      grid_start(), grid_stride(), m,
      [&](i64 j) {
        In in;
#pragma unroll
        for (int q = 0; q < K; ++q) in.v[q] = b[q][j];
        return in;
      },
      [&](i64 j, const In& in) {
        P acc = in.v[0];
#pragma unroll
        for (int q = 1; q < K; ++q)
#pragma unroll
          for (int e = 0; e < P::width; ++e) acc.v[e] += in.v[q].v[e];
#pragma unroll
        for (int e = 0; e < P::width; ++e) acc.v[e] *= inv;
        out[j] = acc;
      });
}

// One pass over n elements of K inputs b: in 16-byte packs when ``packed`` (out and every
// input 16-byte aligned), else element by element.
template <typename T, int K>
__device__ __forceinline__ void average_pass(const T* const* b, T* out, i64 n, T inv,
                                             bool packed) {
  constexpr int W = Pack<T>::width;
  i64 done = 0;
  if (packed) {
    typedef AlignedPack<T> P;
    const P* bp[K];
#pragma unroll
    for (int q = 0; q < K; ++q) bp[q] = reinterpret_cast<const P*>(b[q]);
    average_loop<P, K, AverageUnroll<K>::packs>(bp, reinterpret_cast<P*>(out), n / W, inv);
    done = n / W * W;
  }
  typedef Single<T> S;
  const S* bs[K];
#pragma unroll
  for (int q = 0; q < K; ++q) bs[q] = reinterpret_cast<const S*>(b[q] + done);
  average_loop<S, K, AverageUnroll<K>::packs>(bs, reinterpret_cast<S*>(out + done), n - done,
                                              inv);
}

// b[q] = the input address ptrs[q0 + q], q < K (loaded once per thread).
template <typename T, int K>
__device__ __forceinline__ void load_inputs(const i64* __restrict__ ptrs, int q0, const T** b) {
#pragma unroll
  for (int q = 0; q < K; ++q) {
    b[q] = reinterpret_cast<const T*>(ptrs[q0 + q]);
    assume_global(b[q]);
  }
}

template <typename T, int K>
__device__ __forceinline__ void average_k(const i64* __restrict__ ptrs, T* out, i64 n, T inv) {
  const T* b[K];
  load_inputs<T, K>(ptrs, 0, b);
  u64 bits = reinterpret_cast<u64>(out);
#pragma unroll
  for (int q = 0; q < K; ++q) bits |= reinterpret_cast<u64>(b[q]);
  average_pass<T, K>(b, out, n, inv, (bits & 15ull) == 0ull);
}

// out = out + b[q0] + … + b[q0 + R − 1], scaled by inv: R + 1 loads per item, R ≤ 3 for
// float (4 loads, as average_k<4>) and R ≤ 2 for double, within the 40 registers of the
// launch bounds (R = 3 spilled one value for double).
template <typename T, int R>
__device__ __forceinline__ void average_onto(const i64* __restrict__ ptrs, int q0, T* out, i64 n,
                                             T inv, bool packed) {
  const T* b[R + 1];
  b[0] = out;
  load_inputs<T, R>(ptrs, q0, b + 1);
  average_pass<T, R + 1>(b, out, n, inv, packed);
}

// k ≥ 5 inputs, in passes over the whole range with their addresses in registers: out =
// b_0 + … + b_3, then out = out + b_4 + b_5 (+ b_6 for float), …, the last pass scaled by
// inv. The sum
// still runs b_0, b_1, … in order and the partial is rounded to T in out as the one-pass
// loop rounds its accumulator: the same bits. Every pass takes the same path (packed or not,
// from all k addresses and out) and so the same items in each thread: a thread reads back
// only its own writes. Traffic: each later pass reads and writes out again, (k + 1 + 2P)·n
// elements for P later passes instead of (k + 1)·n (k = 5: +33%), at 64 B (double: 48 B
// in later passes) of loads in flight per thread instead of the any-k loop's one address
// load before each group. False (nothing done) where out is one of b_4 … b_{k−1}, which a pass
// before would overwrite: the caller then runs the one-pass loop.
template <typename T>
__device__ __forceinline__ bool average_groups(const i64* __restrict__ ptrs, int k, T* out,
                                               i64 n, T inv) {
  u64 bits = reinterpret_cast<u64>(out);
  for (int q = 0; q < k; ++q) {
    if (q >= 4 && ptrs[q] == static_cast<i64>(reinterpret_cast<u64>(out))) return false;
    bits |= static_cast<u64>(ptrs[q]);
  }
  const bool packed = (bits & 15ull) == 0ull;
  {
    const T* b[4];
    load_inputs<T, 4>(ptrs, 0, b);
    average_pass<T, 4>(b, out, n, T(1), packed);
  }
  constexpr int R = sizeof(T) == 4 ? 3 : 2;  // inputs per later pass (see average_onto)
#pragma unroll 1
  for (int q0 = 4; q0 < k; q0 += R) {
    const T scale = q0 + R >= k ? inv : T(1);
    if (R == 3 && k - q0 >= 3)
      average_onto<T, R == 3 ? 3 : 2>(ptrs, q0, out, n, scale, packed);
    else if (k - q0 >= 2)
      average_onto<T, 2>(ptrs, q0, out, n, scale, packed);
    else
      average_onto<T, 1>(ptrs, q0, out, n, scale, packed);
  }
  return true;
}

// Any k: the addresses re-read (from L1) for every item, the inputs' loads in groups of 4.
template <typename P, typename T>
__device__ __forceinline__ void average_any_loop(const i64* __restrict__ ptrs, int k, i64 first,
                                                 P* out, i64 m, T inv) {
  const i64 start = grid_start(), stride = grid_stride();
  for (i64 j = start; j < m; j += stride) {
    P acc = reinterpret_cast<const P*>(reinterpret_cast<const T*>(ptrs[0]) + first)[j];
    for (int q0 = 1; q0 < k; q0 += 4) {
      P v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (q0 + u < k)
          v[u] = reinterpret_cast<const P*>(reinterpret_cast<const T*>(ptrs[q0 + u]) + first)[j];
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (q0 + u < k)
#pragma unroll
          for (int e = 0; e < P::width; ++e) acc.v[e] += v[u].v[e];
    }
#pragma unroll
    for (int e = 0; e < P::width; ++e) acc.v[e] *= inv;
    out[j] = acc;
  }
}

template <typename T>
__device__ __forceinline__ void average_any(const i64* __restrict__ ptrs, int k, T* out, i64 n,
                                            T inv) {
  constexpr int W = Pack<T>::width;
  u64 bits = reinterpret_cast<u64>(out);
  for (int q = 0; q < k; ++q) bits |= static_cast<u64>(ptrs[q]);
  i64 done = 0;
  if ((bits & 15ull) == 0ull) {
    typedef AlignedPack<T> P;
    average_any_loop<P, T>(ptrs, k, 0, reinterpret_cast<P*>(out), n / W, inv);
    done = n / W * W;
  }
  typedef Single<T> S;
  average_any_loop<S, T>(ptrs, k, done, reinterpret_cast<S*>(out + done), n - done, inv);
}

template <typename T>
__device__ __forceinline__ void average_body(const i64* __restrict__ ptrs, int k, T* out, i64 n,
                                             T inv) {
  switch (k) {
    case 1: average_k<T, 1>(ptrs, out, n, inv); break;
    case 2: average_k<T, 2>(ptrs, out, n, inv); break;
    case 3: average_k<T, 3>(ptrs, out, n, inv); break;
    case 4: average_k<T, 4>(ptrs, out, n, inv); break;
    default:
      if (!average_groups<T>(ptrs, k, out, n, inv)) average_any<T>(ptrs, k, out, n, inv);
      break;
  }
}

}  // namespace gpugd

// __launch_bounds__(256, 6): at most 40 registers (6 blocks of 256 threads per SM), no
// spills (ptxas sm_90); unbounded, k = 4 takes 47–48 (5 blocks): in flight per SM 96 KB
// (k = 1, 2, 4; 72 KB for k = 3) instead of 80. gpugd launches 256 threads per block.
#define GPUGD_REDUCE_AVERAGE(T, SFX)                                                           \
  extern "C" __global__ void __launch_bounds__(256, 6)                                         \
      gpugd_reduce_average_##SFX(const i64* ptrs, int k, T* out, i64 n, T inv) {               \
    gpugd::average_body<T>(ptrs, k, out, n, inv);                                              \
  }

GPUGD_REDUCE_AVERAGE(float, f32)
GPUGD_REDUCE_AVERAGE(double, f64)
