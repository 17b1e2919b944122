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

// Tells the compiler that p (an address read from memory, e.g. a tensor table) points to
// global memory, so its loads are LDG rather than generic LD. Only an assumption: no code.
__device__ __forceinline__ void assume_global(const void* p) {
#ifdef GPUGD_CUDA_EMULATION  // the CPU emulator (tests/cudaemu): all device memory is global
  (void)p;
#else
  __builtin_assume(__isGlobal(p));
#endif
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

// One element seen as a pack of width 1: the scalar paths (misaligned pointers, tails) run
// the same loops as the 16-byte packs.
template <typename T>
struct Single {
  static constexpr int width = 1;
  T v[1];
};

// A grid-stride loop over items [0, m) (packs or elements) that keeps U loads in flight per
// thread: each iteration takes items i, i + stride, …, i + (U − 1)·stride, issues load(j)
// for all U of them first, then apply(j, loaded) for each in turn (where the stores are).
// The items left (fewer than U for this thread) follow one at a time. A thread sees its
// items in increasing order, as in the plain loop, so a per-thread sum keeps its order.
// load must not write memory; apply may store to the item it is given (in-place
// kernels stay correct: an item is loaded before anything of its group is stored).
template <int U, typename Load, typename Apply>
__device__ __forceinline__ void stream_items(i64 start, i64 stride, i64 m, Load load,
                                             Apply apply) {
  i64 i = start;
  for (; i + (U - 1) * stride < m; i += U * stride) {
    decltype(load(i)) v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = load(i + u * stride);
#pragma unroll
    for (int u = 0; u < U; ++u) apply(i + u * stride, v[u]);
  }
  for (; i < m; i += stride) apply(i, load(i));
}

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
