// gpugd half-precision storage: float16 and bfloat16 elements loaded as float, stored with
// round-to-nearest-even or (bfloat16) stochastic rounding. The mirror of
// gpugd/_cpu/precision.py, bit for bit: the same rounding, the same NaN handling, the same
// counter-based hash for the random bits. NVRTC-compatible: no cuda_fp16.h; float16
// conversions are the PTX cvt instructions (under GPUGD_CUDA_EMULATION, the CPU emulator's
// software conversions), bfloat16 is integer arithmetic on the bits.
#pragma once

#include "common.cuh"

namespace gpugd {

struct f16_t {  // IEEE binary16, as stored
  unsigned short bits;
};
struct bf16_t {  // bfloat16: the upper half of a float32, as stored
  unsigned short bits;
};

// 32 mixed bits of (key, integer index): lowbias32 of the index's halves folded into key.
__device__ __forceinline__ unsigned mix32(unsigned key, i64 index) {
  const unsigned lo = static_cast<unsigned>(static_cast<u64>(index) & 0xFFFFFFFFull);
  const unsigned hi = static_cast<unsigned>(static_cast<u64>(index) >> 32);
  unsigned z = (lo * 0x9E3779B9u) ^ key ^ (hi * 0x85EBCA6Bu);
  z ^= z >> 16;
  z *= 0x7FEB352Du;
  z ^= z >> 15;
  z *= 0x846CA68Bu;
  return z ^ (z >> 16);
}

// How parameters are rounded: to nearest even, or stochastically with 16 random bits of
// mix32(key, element index) (key already mixed with the tensor's index).
struct Rounding {
  unsigned key;
  int stochastic;
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ double to_float(double x) { return x; }
__device__ __forceinline__ float to_float(f16_t h) {
#ifdef GPUGD_CUDA_EMULATION  // the CPU emulator (tests/cudaemu): the same conversion in C++
  return gpugd_emu::f16_to_f32(h.bits);
#else
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
  return f;
#endif
}
__device__ __forceinline__ float to_float(bf16_t b) {
  return __uint_as_float(static_cast<unsigned>(b.bits) << 16);
}

__device__ __forceinline__ unsigned short bf16_nan_or(float x, unsigned b, unsigned r) {
  return static_cast<unsigned short>(x != x ? ((b >> 16) | 0x0040u) : r);
}

// Store x into a (index i: the element's index within its tensor, for stochastic rounding).
__device__ __forceinline__ void store(float& a, float x, const Rounding&, i64) { a = x; }
__device__ __forceinline__ void store(double& a, double x, const Rounding&, i64) { a = x; }
__device__ __forceinline__ void store(f16_t& a, float x, const Rounding&, i64) {
#ifdef GPUGD_CUDA_EMULATION
  a.bits = gpugd_emu::f32_to_f16_rn(x);
#else
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(a.bits) : "f"(x));
#endif
}
__device__ __forceinline__ void store(bf16_t& a, float x, const Rounding& r, i64 i) {
  const unsigned b = __float_as_uint(x);
  const unsigned add = r.stochastic ? (mix32(r.key, i) & 0xFFFFu) : 0x7FFFu + ((b >> 16) & 1u);
  a.bits = bf16_nan_or(x, b, (b + add) >> 16);
}

}  // namespace gpugd
