// gpugd optim8 family: fused optimizer updates with blockwise 8-bit states (Dettmers et al.,
// arXiv 2110.02861). Each state is uint8 codes plus one float32 absmax per block of B
// elements; element i of block b is qmap[code_i] · absmax_b (gpugd/quant8.py).
// One thread block (256 threads) per quantization block at a time, B / 256 elements per
// thread in registers: dequantize, the rule in float32, the block's new absmax by a
// reduction (max: exact, any order), requantize to the nearest map entry (a binary search in
// shared memory), write the codes and the absmax: one read and one write of every state.
// The arithmetic is gpugd/reference8.py's, operation by operation (no fma in these rules;
// NVRTC compiles with --fmad=false), so codes, scales and p match it and the Numba mirror
// (gpugd/_cpu/optim8.py) bit for bit.
// Parameters P: float32, or float16/bfloat16 (loaded as float, the rule in float32, the new
// value stored rounded: precision.cuh); with MASTER the rule updates fp32 master weights and
// `out` (the half-precision parameters) receives their rounding in the same pass.
#include "common.cuh"
#include "precision.cuh"

typedef unsigned char u8;

namespace gpugd {
namespace q8 {

constexpr int THREADS = 256;

// The gradient the rules see: g·s clamped to [−clip, clip] (NaN passes through).
__device__ __forceinline__ float grad_in(float g, float s, float clip) {
  float d = g * s;
  d = d > clip ? clip : d;
  return d < -clip ? -clip : d;
}

// Index of the map entry nearest to r: the largest i with q[i] <= r (0 if none, or NaN),
// then i + 1 when q[i+1] − r < r − q[i].
__device__ __forceinline__ int nearest(const float* q, float r) {
  int i = 0;
#pragma unroll
  for (int s = 128; s > 0; s >>= 1) i = q[i + s] <= r ? i + s : i;
  return (i < 255 && (q[i + 1] - r) < (r - q[i])) ? i + 1 : i;
}

// Maximum over the block (valid in every thread). scratch: 8 floats of shared memory.
__device__ __forceinline__ float block_max(float v, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_down_sync(0xffffffffu, v, off);
    v = o > v ? o : v;
  }
  if ((threadIdx.x & 31u) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  float m = scratch[0];
#pragma unroll
  for (int w = 1; w < THREADS / 32; ++w) m = scratch[w] > m ? scratch[w] : m;
  return m;
}

struct AdamRule8 {  // the float32 rule of reference8.adam_rule, in its order
  float b1, omb1, b2, omb2, eps, wd_c, decay_mul, step_size, inv_bc2_sqrt;
  static constexpr int nstates = 2;
  static constexpr bool signed0 = true, signed1 = false;
  __device__ __forceinline__ void operator()(float& p, float d, float& m, float& v) const {
    p = p * decay_mul;
    d = d + wd_c * p;
    m = b1 * m + omb1 * d;
    v = b2 * v + omb2 * (d * d);
    const float den = sqrtf(v) * inv_bc2_sqrt + eps;
    p = p - step_size * m / den;
  }
};

struct MomentumRule8 {  // reference8.momentum_rule
  float lr, wd, mom, omd;
  int nesterov, first;
  static constexpr int nstates = 1;
  static constexpr bool signed0 = true, signed1 = true;
  __device__ __forceinline__ void operator()(float& p, float d, float& buf, float&) const {
    d = d + wd * p;
    buf = first ? d : mom * buf + omd * d;
    d = nesterov ? d + mom * buf : buf;
    p = p - lr * d;
  }
};

struct LionRule8 {  // reference8.lion_rule (sign: ±1, or c itself for ±0 and NaN)
  float lr, b1, omb1, b2, omb2, decay_mul;
  static constexpr int nstates = 1;
  static constexpr bool signed0 = true, signed1 = true;
  __device__ __forceinline__ void operator()(float& p, float d, float& m, float&) const {
    p = p * decay_mul;
    const float c = b1 * m + omb1 * d;
    p = p - lr * (c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : c));
    m = b2 * m + omb2 * d;
  }
};

struct RmspropRule8 {  // reference8.rmsprop_rule
  float lr, wd, alpha, oma, eps;
  static constexpr int nstates = 1;
  static constexpr bool signed0 = false, signed1 = false;
  __device__ __forceinline__ void operator()(float& p, float d, float& v, float&) const {
    d = d + wd * p;
    v = alpha * v + oma * (d * d);
    p = p - lr * d / (sqrtf(v) + eps);
  }
};

struct AdagradRule8 {  // reference8.adagrad_rule
  float clr, wd, eps;
  static constexpr int nstates = 1;
  static constexpr bool signed0 = false, signed1 = false;
  __device__ __forceinline__ void operator()(float& p, float d, float& acc, float&) const {
    d = d + wd * p;
    acc = acc + d * d;
    p = p - clr * d / (sqrtf(acc) + eps);
  }
};

// The update of n elements of p with g and the rule's 8-bit states (q1/a1 unused when the
// rule has one state), ITEMS = B / 256 elements per thread. W: what the rule updates (P, or
// float masters with `out` the P parameters); rnd: the rounding of the parameters (key
// already mixed with the tensor's stream on the host). qmaps: the signed map then the
// unsigned one (512 float32). A non-zero *skip returns before any access.
template <int ITEMS, typename W, typename P, bool MASTER, typename Rule>
__device__ __forceinline__ void update8(W* __restrict__ p, const P* __restrict__ g,
                                        P* __restrict__ out, u8* __restrict__ q0,
                                        float* __restrict__ a0, u8* __restrict__ q1,
                                        float* __restrict__ a1, const float* __restrict__ qmaps,
                                        i64 n, float grad_scale, float clip, const Rule& rule,
                                        const Rounding& rnd) {
  constexpr i64 B = static_cast<i64>(ITEMS) * THREADS;
  __shared__ float smap[512];
  __shared__ float scratch[2][THREADS / 32];
  for (int i = threadIdx.x; i < 512; i += THREADS) smap[i] = qmaps[i];
  __syncthreads();
  const float* m0 = smap + (Rule::signed0 ? 0 : 256);
  const float* m1 = smap + (Rule::signed1 ? 0 : 256);
  const i64 nblocks = (n + B - 1) / B;
  for (i64 b = blockIdx.x; b < nblocks; b += gridDim.x) {
    const i64 base = b * B;
    const float s0 = a0[b], s1 = Rule::nstates > 1 ? a1[b] : 0.0f;
    // every load of the block first (p, g and the codes of all ITEMS elements: 80 B per
    // thread in flight for Adam), then the rule: loads interleaved with the stores of p
    // kept one element's loads in flight (13-18 B per thread)
    float pv[ITEMS], gv[ITEMS], x[ITEMS], y[ITEMS];
    unsigned c0[ITEMS], c1[ITEMS];
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const i64 i = base + k * THREADS + threadIdx.x;
      if (i < n) {
        pv[k] = to_float(p[i]);
        gv[k] = to_float(g[i]);
        c0[k] = q0[i];
        c1[k] = Rule::nstates > 1 ? q1[i] : 0u;
      }
    }
    float mx0 = 0.0f, mx1 = 0.0f;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const i64 i = base + k * THREADS + threadIdx.x;
      x[k] = 0.0f;
      y[k] = 0.0f;
      if (i < n) {
        x[k] = m0[c0[k]] * s0;
        if (Rule::nstates > 1) y[k] = m1[c1[k]] * s1;
        rule(pv[k], grad_in(gv[k], grad_scale, clip), x[k], y[k]);
        store(p[i], pv[k], rnd, i);
        if (MASTER) store(out[i], pv[k], rnd, i);
        const float ax = fabsf(x[k]), ay = fabsf(y[k]);
        mx0 = ax > mx0 ? ax : mx0;
        mx1 = ay > mx1 ? ay : mx1;
      }
    }
    const float new0 = block_max(mx0, scratch[0]);
    const float new1 = Rule::nstates > 1 ? block_max(mx1, scratch[1]) : 0.0f;
    // r = s · (1/absmax): one division per block, not per element (absmax 0: r = 0)
    const float r0 = 1.0f / (new0 > 0.0f ? new0 : 1.0f), r1 = 1.0f / (new1 > 0.0f ? new1 : 1.0f);
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const i64 i = base + k * THREADS + threadIdx.x;
      if (i < n) {
        q0[i] = static_cast<u8>(nearest(m0, x[k] * r0));
        if (Rule::nstates > 1) q1[i] = static_cast<u8>(nearest(m1, y[k] * r1));
      }
    }
    if (threadIdx.x == 0) {
      a0[b] = new0;
      if (Rule::nstates > 1) a1[b] = new1;
    }
    __syncthreads();  // scratch and the scales are reused by the next block
  }
}

}  // namespace q8
}  // namespace gpugd

