// gpugd batchnorm family on the canonical (A, C, B) view: element (a, c, b) at
// (a·C + c)·B + b ((N, C) = (N, C, 1); NCHW = (N, C, H·W); NHWC = (N·H·W, C, 1)).
// Statistics: each block takes one tile — channel c, rows a in [t·rows, (t + 1)·rows) —
// every thread runs Welford over its strided share in double, the block merges the
// threads' (count, mean, M2) with Chan's formula in a fixed tree, and writes the tile's
// partial; gpugd_batchnorm_merge then folds each channel's tiles in order. No atomics: the
// result is the same run to run. The backward's Σ dy and Σ dy·(x − mean) use the same
// tiling. The elementwise pass is out = p[c]·u + q[c]·(w − m[c]) + r[c]: x − mean first, so
// nothing cancels when |mean| ≫ std.
#include "common.cuh"

namespace gpugd {

constexpr int BN_THREADS = 256;

__device__ __forceinline__ void chan(double& n, double& m, double& s, double nb, double mb,
                                     double sb) {
  const double nn = n + nb;
  if (nn == 0.0) return;
  const double d = mb - m;
  m += d * (nb / nn);
  s += sb + d * d * (n * nb / nn);
  n = nn;
}

template <typename T>
__device__ __forceinline__ void tile_range(i64 A, i64 rows, i64 tile, i64& a0, i64& a1) {
  a0 = tile * rows;
  a1 = a0 + rows < A ? a0 + rows : A;
}

template <typename T>
__device__ void stats_partial_body(const T* x, i64 A, i64 C, i64 B, i64 rows, i64 tiles,
                                   double* partial) {
  __shared__ double sn[BN_THREADS], sm[BN_THREADS], ss[BN_THREADS];
  const i64 c = blockIdx.x / tiles, tile = blockIdx.x % tiles;
  i64 a0, a1;
  tile_range<T>(A, rows, tile, a0, a1);
  const i64 count = (a1 - a0) * B;
  double n = 0.0, m = 0.0, s = 0.0;
  for (i64 k = threadIdx.x; k < count; k += blockDim.x) {
    const i64 a = a0 + k / B, b = k % B;
    const double v = static_cast<double>(x[(a * C + c) * B + b]);
    n += 1.0;
    const double d = v - m;
    m += d / n;
    s += d * (v - m);
  }
  sn[threadIdx.x] = n;
  sm[threadIdx.x] = m;
  ss[threadIdx.x] = s;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h >>= 1) {
    if (threadIdx.x < h) {
      double n1 = sn[threadIdx.x], m1 = sm[threadIdx.x], s1 = ss[threadIdx.x];
      chan(n1, m1, s1, sn[threadIdx.x + h], sm[threadIdx.x + h], ss[threadIdx.x + h]);
      sn[threadIdx.x] = n1;
      sm[threadIdx.x] = m1;
      ss[threadIdx.x] = s1;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[3 * blockIdx.x] = sn[0];
    partial[3 * blockIdx.x + 1] = sm[0];
    partial[3 * blockIdx.x + 2] = ss[0];
  }
}

template <typename T>
__device__ void sums_partial_body(const T* dy, const T* x, const double* mean, i64 A, i64 C,
                                  i64 B, i64 rows, i64 tiles, double* partial) {
  __shared__ double scratch[32];
  const i64 c = blockIdx.x / tiles, tile = blockIdx.x % tiles;
  i64 a0, a1;
  tile_range<T>(A, rows, tile, a0, a1);
  const i64 count = (a1 - a0) * B;
  const double mc = mean[c];
  double s1 = 0.0, s2 = 0.0;
  for (i64 k = threadIdx.x; k < count; k += blockDim.x) {
    const i64 i = ((a0 + k / B) * C + c) * B + k % B;
    const double g = static_cast<double>(dy[i]);
    s1 += g;
    s2 += g * (static_cast<double>(x[i]) - mc);
  }
  s1 = block_sum(s1, scratch);
  __syncthreads();
  s2 = block_sum(s2, scratch);
  if (threadIdx.x == 0) {
    partial[3 * blockIdx.x] = s1;
    partial[3 * blockIdx.x + 1] = s2;
    partial[3 * blockIdx.x + 2] = 0.0;
  }
}

template <typename T>
__device__ void affine_body(const T* u, const T* w, T* out, i64 n, i64 C, i64 B, const T* p,
                            const T* q, const T* m, const T* r) {
  for (i64 i = grid_start(); i < n; i += grid_stride()) {
    const i64 c = (i / B) % C;
    out[i] = p[c] * u[i] + q[c] * (w[i] - m[c]) + r[c];
  }
}

}  // namespace gpugd

#define GPUGD_BATCHNORM_KERNELS(T, SFX)                                                         \
  extern "C" __global__ void gpugd_batchnorm_stats_partial_##SFX(                               \
      const T* x, i64 A, i64 C, i64 B, i64 rows, i64 tiles, double* partial) {                  \
    gpugd::stats_partial_body<T>(x, A, C, B, rows, tiles, partial);                             \
  }                                                                                             \
  extern "C" __global__ void gpugd_batchnorm_sums_partial_##SFX(                                \
      const T* dy, const T* x, const double* mean, i64 A, i64 C, i64 B, i64 rows, i64 tiles,    \
      double* partial) {                                                                        \
    gpugd::sums_partial_body<T>(dy, x, mean, A, C, B, rows, tiles, partial);                    \
  }                                                                                             \
  extern "C" __global__ void gpugd_batchnorm_affine_##SFX(const T* u, const T* w, T* out,       \
                                                          i64 n, i64 C, i64 B, const T* p,      \
                                                          const T* q, const T* m, const T* r) { \
    gpugd::affine_body<T>(u, w, out, n, C, B, p, q, m, r);                                      \
  }

GPUGD_BATCHNORM_KERNELS(float, f32)
GPUGD_BATCHNORM_KERNELS(double, f64)

// One thread per channel folds its `tiles` partials in order. mode 0: (count, mean, M2)
// by Chan → out0 = mean, out1 = biased variance; mode 1: plain sums → out0, out1.
extern "C" __global__ void gpugd_batchnorm_merge(const double* partial, i64 C, i64 tiles,
                                                 int mode, double* out0, double* out1) {
  for (i64 c = gpugd::grid_start(); c < C; c += gpugd::grid_stride()) {
    double n = 0.0, m = 0.0, s = 0.0;
    for (i64 t = 0; t < tiles; ++t) {
      const double* q = partial + 3 * (c * tiles + t);
      if (mode == 0) {
        gpugd::chan(n, m, s, q[0], q[1], q[2]);
      } else {
        m += q[0];
        s += q[1];
      }
    }
    out0[c] = m;
    out1[c] = mode == 0 ? (n > 0.0 ? s / n : 0.0) : s;
  }
}
