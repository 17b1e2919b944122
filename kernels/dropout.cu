// gpugd dropout family: inverted dropout with a counter-based generator, so a step's mask
// is a pure function of (seed, offset, element index): the backward regenerates it and
// nothing is stored. Bits for element i: the SplitMix64 finalizer of
// key + (offset + i)·φ, key = finalizer(seed), φ = 0x9E3779B97F4A7C15; the element is kept
// when the high 32 bits are below `threshold` = ⌊(1 − p)·2^32⌋, an integer test, so fp32
// and fp64 arrays get the same mask, and the CPU (gpugd/_cpu/dropout.py) the same too.
// y = x·keep·scale (scale = 1/(1 − p)); dx = dy·keep·scale.
#include "common.cuh"

namespace gpugd {

__device__ __forceinline__ u64 mix64(u64 z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ bool keep(u64 key, u64 counter, u64 threshold) {
  return (mix64(key + counter * 0x9E3779B97F4A7C15ull) >> 32) < threshold;
}

template <typename T>
__device__ __forceinline__ void dropout_body(const T* x, T* y, i64 n, u64 key, u64 offset,
                                             u64 threshold, T scale) {
  const i64 start = grid_start(), stride = grid_stride();
  for (i64 i = start; i < n; i += stride) {
    y[i] = keep(key, offset + static_cast<u64>(i), threshold) ? x[i] * scale : T(0);
  }
}

}  // namespace gpugd

#define GPUGD_DROPOUT_KERNELS(T, SFX)                                                           \
  extern "C" __global__ void gpugd_dropout_apply_##SFX(const T* x, T* y, i64 n, u64 key,        \
                                                       u64 offset, u64 threshold, T scale) {    \
    gpugd::dropout_body<T>(x, y, n, key, offset, threshold, scale);                             \
  }

GPUGD_DROPOUT_KERNELS(float, f32)
GPUGD_DROPOUT_KERNELS(double, f64)

// The mask itself (1 kept, 0 dropped), for inspection and tests.
extern "C" __global__ void gpugd_dropout_mask(unsigned char* m, i64 n, u64 key, u64 offset,
                                              u64 threshold) {
  const i64 start = gpugd::grid_start(), stride = gpugd::grid_stride();
  for (i64 i = start; i < n; i += stride)
    m[i] = gpugd::keep(key, offset + static_cast<u64>(i), threshold) ? 1 : 0;
}
