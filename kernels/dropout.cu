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

// The keep test of the element whose counter gives z = key + counter·φ (mod 2^64).
__device__ __forceinline__ bool keep_z(u64 z, u64 threshold) {
  return (mix64(z) >> 32) < threshold;
}

constexpr u64 kPhi = 0x9E3779B97F4A7C15ull;

__device__ __forceinline__ bool keep(u64 key, u64 counter, u64 threshold) {
  return keep_z(key + counter * kPhi, threshold);
}

// 16-byte packs of x each thread loads before it computes and stores, per iteration of the
// main loop (common.cuh's stream_items), from ptxas sm_90: f32 3 packs (32 registers, 8
// blocks of 256 per SM, 48 B per thread in flight: 96 KB per SM; 4 packs take 40 registers),
// f64 2 packs (32 registers, 8 blocks, 32 B: 64 KB; 3 packs take 36 registers, 6 blocks).
// The scalar paths (misaligned pointers) take kScalarUnroll elements.
template <typename T>
struct DropoutUnroll {
  static constexpr int packs = sizeof(T) == 4 ? 3 : 2;
};
constexpr int kScalarUnroll = 4;

// Items j < m of pack type P (a 16-byte pack, or Single) whose element 0 has counter
// `first`: the counters of a pack are consecutive, so z steps by φ from one element to the
// next (key + (c + 1)·φ = key + c·φ + φ mod 2^64: the same bits as keep(key, c + 1, ·)).
// y may be x (in place): each item is loaded before it is stored, by one thread.
template <typename P, int U, typename T>
__device__ __forceinline__ void dropout_loop(const P* x, P* y, i64 m, u64 key, u64 first,
                                             u64 threshold, T scale) {
  stream_items<U>(
      grid_start(), grid_stride(), m, [&](i64 j) { return x[j]; },
      [&](i64 j, P v) {
        u64 z = key + (first + static_cast<u64>(j) * P::width) * kPhi;
#pragma unroll
        for (int k = 0; k < P::width; ++k, z += kPhi)
          v.v[k] = keep_z(z, threshold) ? v.v[k] * scale : T(0);
        y[j] = v;
      });
}

template <typename T>
__device__ __forceinline__ void dropout_body(const T* x, T* y, i64 n, u64 key, u64 offset,
                                             u64 threshold, T scale) {
  constexpr int W = Pack<T>::width;
  i64 done = 0;
  if (aligned16(x) && aligned16(y)) {
    typedef AlignedPack<T> P;
    dropout_loop<P, DropoutUnroll<T>::packs>(reinterpret_cast<const P*>(x),
                                             reinterpret_cast<P*>(y), n / W, key, offset,
                                             threshold, scale);
    done = n / W * W;
  }
  typedef Single<T> S;
  dropout_loop<S, kScalarUnroll>(reinterpret_cast<const S*>(x + done),
                                 reinterpret_cast<S*>(y + done), n - done, key,
                                 offset + static_cast<u64>(done), threshold, scale);
}

// m[j] for items j < mi of P (16 mask bytes, or Single), element 0's counter `first`.
template <typename P>
__device__ __forceinline__ void mask_loop(P* m, i64 mi, u64 key, u64 first, u64 threshold) {
  const i64 start = grid_start(), stride = grid_stride();
  for (i64 j = start; j < mi; j += stride) {
    P b;
    u64 z = key + (first + static_cast<u64>(j) * P::width) * kPhi;
#pragma unroll
    for (int k = 0; k < P::width; ++k, z += kPhi) b.v[k] = keep_z(z, threshold) ? 1 : 0;
    m[j] = b;
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

// The mask itself (1 kept, 0 dropped), for inspection and tests: 16 bytes per store where m
// is 16-byte aligned, byte by byte otherwise and for the last n mod 16.
extern "C" __global__ void gpugd_dropout_mask(unsigned char* m, i64 n, u64 key, u64 offset,
                                              u64 threshold) {
  i64 done = 0;
  if (gpugd::aligned16(m)) {
    typedef gpugd::AlignedPack<unsigned char> P;
    gpugd::mask_loop<P>(reinterpret_cast<P*>(m), n / 16, key, offset, threshold);
    done = n / 16 * 16;
  }
  typedef gpugd::Single<unsigned char> S;
  gpugd::mask_loop<S>(reinterpret_cast<S*>(m + done), n - done, key,
                      offset + static_cast<u64>(done), threshold);
}
