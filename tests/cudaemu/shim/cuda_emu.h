// gpugd CUDA emulator: the CUDA C++ device dialect of kernels/*.cu, compiled by g++ and run
// on the CPU. Each CUDA thread is a user-space fiber (a stack and a hand-written x86-64
// context switch); the threads of a block run one at a time, in a chosen order, switching
// only at __syncthreads() and the warp intrinsics, so barriers, shuffles and shared memory
// behave as the execution model says and a missing barrier shows up as a wrong answer.
// Blocks run one after another. Arithmetic is IEEE single/double with no contraction
// (the build passes -ffp-contract=off; kernels are compiled by NVRTC with --fmad=false), so
// +, -, *, /, sqrt and fma give the bits a GPU gives; transcendentals come from glibc, not
// libdevice, and may differ by a few ulps.
//
// What this cannot show: timing, coalescing, true concurrency between threads and blocks,
// the memory model (all accesses are sequentially consistent here), libdevice's bits.
#pragma once

#include <cmath>
#include <csetjmp>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#ifndef GPUGD_CUDA_EMULATION
#define GPUGD_CUDA_EMULATION 1
#endif

// ------------------------------------------------------------------ the dialect's keywords
#ifndef __global__
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Shared memory: function-local statics in one named section, so the runtime can poison
// the whole of it (NaN bytes) before every block. All fibers of a block share it.
#define __shared__ __attribute__((section("gpugd_emu_shared"))) static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
};

// Math in the global namespace with CUDA's float overloads (sqrt(float) is sqrtf, ...).
using std::abs;
using std::ceil;
using std::copysign;
using std::erf;
using std::erfc;
using std::exp;
using std::exp2;
using std::expm1;
using std::fabs;
using std::floor;
using std::fma;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
using std::log1p;
using std::log2;
using std::pow;
using std::rint;
using std::round;
using std::sqrt;
using std::tanh;
using std::trunc;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }

// ------------------------------------------------------------------ bit casts
#define GPUGD_EMU_BITCAST(NAME, FROM, TO) \
  inline TO NAME(FROM v) {                \
    TO r;                                 \
    std::memcpy(&r, &v, sizeof r);        \
    return r;                             \
  }
GPUGD_EMU_BITCAST(__float_as_uint, float, unsigned)
GPUGD_EMU_BITCAST(__uint_as_float, unsigned, float)
GPUGD_EMU_BITCAST(__float_as_int, float, int)
GPUGD_EMU_BITCAST(__int_as_float, int, float)
GPUGD_EMU_BITCAST(__double_as_longlong, double, long long)
GPUGD_EMU_BITCAST(__longlong_as_double, long long, double)
#undef GPUGD_EMU_BITCAST

