// gpugd common device helpers: 16-byte packs, alignment tests, grid-stride indices,
// and a deterministic block reduction. Included by every kernels/*.cu family.
// NVRTC-compatible: no host headers, fixed-width types from the builtins only.
#pragma once

typedef long long i64;
typedef unsigned long long u64;

namespace gpugd {

// Elements of T that fit one 16-byte vector load/store (float: 4, double: 2).
template <typename T>
struct Pack {
  static constexpr int width = 16 / sizeof(T);
  T v[16 / sizeof(T)];
};

// Pack is loaded and stored as one 16-byte transaction when the address allows it.
template <typename T>
struct __align__(16) AlignedPack : Pack<T> {};

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<u64>(p) & 15ull) == 0ull;
}

// Select<B, A, C>::type is A when B, else C (NVRTC has no <type_traits>).
template <bool B, typename A, typename C>
struct Select {
  typedef A type;
};
template <typename A, typename C>
struct Select<false, A, C> {
  typedef C type;
};

// First index and stride of a 1-D grid-stride loop, in 64-bit arithmetic.
__device__ __forceinline__ i64 grid_start() {
  return static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ i64 grid_stride() {
  return static_cast<i64>(gridDim.x) * blockDim.x;
}

// Sum of `v` over the block, valid in thread 0. Fixed tree order: the result is bitwise
// the same on every run for the same launch shape. blockDim.x must be a multiple of 32,
// at most 1024; `scratch` holds at least 32 doubles of shared memory.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  const unsigned lane = threadIdx.x & 31u;
  const unsigned warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const unsigned nwarps = blockDim.x >> 5;
  v = (threadIdx.x < nwarps) ? scratch[threadIdx.x] : 0.0;
  if (warp == 0) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  return v;
}

}  // namespace gpugd