// Kernel suffixes: W (what the rule updates), P (parameters and gradients), MASTER.
#define GPUGD_OPTIM8_F32 f32, float, float, false
#define GPUGD_OPTIM8_F16P f16p, gpugd::f16_t, gpugd::f16_t, false
#define GPUGD_OPTIM8_F16P_MASTER f16p_master, float, gpugd::f16_t, true
#define GPUGD_OPTIM8_BF16P bf16p, gpugd::bf16_t, gpugd::bf16_t, false
#define GPUGD_OPTIM8_BF16P_MASTER bf16p_master, float, gpugd::bf16_t, true

// Adam: at least 3 resident blocks (bf16 masters took 87 registers, 2 blocks; bounded to 80,
// no spills)
#define GPUGD_OPTIM8_ADAM_(BS, ITEMS, SFX, W, P, M)                                           \
  extern "C" __global__ void __launch_bounds__(256, 3) gpugd_optim8_adam_b##BS##_##SFX(        \
      W* p, const P* g, P* out, u8* mq, float* ma, u8* vq, float* va, const float* qmaps,     \
      i64 n, float b1, float omb1, float b2, float omb2, float eps, float wd_c,               \
      float decay_mul, float step_size, float inv_bc2_sqrt, float grad_scale, float clip,     \
      unsigned key, int stochastic, const int* skip) {                                         \
    if (skip != nullptr && *skip != 0) return;                                                 \
    const gpugd::q8::AdamRule8 rule{b1,        omb1,      b2, omb2, eps, wd_c, decay_mul,       \
                                    step_size, inv_bc2_sqrt};                                  \
    gpugd::q8::update8<ITEMS, W, P, M>(p, g, out, mq, ma, vq, va, qmaps, n, grad_scale, clip,  \
                                       rule, gpugd::Rounding{key, stochastic});                \
  }