// ------------------------------------------------------------------ half-precision conversions
// The software stand-ins for precision.cuh's PTX `cvt` (used under GPUGD_CUDA_EMULATION):
// IEEE binary16 round-to-nearest-even, overflow to ±Inf, subnormals kept; a NaN stays a
// quiet NaN with its sign and top payload bits (what x86's F16C and LLVM's fptrunc do).
namespace gpugd_emu {
inline unsigned short f32_to_f16_rn(float x) {
  unsigned u;
  std::memcpy(&u, &x, 4);
  const unsigned sign = (u >> 16) & 0x8000u;
  const unsigned a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<unsigned short>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
  if (a >= 0x477FF000u) return static_cast<unsigned short>(sign | 0x7C00u);  // rounds to Inf
  if (a >= 0x38800000u) {  // normal half
    const unsigned r = a - 0x38000000u;  // rebias exponent 127 -> 15
    const unsigned lsb = (r >> 13) & 1u;
    return static_cast<unsigned short>(sign | ((r + 0xFFFu + lsb) >> 13));
  }
  if (a < 0x33000000u) return static_cast<unsigned short>(sign);  // below half the least subnormal
  // subnormal half: shift the 24-bit significand, round to nearest even
  const unsigned e = a >> 23;
  const unsigned m = (a & 0x7FFFFFu) | 0x800000u;
  const unsigned shift = 126u - e;  // 14..24
  const unsigned q = m >> shift;
  const unsigned rem = m & ((1u << shift) - 1u);
  const unsigned half = 1u << (shift - 1u);
  const unsigned up = (rem > half || (rem == half && (q & 1u))) ? 1u : 0u;
  return static_cast<unsigned short>(sign | (q + up));
}
inline float f16_to_f32(unsigned short h) {
  const unsigned sign = (static_cast<unsigned>(h) & 0x8000u) << 16;
  const unsigned e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  unsigned u;
  if (e == 0x1Fu) {
    u = sign | 0x7F800000u | (m << 13) | (m ? 0x400000u : 0u);
  } else if (e != 0) {
    u = sign | ((e + 112u) << 23) | (m << 13);
  } else if (m == 0) {
    u = sign;
  } else {  // subnormal: normalise
    unsigned k = 0, mm = m;
    while (!(mm & 0x400u)) {
      mm <<= 1;
      ++k;
    }
    u = sign | ((113u - k) << 23) | ((mm & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ------------------------------------------------------------------ the execution model
enum FiberState : int { READY = 0, AT_BARRIER = 1, AT_WARP = 2, DONE = 3 };

struct Fiber {
  void* sp;
  uint3 tid;
  unsigned linear;
  int state;
  unsigned mask;         // the mask of the warp operation it waits in
  const void* site;      // where it waits (return address of the barrier call)
  unsigned long long v;  // its value in a warp exchange
};

extern "C" void gpugd_emu_switch(void** save_sp, void* new_sp);

struct Runtime {
  Fiber* fibers = nullptr;  // one per thread of the current block
  unsigned nthreads = 0;
  Fiber* cur = nullptr;
  void* sched_sp = nullptr;
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
  void (*thunk)(void**) = nullptr;
  void** args = nullptr;
  // error reporting: a fault or a misuse ends the launch through `escape`
  sigjmp_buf escape;
  char message[1024];
};
inline Runtime rt;

[[noreturn]] void fail(const char* fmt, ...);

// Block until the scheduler resumes this fiber.
inline void yield_to_scheduler() {
  Fiber* f = rt.cur;
  gpugd_emu_switch(&f->sp, rt.sched_sp);
}

__attribute__((noinline)) inline void block_barrier(const void* site) {
  Fiber* f = rt.cur;
  f->state = AT_BARRIER;
  f->site = site;
  yield_to_scheduler();
}

__attribute__((noinline)) inline void warp_barrier(unsigned mask, const void* site) {
  Fiber* f = rt.cur;
  const unsigned lane = f->linear & 31u;
  if (!((mask >> lane) & 1u))
    fail("warp operation: lane %u calls it with mask 0x%08x that does not name it", lane, mask);
  f->state = AT_WARP;
  f->mask = mask;
  f->site = site;
  yield_to_scheduler();
}

template <typename T>
inline unsigned long long to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp exchange of more than 8 bytes");
  unsigned long long b = 0;
  std::memcpy(&b, &v, sizeof v);
  return b;
}
template <typename T>
inline T from_bits(unsigned long long b) {
  T v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// Every lane of `mask` publishes v, then each reads lane src_of(lane) (itself when out of
// its segment), then all wait again so no lane overwrites a value another has not read.
template <typename T, typename Src>
inline T exchange(unsigned mask, T v, Src src_of, const void* site) {
  Fiber* f = rt.cur;
  f->v = to_bits(v);
  warp_barrier(mask, site);
  const unsigned lane = f->linear & 31u;
  const int src = src_of(static_cast<int>(lane));
  T r = v;
  if (src >= 0 && src != static_cast<int>(lane)) {
    if (!((mask >> src) & 1u))
      fail("warp shuffle: lane %u reads lane %d, which mask 0x%08x does not name", lane, src,
           mask);
    r = from_bits<T>(rt.fibers[(f->linear & ~31u) + src].v);
  }
  warp_barrier(mask, site);
  return r;
}
}  // namespace gpugd_emu

#define threadIdx (::gpugd_emu::rt.cur->tid)
#define blockIdx (::gpugd_emu::rt.block_idx)
#define blockDim (::gpugd_emu::rt.block_dim)
#define gridDim (::gpugd_emu::rt.grid_dim)
#define warpSize 32

#define GPUGD_EMU_SITE __builtin_return_address(0)

// A barrier's identity is its source line (the compiler may duplicate one call site into
// several addresses, e.g. when it peels a loop, so a return address would not do).
inline void gpugd_emu_syncthreads(long line) {
  ::gpugd_emu::block_barrier(reinterpret_cast<const void*>(line));
}
#define __syncthreads() gpugd_emu_syncthreads(__LINE__)
__attribute__((noinline)) inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::gpugd_emu::warp_barrier(mask, GPUGD_EMU_SITE);
}
template <typename T>
__attribute__((noinline)) T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return ::gpugd_emu::exchange(
      mask, v, [=](int lane) { return (lane / width) * width + (src % width); }, GPUGD_EMU_SITE);
}
template <typename T>
__attribute__((noinline)) T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
  return ::gpugd_emu::exchange(
      mask, v,
      [=](int lane) {
        const int s = lane + static_cast<int>(d);
        return (s / width == lane / width) ? s : lane;
      },
      GPUGD_EMU_SITE);
}
template <typename T>
__attribute__((noinline)) T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
  return ::gpugd_emu::exchange(
      mask, v,
      [=](int lane) {
        const int s = lane - static_cast<int>(d);
        return (s >= 0 && s / width == lane / width) ? s : lane;
      },
      GPUGD_EMU_SITE);
}
template <typename T>
__attribute__((noinline)) T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) {
  return ::gpugd_emu::exchange(
      mask, v,
      [=](int lane) {
        const int s = lane ^ m;
        return (s / width == lane / width) ? s : lane;
      },
      GPUGD_EMU_SITE);
}
__attribute__((noinline)) inline unsigned __ballot_sync(unsigned mask, int pred) {
  using namespace ::gpugd_emu;
  Fiber* f = rt.cur;
  f->v = pred ? 1u : 0u;
  warp_barrier(mask, GPUGD_EMU_SITE);
  unsigned r = 0;
  const unsigned base = f->linear & ~31u;
  for (unsigned l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && rt.fibers[base + l].v) r |= 1u << l;
  warp_barrier(mask, GPUGD_EMU_SITE);
  return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
