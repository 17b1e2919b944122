// gpugd vector family: the level-1 kernels the roofline is built on.
//   axpy_:          x <- x + a*y          (reads x, y; writes x: 3 words per element)
//   scale_:         x <- a*x              (reads x; writes x: 2 words per element)
//   sum_of_squares: sum_i x_i^2 in double (reads x once: 1 word per element), two stages:
//                   per-block partials, then one block folds them; no atomics, so the
//                   result is bitwise reproducible for a given grid.
// Grid-stride loops with 64-bit indices; 16-byte vector accesses when every pointer is
// 16-byte aligned, a scalar loop otherwise and for the tail.
#include "common.cuh"

namespace gpugd {

// Items each thread loads before it stores or sums, per iteration of the main loops (see
// common.cuh's stream_items): 16-byte packs, chosen from ptxas sm_90 (registers ≤ 32, so
// 8 blocks of 256 threads per SM, and the loads really issued before the first use):
// 64 B per thread in flight for axpy (2 packs × 2 arrays), scale and sum of squares
// (4 packs); 32 B for scale + sum of squares (2 packs: at 4, ptxas delays the last two
// loads past the first sums and takes 40 registers). The scalar paths (misaligned
// pointers) take kScalarUnroll elements.
constexpr int kAxpyUnroll = 2, kScaleUnroll = 4, kSsqUnroll = 4, kScaleSsqUnroll = 2;
constexpr int kScalarUnroll = 4;

// x[j] += a·y[j] over items j < m of pack type P (a 16-byte pack, or Single for the
// scalar path). y may be x (axpy_(x, a, x) is allowed: each element is read, then written,
// by one thread), so neither pointer is __restrict__.
template <typename P, int U, typename T>
__device__ __forceinline__ void axpy_loop(P* x, T a, const P* y, i64 m) {
  struct XY {
    P x, y;
  };
  stream_items<U>(
      grid_start(), grid_stride(), m, [&](i64 j) { return XY{x[j], y[j]}; },
      [&](i64 j, XY v) {
#pragma unroll
        for (int k = 0; k < P::width; ++k) v.x.v[k] += a * v.y.v[k];
        x[j] = v.x;
      });
}

template <typename T>
__device__ __forceinline__ void axpy_body(T* x, T a, const T* y, i64 n) {
  constexpr int W = Pack<T>::width;
  i64 done = 0;
  if (aligned16(x) && aligned16(y)) {
    typedef AlignedPack<T> P;
    axpy_loop<P, kAxpyUnroll>(reinterpret_cast<P*>(x), a, reinterpret_cast<const P*>(y),
                              n / W);
    done = n / W * W;
  }
  typedef Single<T> S;
  axpy_loop<S, kScalarUnroll>(reinterpret_cast<S*>(x + done), a,
                              reinterpret_cast<const S*>(y + done), n - done);
}

template <typename P, int U, typename T>
__device__ __forceinline__ void scale_loop(P* __restrict__ x, T a, i64 m) {
  stream_items<U>(
      grid_start(), grid_stride(), m, [&](i64 j) { return x[j]; },
      [&](i64 j, P v) {
#pragma unroll
        for (int k = 0; k < P::width; ++k) v.v[k] *= a;
        x[j] = v;
      });
}

template <typename T>
__device__ __forceinline__ void scale_body(T* __restrict__ x, T a, i64 n) {
  constexpr int W = Pack<T>::width;
  i64 done = 0;
  if (aligned16(x)) {
    typedef AlignedPack<T> P;
    scale_loop<P, kScaleUnroll>(reinterpret_cast<P*>(x), a, n / W);
    done = n / W * W;
  }
  typedef Single<T> S;
  scale_loop<S, kScalarUnroll>(reinterpret_cast<S*>(x + done), a, n - done);
}

// acc += Σ (a·x_j)² over this thread's items j < m, in increasing j (the order of the
// plain grid-stride loop: the partials keep their bits); with SCALE x_j ← a·x_j stored.
template <typename P, int U, bool SCALE, typename T>
__device__ __forceinline__ void ssq_loop(P* __restrict__ x, T a, i64 m, double& acc) {
  stream_items<U>(
      grid_start(), grid_stride(), m, [&](i64 j) { return x[j]; },
      [&](i64 j, P v) {
#pragma unroll
        for (int k = 0; k < P::width; ++k) {
          if (SCALE) v.v[k] *= a;
          const double d = static_cast<double>(v.v[k]);
          acc = fma(d, d, acc);
        }
        if (SCALE) x[j] = v;
      });
}

// Stage 1: partial[blockIdx.x] = Σ (a·x_i)² over this block's grid-stride share; with SCALE
// x ← a·x in place on the way (the averaging pass that also yields the norm), else a = 1
// and x is only read.
template <typename T, bool SCALE>
__device__ __forceinline__ void ssq_partial_body(T* __restrict__ x, T a, i64 n,
                                                 double* __restrict__ partial) {
  __shared__ double scratch[32];
  constexpr int W = Pack<T>::width;
  double acc = 0.0;
  i64 done = 0;
  if (aligned16(x)) {
    typedef AlignedPack<T> P;
    ssq_loop<P, SCALE ? kScaleSsqUnroll : kSsqUnroll, SCALE>(reinterpret_cast<P*>(x), a, n / W,
                                                             acc);
    done = n / W * W;
  }
  typedef Single<T> S;
  ssq_loop<S, kScalarUnroll, SCALE>(reinterpret_cast<S*>(x + done), a, n - done, acc);
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

}  // namespace gpugd

extern "C" {

__global__ void gpugd_vector_scale_sum_of_squares_partial_f32(float* x, float a, i64 n,
                                                              double* partial) {
  gpugd::ssq_partial_body<float, true>(x, a, n, partial);
}
__global__ void gpugd_vector_scale_sum_of_squares_partial_f64(double* x, double a, i64 n,
                                                              double* partial) {
  gpugd::ssq_partial_body<double, true>(x, a, n, partial);
}

__global__ void gpugd_vector_axpy_f32(float* x, float a, const float* y, i64 n) {
  gpugd::axpy_body<float>(x, a, y, n);
}
__global__ void gpugd_vector_axpy_f64(double* x, double a, const double* y, i64 n) {
  gpugd::axpy_body<double>(x, a, y, n);
}
__global__ void gpugd_vector_scale_f32(float* x, float a, i64 n) {
  gpugd::scale_body<float>(x, a, n);
}
__global__ void gpugd_vector_scale_f64(double* x, double a, i64 n) {
  gpugd::scale_body<double>(x, a, n);
}
__global__ void gpugd_vector_sum_of_squares_partial_f32(const float* x, i64 n, double* partial) {
  gpugd::ssq_partial_body<float, false>(const_cast<float*>(x), 1.0f, n, partial);
}
__global__ void gpugd_vector_sum_of_squares_partial_f64(const double* x, i64 n, double* partial) {
  gpugd::ssq_partial_body<double, false>(const_cast<double*>(x), 1.0, n, partial);
}

// Stage 2, one block: out[0] = sum of partial[0..m). Fixed order: deterministic.
__global__ void gpugd_vector_sum_partials(const double* partial, i64 m, double* out) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (i64 i = threadIdx.x; i < m; i += blockDim.x) acc += partial[i];
  acc = gpugd::block_sum(acc, scratch);
  if (threadIdx.x == 0) out[0] = acc;
}

}  // extern "C"
