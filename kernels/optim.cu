// gpugd optim family: fused optimizer updates with torch.optim's semantics.
// One read of p, g and the states, one write of p and the states per element; math in T
// (fp32 registers for fp32 arrays, fp64 for fp64); scalars that depend only on the step
// (bias corrections, decayed learning rates) are computed once on the host.
// Every kernel: g is multiplied by grad_scale before use; when `skip` is non-null and
// *skip != 0 the kernel returns before touching memory (a skipped, non-finite step).
// The per-element rule of each optimizer lives once, in the Rule structs below; the
// launch wrapper applies it with 16-byte accesses where every pointer allows it.
#include "common.cuh"

namespace gpugd {

// ---- per-element rules (the shared math) ------------------------------------------------

template <typename T>
struct SgdRule {  // d = g·s + wd·p; buf = d | μ·buf + (1−τ)·d; d = d + μ·buf | buf; p −= lr·d
  T lr, wd, momentum, dampening, grad_scale;
  int nesterov, first, has_buf;
  __device__ __forceinline__ void operator()(T& p, T g, T& buf, T&, T&) const {
    T d = g * grad_scale + wd * p;
    if (has_buf) {
      buf = first ? d : momentum * buf + (T(1) - dampening) * d;
      d = nesterov ? d + momentum * buf : buf;
    }
    p -= lr * d;
  }
};

template <typename T>
struct AdagradRule {  // d = g·s + wd·p; sum += d²; p −= clr·d/(√sum + ε)
  T clr, wd, eps, grad_scale;
  __device__ __forceinline__ void operator()(T& p, T g, T& sum, T&, T&) const {
    const T d = g * grad_scale + wd * p;
    sum += d * d;
    p -= clr * d / (sqrt(sum) + eps);
  }
};

template <typename T>
struct RmspropRule {  // v = α·v + (1−α)·d²; den = √(v − m̄²) | √v, + ε; b = μ·b + d/den
  T lr, alpha, eps, wd, momentum, grad_scale;
  int centered, has_buf;
  __device__ __forceinline__ void operator()(T& p, T g, T& sq, T& gavg, T& buf) const {
    const T d = g * grad_scale + wd * p;
    sq = alpha * sq + (T(1) - alpha) * d * d;
    T den;
    if (centered) {
      gavg = alpha * gavg + (T(1) - alpha) * d;
      den = sqrt(sq - gavg * gavg) + eps;
    } else {
      den = sqrt(sq) + eps;
    }
    if (has_buf) {
      buf = momentum * buf + d / den;
      p -= lr * buf;
    } else {
      p -= lr * d / den;
    }
  }
};

template <typename T>
struct AdamRule {  // m = β1·m + (1−β1)·d; v = β2·v + (1−β2)·d²; p −= lr/bc1 · m/(√v̂/√bc2 + ε)
  T lr, beta1, beta2, eps, wd, step_size, bc2_sqrt, grad_scale;
  int decoupled, amsgrad;
  __device__ __forceinline__ void operator()(T& p, T g, T& m, T& v, T& vmax) const {
    T d = g * grad_scale;
    if (decoupled) p *= T(1) - lr * wd;
    else d += wd * p;
    m = beta1 * m + (T(1) - beta1) * d;
    v = beta2 * v + (T(1) - beta2) * d * d;
    T vh = v;
    if (amsgrad) {
      vmax = vmax > v ? vmax : v;
      vh = vmax;
    }
    p -= step_size * m / (sqrt(vh) / bc2_sqrt + eps);
  }
};

template <typename T>
struct NadamRule {  // den = √(v/bc2) + ε; p −= c_g·d/den + c_m·m/den (c_g, c_m from μ_t, μ_t+1)
  T lr, beta1, beta2, eps, wd, c_g, c_m, bc2, grad_scale;
  int decoupled;
  __device__ __forceinline__ void operator()(T& p, T g, T& m, T& v, T&) const {
    T d = g * grad_scale;
    if (decoupled) p *= T(1) - lr * wd;
    else d += wd * p;
    m = beta1 * m + (T(1) - beta1) * d;
    v = beta2 * v + (T(1) - beta2) * d * d;
    const T den = sqrt(v / bc2) + eps;
    p -= c_g * d / den;
    p -= c_m * m / den;
  }
};

// ---- the launch wrapper: grid-stride, 16-byte packs when aligned, null states skipped ---

template <typename T, typename Rule>
__device__ __forceinline__ void apply_rule(T* __restrict__ p, const T* __restrict__ g,
                                           T* __restrict__ s0, T* __restrict__ s1,
                                           T* __restrict__ s2, i64 n, const int* skip,
                                           const Rule& rule) {
  if (skip != nullptr && *skip != 0) return;
  constexpr int W = Pack<T>::width;
  const i64 start = grid_start(), stride = grid_stride();
  const bool h0 = s0 != nullptr, h1 = s1 != nullptr, h2 = s2 != nullptr;
  i64 done = 0;
  if (aligned16(p) && aligned16(g) && (!h0 || aligned16(s0)) && (!h1 || aligned16(s1)) &&
      (!h2 || aligned16(s2))) {
    const i64 nv = n / W;
    typedef AlignedPack<T> P;
    for (i64 i = start; i < nv; i += stride) {
      P pp = reinterpret_cast<P*>(p)[i];
      const P gp = reinterpret_cast<const P*>(g)[i];
      P a, b, c;
      if (h0) a = reinterpret_cast<P*>(s0)[i];
      if (h1) b = reinterpret_cast<P*>(s1)[i];
      if (h2) c = reinterpret_cast<P*>(s2)[i];
#pragma unroll
      for (int k = 0; k < W; ++k) rule(pp.v[k], gp.v[k], a.v[k], b.v[k], c.v[k]);
      reinterpret_cast<P*>(p)[i] = pp;
      if (h0) reinterpret_cast<P*>(s0)[i] = a;
      if (h1) reinterpret_cast<P*>(s1)[i] = b;
      if (h2) reinterpret_cast<P*>(s2)[i] = c;
    }
    done = nv * W;
  }
  for (i64 i = done + start; i < n; i += stride) {
    T pv = p[i], a = h0 ? s0[i] : T(0), b = h1 ? s1[i] : T(0), c = h2 ? s2[i] : T(0);
    rule(pv, g[i], a, b, c);
    p[i] = pv;
    if (h0) s0[i] = a;
    if (h1) s1[i] = b;
    if (h2) s2[i] = c;
  }
}

}  // namespace gpugd

