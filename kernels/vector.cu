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

// y may be x (axpy_(x, a, x) is allowed: each element is read, then written, by one
// thread), so neither pointer is __restrict__.
template <typename T>
__device__ __forceinline__ void axpy_body(T* x, T a, const T* y, i64 n) {
  constexpr int W = Pack<T>::width;
  const i64 start = grid_start(), stride = grid_stride();
  i64 done = 0;
  if (aligned16(x) && aligned16(y)) {
    const i64 nv = n / W;
    AlignedPack<T>* xv = reinterpret_cast<AlignedPack<T>*>(x);
    const AlignedPack<T>* yv = reinterpret_cast<const AlignedPack<T>*>(y);
    for (i64 i = start; i < nv; i += stride) {
      AlignedPack<T> xp = xv[i];
      const AlignedPack<T> yp = yv[i];
#pragma unroll
      for (int k = 0; k < W; ++k) xp.v[k] += a * yp.v[k];
      xv[i] = xp;
    }
    done = nv * W;
  }
  for (i64 i = done + start; i < n; i += stride) x[i] += a * y[i];
}

template <typename T>
__device__ __forceinline__ void scale_body(T* __restrict__ x, T a, i64 n) {
  constexpr int W = Pack<T>::width;
  const i64 start = grid_start(), stride = grid_stride();
  i64 done = 0;
  if (aligned16(x)) {
    const i64 nv = n / W;
    AlignedPack<T>* xv = reinterpret_cast<AlignedPack<T>*>(x);
    for (i64 i = start; i < nv; i += stride) {
      AlignedPack<T> xp = xv[i];
#pragma unroll
      for (int k = 0; k < W; ++k) xp.v[k] *= a;
      xv[i] = xp;
    }
    done = nv * W;
  }
  for (i64 i = done + start; i < n; i += stride) x[i] *= a;
}

// Stage 1: partial[blockIdx.x] = Σ (a·x_i)² over this block's grid-stride share; with SCALE
// x ← a·x in place on the way (the averaging pass that also yields the norm), else a = 1
// and x is only read.
template <typename T, bool SCALE>
__device__ __forceinline__ void ssq_partial_body(T* __restrict__ x, T a, i64 n,
                                                 double* __restrict__ partial) {
  __shared__ double scratch[32];
  constexpr int W = Pack<T>::width;
  const i64 start = grid_start(), stride = grid_stride();
  double acc = 0.0;
  i64 done = 0;
  if (aligned16(x)) {
    const i64 nv = n / W;
    AlignedPack<T>* xv = reinterpret_cast<AlignedPack<T>*>(x);
    for (i64 i = start; i < nv; i += stride) {
      AlignedPack<T> xp = xv[i];
#pragma unroll
      for (int k = 0; k < W; ++k) {
        if (SCALE) xp.v[k] *= a;
        const double v = static_cast<double>(xp.v[k]);
        acc = fma(v, v, acc);
      }
      if (SCALE) xv[i] = xp;
    }
    done = nv * W;
  }
  for (i64 i = done + start; i < n; i += stride) {
    if (SCALE) x[i] *= a;
    const double v = static_cast<double>(x[i]);
    acc = fma(v, v, acc);
  }
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
