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

// σ(x) and 1 − σ(x) = σ(−x) from one exponential (no cancellation where σ rounds to 1)
template <typename T>
__device__ __forceinline__ void sig_pair(T x, T& s, T& c) {
  const T e = exp(-fabs(x));
  const T big = T(1) / (T(1) + e), small = e * big;  // σ(−|x|) = e·σ(|x|): one division
  s = x >= T(0) ? big : small;
  c = x >= T(0) ? small : big;
}

template <typename T>
__device__ __forceinline__ T sig(T x) {
  T s, c;
  sig_pair(x, s, c);
  return s;
}

// f'(x) past the range where it is computed (±Inf; gelu_tanh past 10^4): 1 for x > 0, else
// a negative value below every subnormal, so dy·f' is dy or dy·(−0)
template <typename T>
__device__ __forceinline__ T dy_times_far_slope(T dy, T x) {
  return x > T(0) ? dy : dy * T(-0.0);
}

// a derivative that underflowed to 0 where it is negative (x < −1 for gelu and gelu_tanh)
// is −0: the sign of the exact value
template <typename T>
__device__ __forceinline__ T signed_underflow(T d, T x) {
  return (d == T(0) && x < T(-1)) ? T(-0.0) : d;
}

// gelu_tanh's argument 2u = A·x + B·x³, A = 2√(2/π), B = 0.044715·A: float64 heads, tails
constexpr double kGeluTanhA = 1.5957691216057308, kGeluTanhA_LO = -9.96930880911092e-17;
constexpr double kGeluTanhB = 0.07135481627260025, kGeluTanhB_LO = -6.175149918155315e-19;

template <typename T>
__device__ __forceinline__ T stable_tanh(T x) {
  const T m = expm1(T(-2) * fabs(x));  // tanh|x| = −m/(2 + m)
  const T t = -m / (T(2) + m);
  return x > T(0) ? t : (x < T(0) ? -t : x);  // ±0 and NaN: x itself
}

// Φ(x) = ½·erfc(z), z = −x/√2 carried as z + lo (a rounded z alone costs 2z² ulps in
// erfc's tail): erfc(z + lo) = erfc(z) − (2/√π)·e^(−z²)·lo. lo is 0 past |x| = 10^30
// (Inf − Inf at ±Inf), where the correction is 0 anyway.
template <typename T>
__device__ __forceinline__ T phi(T x) {
  const double R = 0.7071067811865476, R_LO = -4.833646656726457e-17;  // 1/√2, head + tail
  const T r = T(R), r_lo = T((R - double(r)) + R_LO);
  const T z = -x * r;
  T lo = fma(-x, r, -z) - x * r_lo;
  lo = fabs(x) <= T(1e30) ? lo : T(0);
  return T(0.5) * (erfc(z) - T(1.1283791670955126) * exp(-z * z) * lo);
}

// e^(−x²/2) with x² = hi + lo split exactly (a rounded x²/2 costs x²/2 ulps); |x| clamped
// at 40, past which it is 0, so lo stays finite at ±Inf
template <typename T>
__device__ __forceinline__ T gauss(T x) {
  const T xa = fabs(x) < T(40) ? fabs(x) : T(40);
  const T hi = xa * xa, lo = fma(xa, xa, -hi);
  return x == x ? exp(T(-0.5) * hi) * (T(1) - T(0.5) * lo) : x;
}

// (s, 1 − s), s = σ(2u), 2u = A·x + B·x³ (A = 2√(2/π), B = 0.044715·A), 2u as t + δ: in
// the tail σ(t) has relative condition |t| (~240 at x = −14.5), so the roundings of x³,
// of the constants (heads and tails) and of the sums go into δ, and
// σ(t + δ) = σ(t)(1 + (1 − σ(t))·δ). δ is 0 past |x| = 10^4 (σ is 0 or 1, x³ may overflow).
// With --fmad=false nothing is contracted, so t = h1 + h2 is the rounded sum the two-sum
// step needs.
template <typename T>
__device__ __forceinline__ void sig_gelu_tanh(T x, T& s, T& c) {
  const T a = T(kGeluTanhA), a_lo = T((kGeluTanhA - double(a)) + kGeluTanhA_LO);
  const T b = T(kGeluTanhB), b_lo = T((kGeluTanhB - double(b)) + kGeluTanhB_LO);
  const T p = x * x, q = p * x;  // x³ = q + eq
  const T eq = fma(p, x, -q) + fma(x, x, -p) * x;
  const T h1 = b * q, e1 = fma(b, q, -h1) + (b * eq + b_lo * q);
  const T h2 = a * x, e2 = fma(a, x, -h2) + a_lo * x;
  const T t = h1 + h2, r = t - h1;
  T d = ((h1 - (t - r)) + (h2 - r)) + (e1 + e2);
  d = fabs(x) < T(1e4) ? d : T(0);
  sig_pair(t, s, c);
  const T sc = s * c * d;
  s = s + sc;
  c = c - sc;
}