// ---- entry points: one per rule and dtype --------------------------------------------------

#define GPUGD_OPTIM_KERNELS(T, SFX)                                                           \
  extern "C" __global__ void gpugd_optim_sgd_##SFX(                                           \
      T* p, const T* g, T* buf, i64 n, T lr, T wd, T momentum, T dampening, int nesterov,     \
      int first, T grad_scale, const int* skip) {                                             \
    const gpugd::SgdRule<T> r{lr, wd, momentum, dampening, grad_scale, nesterov, first,       \
                              buf != nullptr};                                                \
    gpugd::apply_rule<T>(p, g, buf, nullptr, nullptr, n, skip, r);                            \
  }                                                                                           \
  extern "C" __global__ void gpugd_optim_adagrad_##SFX(T* p, const T* g, T* sum, i64 n,       \
                                                       T clr, T wd, T eps, T grad_scale,      \
                                                       const int* skip) {                     \
    const gpugd::AdagradRule<T> r{clr, wd, eps, grad_scale};                                  \
    gpugd::apply_rule<T>(p, g, sum, nullptr, nullptr, n, skip, r);                            \
  }                                                                                           \
  extern "C" __global__ void gpugd_optim_rmsprop_##SFX(                                       \
      T* p, const T* g, T* sq, T* gavg, T* buf, i64 n, T lr, T alpha, T eps, T wd,            \
      T momentum, T grad_scale, const int* skip) {                                            \
    const gpugd::RmspropRule<T> r{lr,         alpha, eps, wd, momentum, grad_scale,           \
                                  gavg != nullptr, buf != nullptr};                           \
    gpugd::apply_rule<T>(p, g, sq, gavg, buf, n, skip, r);                                    \
  }                                                                                           \
  extern "C" __global__ void gpugd_optim_adam_##SFX(                                          \
      T* p, const T* g, T* m, T* v, T* vmax, i64 n, T lr, T beta1, T beta2, T eps, T wd,      \
      int decoupled, T step_size, T bc2_sqrt, T grad_scale, const int* skip) {                \
    const gpugd::AdamRule<T> r{lr,       beta1,      beta2,     eps,            wd,           \
                               step_size, bc2_sqrt, grad_scale, decoupled, vmax != nullptr};  \
    gpugd::apply_rule<T>(p, g, m, v, vmax, n, skip, r);                                       \
  }                                                                                           \
  extern "C" __global__ void gpugd_optim_nadam_##SFX(                                         \
      T* p, const T* g, T* m, T* v, i64 n, T lr, T beta1, T beta2, T eps, T wd,               \
      int decoupled, T c_g, T c_m, T bc2, T grad_scale, const int* skip) {                    \
    const gpugd::NadamRule<T> r{lr, beta1, beta2, eps, wd, c_g, c_m, bc2, grad_scale,        \
                                decoupled};                                                   \
    gpugd::apply_rule<T>(p, g, m, v, nullptr, n, skip, r);                                    \
  }

GPUGD_OPTIM_KERNELS(float, f32)
GPUGD_OPTIM_KERNELS(double, f64)
