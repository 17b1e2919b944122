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

// The kind is uniform over the launch, so the switch costs a predictable branch per
// element; the loops are bandwidth-bound.
template <typename T>
__device__ __forceinline__ void forward_body(const T* x, T* y, i64 n,
                                             const Act<T>& f) {
  constexpr int W = Pack<T>::width;
  const i64 start = grid_start(), stride = grid_stride();
  i64 done = 0;
  if (aligned16(x) && aligned16(y)) {
    typedef AlignedPack<T> P;
    const i64 nv = n / W;
    for (i64 i = start; i < nv; i += stride) {
      P v = reinterpret_cast<const P*>(x)[i];
#pragma unroll
      for (int k = 0; k < W; ++k) v.v[k] = f.fwd(v.v[k]);
      reinterpret_cast<P*>(y)[i] = v;
    }
    done = nv * W;
  }
  for (i64 i = done + start; i < n; i += stride) y[i] = f.fwd(x[i]);
}

template <typename T>
__device__ __forceinline__ void backward_body(const T* dy, const T* v, T* dx, i64 n,
                                              const Act<T>& f) {
  constexpr int W = Pack<T>::width;
  const i64 start = grid_start(), stride = grid_stride();
  i64 done = 0;
  if (aligned16(dy) && aligned16(v) && aligned16(dx)) {
    typedef AlignedPack<T> P;
    const i64 nv = n / W;
    for (i64 i = start; i < nv; i += stride) {
      const P g = reinterpret_cast<const P*>(dy)[i];
      const P u = reinterpret_cast<const P*>(v)[i];
      P o;
#pragma unroll
      for (int k = 0; k < W; ++k) o.v[k] = f.bwd(g.v[k], u.v[k]);
      reinterpret_cast<P*>(dx)[i] = o;
    }
    done = nv * W;
  }
  for (i64 i = done + start; i < n; i += stride) dx[i] = f.bwd(dy[i], v[i]);
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