// A one-state rule: NAME, the rule's initializer, block size, items per thread, the policy
// (SFX, W, P, MASTER), the rule's scalars. At least 4 resident blocks (bf16 masters took 66
// registers, 3 blocks; bounded to 64, no spills).
#define GPUGD_OPTIM8_ONE_(NAME, RULE, BS, ITEMS, SFX, W, P, M, ...)                           \
  extern "C" __global__ void __launch_bounds__(256, 4) gpugd_optim8_##NAME##_b##BS##_##SFX(    \
      W* p, const P* g, P* out, u8* sq, float* sa, const float* qmaps, i64 n, __VA_ARGS__,     \
      float grad_scale, float clip, unsigned key, int stochastic, const int* skip) {           \
    if (skip != nullptr && *skip != 0) return;                                                 \
    const auto rule = RULE;                                                                    \
    gpugd::q8::update8<ITEMS, W, P, M>(p, g, out, sq, sa, static_cast<u8*>(nullptr),           \
                                       static_cast<float*>(nullptr), qmaps, n, grad_scale,     \
                                       clip, rule, gpugd::Rounding{key, stochastic});          \
  }

// Every rule for one block size and one policy (the last arguments: SFX, W, P, MASTER).
#define GPUGD_OPTIM8_RULES(BS, ITEMS, ...)                                                     \
  GPUGD_OPTIM8_ADAM_(BS, ITEMS, __VA_ARGS__)                                                   \
  GPUGD_OPTIM8_ONE_(momentum, (gpugd::q8::MomentumRule8{lr, wd, mom, omd, nesterov, first}),   \
                    BS, ITEMS, __VA_ARGS__, float lr, float wd, float mom, float omd,          \
                    int nesterov, int first)                                                   \
  GPUGD_OPTIM8_ONE_(lion, (gpugd::q8::LionRule8{lr, b1, omb1, b2, omb2, decay_mul}), BS,      \
                    ITEMS, __VA_ARGS__, float lr, float b1, float omb1, float b2, float omb2,  \
                    float decay_mul)                                                           \
  GPUGD_OPTIM8_ONE_(rmsprop, (gpugd::q8::RmspropRule8{lr, wd, alpha, oma, eps}), BS, ITEMS,   \
                    __VA_ARGS__, float lr, float wd, float alpha, float oma, float eps)        \
  GPUGD_OPTIM8_ONE_(adagrad, (gpugd::q8::AdagradRule8{clr, wd, eps}), BS, ITEMS, __VA_ARGS__, \
                    float clr, float wd, float eps)

#define GPUGD_OPTIM8_POLICIES(BS, ITEMS)              \
  GPUGD_OPTIM8_RULES(BS, ITEMS, GPUGD_OPTIM8_F32)      \
  GPUGD_OPTIM8_RULES(BS, ITEMS, GPUGD_OPTIM8_F16P)     \
  GPUGD_OPTIM8_RULES(BS, ITEMS, GPUGD_OPTIM8_F16P_MASTER) \
  GPUGD_OPTIM8_RULES(BS, ITEMS, GPUGD_OPTIM8_BF16P)    \
  GPUGD_OPTIM8_RULES(BS, ITEMS, GPUGD_OPTIM8_BF16P_MASTER)

GPUGD_OPTIM8_POLICIES(2048, 8)
GPUGD_OPTIM8_POLICIES(256, 1)