// Edge values as torch where torch is right, exact where it is not (tests/
// test_activation_edges.py): f(−Inf) = −0 for gelu/gelu_tanh/silu, f'(±Inf) = 1 and −0,
// NaN in x (or dy) gives NaN, a zero keeps the sign of the exact value.
template <typename T>
struct Act {
  int kind;
  T a, b;

  __device__ __forceinline__ T fwd(T x) const {
    const bool neg_inf = isinf(x) && x < T(0);
    switch (kind) {
      case 0: return sig(x);
      case 1: return stable_tanh(x);
      case 2: return x < T(0) ? T(0) : x;  // relu(−Inf) = +0, relu(−0) = −0, NaN kept
      case 3: return x > T(0) ? x : a * x;
      case 4: return x > T(0) ? b * x : b * a * expm1(x);
      case 5: return neg_inf ? T(-0.0) : x * phi(x);  // x·Φ(x), both tails
      case 6: {
        // ½x(1 + tanh u) = x·σ(2u): 1 + tanh u cancels for x ≪ 0, σ(2u) does not
        T s, c;
        sig_gelu_tanh(x, s, c);
        return neg_inf ? T(-0.0) : x * s;
      }
      case 7: {
        const T bx = a * x;  // bx·0 would make −Inf's softplus NaN, not 0
        return bx > b ? x : ((bx > T(0) ? bx : T(0)) + log1p(exp(-fabs(bx)))) / a;
      }
      default: return neg_inf ? T(-0.0) : x * sig(x);
    }
  }

  __device__ __forceinline__ T bwd(T dy, T v) const {
    switch (kind) {
      case 0: return dy * v * (T(1) - v);
      case 1: return dy * fma(-v, v, T(1));  // 1 − y², one rounding, as the Numba mirror
      case 2: return v > T(0) ? dy : ((v != v || dy != dy) ? v + dy : T(0));  // torch's select
      case 3: return v > T(0) ? dy : (v == v ? a * dy : v);
      case 4: return v > T(0) ? b * dy : dy * (b * a * exp(v));  // dy ⊗ f'(x): Inf·0 is NaN
      case 5: {
        // f' = Φ(x) + x·φ(x); past |x| = 40 it is 1 or below every subnormal: x clamped
        // there (Inf·0 at ±Inf), and a 0 for x < −1 (where f' < 0) is −0
        const T xc = v > T(40) ? T(40) : (v < T(-40) ? T(-40) : v);
        const T d = phi(xc) + xc * T(0.3989422804014327) * gauss(xc);
        return dy * signed_underflow(d, v);
      }
      case 6: {
        // f' = s + x·s(1 − s)·(A + 3B·x²), s = σ(2u)
        T s, c;
        sig_gelu_tanh(v, s, c);
        const T d = s + v * s * c * (T(kGeluTanhA) + T(3.0 * kGeluTanhB) * v * v);
        return fabs(v) > T(1e4) ? dy_times_far_slope(dy, v) : dy * signed_underflow(d, v);
      }
      case 7: {
        const T bx = a * v;
        return bx > b ? dy : dy * sig(bx);
      }
      default: {
        // f' first, then dy: dy·s would round a subnormal σ(x) twice (x = −103 in float32)
        T s, c;
        sig_pair(v, s, c);
        return isinf(v) ? dy_times_far_slope(dy, v) : dy * (s * (T(1) + v * c));
      }
    }
  }
};

// 16-byte packs each thread loads before it computes and stores, per iteration of the main
// loops (common.cuh's stream_items), from ptxas sm_90 at 256 threads per block (registers
// → blocks/SM → bytes in flight per SM = blocks × 256 × bytes per thread):
//   forward  f32: 2 packs, 34 registers, 6 blocks, 48 KB
//   forward  f64: 3 packs, 52 registers, 4 blocks, 48 KB
//   backward f32: 2 packs of each input, 40 registers, 6 blocks, 96 KB
//   backward f64: 2 packs of each input, 76 registers, 3 blocks, 48 KB (1 pack: 76, 3,
//                 24 KB; __launch_bounds__(256, 4) spills); the compensated GELU and
//                 tanh-GELU derivatives (exact edges) cost the registers, sm_80 takes 60
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
