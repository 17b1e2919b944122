// gpugd activations family: forward y = f(x) and fused backward dx = dy·f'(·), one pass.
// Kinds (the same ids as gpugd/_cpu/activations.py): 0 sigmoid, 1 tanh, 2 relu,
// 3 leaky_relu (a = slope), 4 elu (a = α, b = scale: 1 for elu, selu's constants for
// selu), 5 gelu (erf), 6 gelu_tanh, 7 softplus (a = β, b = threshold), 8 silu.
// Backward takes v = the output y for sigmoid and tanh, the input x for the others.
// Stable forms: exponentials only of non-positive arguments, expm1 where 1 − e^x would
// cancel, Φ(x) = ½·erfc(−x/√2) rather than ½(1 + erf(x/√2)), which cancels for x ≪ 0.
// Grid-stride, 16-byte packs when both pointers allow; math in T.
#include "common.cuh"

namespace gpugd {

template <typename T>
__device__ __forceinline__ T sig(T x) {
  const T e = exp(-fabs(x));
  return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <typename T>
__device__ __forceinline__ T stable_tanh(T x) {
  const T m = expm1(T(-2) * fabs(x));  // tanh|x| = −m/(2 + m)
  const T t = -m / (T(2) + m);
  return x >= T(0) ? t : -t;
}

template <typename T>
struct Act {
  int kind;
  T a, b;

  __device__ __forceinline__ T fwd(T x) const {
    const T K = T(0.7978845608028654), C = T(0.044715);
    switch (kind) {
      case 0: return sig(x);
      case 1: return stable_tanh(x);
      case 2: return x > T(0) ? x : x * T(0);
      case 3: return x > T(0) ? x : a * x;
      case 4: return x > T(0) ? b * x : b * a * expm1(x);
      case 5: return x * T(0.5) * erfc(-x * T(0.7071067811865476));  // x·Φ(x), both tails
      case 6: return T(0.5) * x * (T(1) + stable_tanh(K * (x + C * x * x * x)));
      case 7: {
        const T bx = a * x;
        return bx > b ? x : ((bx > T(0) ? bx : bx * T(0)) + log1p(exp(-fabs(bx)))) / a;
      }
      default: return x * sig(x);
    }
  }

  __device__ __forceinline__ T bwd(T dy, T v) const {
    const T K = T(0.7978845608028654), C = T(0.044715);
    switch (kind) {
      case 0: return dy * v * (T(1) - v);
      case 1: return dy * fma(-v, v, T(1));  // 1 − y², one rounding, as the Numba mirror
      case 2: return v > T(0) ? dy : dy * T(0);
      case 3: return v > T(0) ? dy : a * dy;
      case 4: return v > T(0) ? b * dy : b * a * dy * exp(v);
      case 5: {
        const T cdf = T(0.5) * erfc(-v * T(0.7071067811865476));  // Φ(v), no cancellation
        return dy * (cdf + v * T(0.3989422804014327) * exp(T(-0.5) * v * v));
      }
      case 6: {
        const T t = stable_tanh(K * (v + C * v * v * v));
        const T dt = (T(1) - t * t) * K * (T(1) + T(3) * C * v * v);
        return dy * (T(0.5) * (T(1) + t) + T(0.5) * v * dt);
      }
      case 7: {
        const T bx = a * v;
        return bx > b ? dy : dy * sig(bx);
      }
      default: {
        const T s = sig(v);
        return dy * s * (T(1) + v * (T(1) - s));
      }
    }
  }
};

// 16-byte packs each thread loads before it computes and stores, per iteration of the main
// loops (common.cuh's stream_items), from ptxas sm_90 at 256 threads per block (registers
// → blocks/SM → bytes in flight per SM = blocks × 256 × bytes per thread):
//   forward  f32: 2 packs, 32 registers, 8 blocks, 64 KB (4 packs: 40, 6, 96 KB)
//   forward  f64: 3 packs, 46 registers, 5 blocks, 60 KB (2 packs: 46, 5, 40 KB; 4: 54, 4, 64 KB)
//   backward f32: 2 packs of each input, 40 registers, 6 blocks, 96 KB (1 pack: 40, 6, 48 KB)
//   backward f64: 2 packs of each input, 54 registers, 4 blocks, 64 KB (1 pack: 48, 5, 40 KB)
// The scalar paths (misaligned pointers) take kActScalarUnroll elements.
template <typename T>
struct ActUnroll {
  static constexpr int forward = sizeof(T) == 4 ? 2 : 3;
  static constexpr int backward = 2;
};
constexpr int kActScalarUnroll = 4;

// The kind is uniform over the launch, so the switch costs a predictable branch per
// element; the loops are bandwidth-bound. P: a 16-byte pack, or Single on the scalar path.
template <typename P, int U, typename T>
__device__ __forceinline__ void forward_loop(const P* x, P* y, i64 m, const Act<T>& f) {
  stream_items<U>(
      grid_start(), grid_stride(), m, [&](i64 j) { return x[j]; },
      [&](i64 j, P v) {
#pragma unroll
        for (int k = 0; k < P::width; ++k) v.v[k] = f.fwd(v.v[k]);
        y[j] = v;
      });
}

template <typename T>
__device__ __forceinline__ void forward_body(const T* x, T* y, i64 n, const Act<T>& f) {
  constexpr int W = Pack<T>::width;
  i64 done = 0;
  if (aligned16(x) && aligned16(y)) {
    typedef AlignedPack<T> P;
    forward_loop<P, ActUnroll<T>::forward>(reinterpret_cast<const P*>(x), reinterpret_cast<P*>(y),
                                           n / W, f);
    done = n / W * W;
  }
  typedef Single<T> S;
  forward_loop<S, kActScalarUnroll>(reinterpret_cast<const S*>(x + done),
                                    reinterpret_cast<S*>(y + done), n - done, f);
}

template <typename P, int U, typename T>
__device__ __forceinline__ void backward_loop(const P* dy, const P* v, P* dx, i64 m,
                                              const Act<T>& f) {
  struct GV {
    P g, v;
  };
  stream_items<U>(
      grid_start(), grid_stride(), m, [&](i64 j) { return GV{dy[j], v[j]}; },
      [&](i64 j, GV u) {
        P o;
#pragma unroll
        for (int k = 0; k < P::width; ++k) o.v[k] = f.bwd(u.g.v[k], u.v.v[k]);
        dx[j] = o;
      });
}

template <typename T>
__device__ __forceinline__ void backward_body(const T* dy, const T* v, T* dx, i64 n,
                                              const Act<T>& f) {
  constexpr int W = Pack<T>::width;
  i64 done = 0;
  if (aligned16(dy) && aligned16(v) && aligned16(dx)) {
    typedef AlignedPack<T> P;
    backward_loop<P, ActUnroll<T>::backward>(reinterpret_cast<const P*>(dy),
                                             reinterpret_cast<const P*>(v),
                                             reinterpret_cast<P*>(dx), n / W, f);
    done = n / W * W;
  }
  typedef Single<T> S;
  backward_loop<S, kActScalarUnroll>(reinterpret_cast<const S*>(dy + done),
                                     reinterpret_cast<const S*>(v + done),
                                     reinterpret_cast<S*>(dx + done), n - done, f);
}

}  // namespace gpugd

// In place is allowed (y may be x; dx may be dy or v): each element is read, then written,
// by one thread; so the pointers carry no __restrict__.
#define GPUGD_ACTIVATION_KERNELS(T, SFX)                                                        \
  extern "C" __global__ void gpugd_activations_forward_##SFX(const T* x, T* y, i64 n, int kind, \
                                                             T a, T b) {                        \
    gpugd::forward_body<T>(x, y, n, gpugd::Act<T>{kind, a, b});                                 \
  }                                                                                             \
  extern "C" __global__ void gpugd_activations_backward_##SFX(                                  \
      const T* dy, const T* v, T* dx, i64 n, int kind, T a, T b) {                              \
    gpugd::backward_body<T>(dy, v, dx, n, gpugd::Act<T>{kind, a, b});                           \
  }

GPUGD_ACTIVATION_KERNELS(float, f32)
GPUGD_ACTIVATION_KERNELS(double, f64)
