// gpugd optim family: fused optimizer updates with torch.optim's semantics.
// One read of p, g and the states, one write of p and the states per element; math in T
// (fp32 registers for fp32 arrays, fp64 for fp64); scalars that depend only on the step
// (bias corrections, decayed learning rates) are computed once on the host.
// Every kernel: g is multiplied by grad_scale and clamped to ±clip (∞: off) before use, in
// one place (grad_in), so the rules see the gradient they update with (how norm clipping,
// value clipping and loss scaling fuse in); when `skip` is non-null and *skip != 0 the
// kernel returns before touching memory (a skipped, non-finite step).
// Every a·b + c of the rules is an explicit fma (one rounding), as in the Numba mirror
// (gpugd/_cpu/optim.py), and NVRTC compiles with --fmad=false (gpugd/_cuda.py), so nothing
// else is contracted. The scalars are the Numba kernel's, computed once on the host in
// float64 and rounded once to T (1 − β, 1 − dampening, 1 − lr·wd among them): both
// backends give the same bits for every element (tests/test_cuda_parity.py).
// The per-element rule of each optimizer lives once, in the Rule structs below; apply_range
// runs it over one array (16-byte accesses where every pointer allows), apply_table over
// many tensors listed in device memory (one launch for a whole model, as Apex's
// multi_tensor_apply). Every state slot s0..s2 is a pointer that may be null (unused).
// Mixed precision (apply_range_mixed, the `_multi_<policy>` entries): p and g in float16 or
// bfloat16, states in float32 or bfloat16, the rule in float32 registers; with fp32 master
// weights the rule updates the master copy (table row p) and the half-precision parameters
// (row OUT_ROW) receive its rounding in the same pass (precision.cuh: to nearest even, or
// stochastic for bfloat16).
#include "common.cuh"
#include "precision.cuh"

namespace gpugd {

// ---- per-element rules (the shared math) ------------------------------------------------

template <typename T>
struct SgdRule {  // d = g + wd·p; buf = d | μ·buf + (1−τ)·d; d = d + μ·buf | buf; p −= lr·d
  T lr, wd, momentum, one_m_damp;
  int nesterov, first, has_buf;
  __device__ __forceinline__ void operator()(T& p, T g, T& buf, T&, T&) const {
    T d = fma(wd, p, g);
    if (has_buf) {
      buf = first ? d : fma(momentum, buf, one_m_damp * d);
      d = nesterov ? fma(momentum, buf, d) : buf;
    }
    p = fma(-lr, d, p);
  }
};

template <typename T>
struct AdagradRule {  // d = g + wd·p; sum += d²; p −= clr·d/(√sum + ε)
  T clr, wd, eps;
  __device__ __forceinline__ void operator()(T& p, T g, T& sum, T&, T&) const {
    const T d = fma(wd, p, g);
    sum = fma(d, d, sum);
    p -= clr * d / (sqrt(sum) + eps);
  }
};

template <typename T>
struct RmspropRule {  // v = α·v + (1−α)·d²; den = √(v − m̄²) | √v, + ε; b = μ·b + d/den
  T lr, alpha, one_m_alpha, eps, wd, momentum;
  int centered, has_buf;
  __device__ __forceinline__ void operator()(T& p, T g, T& sq, T& gavg, T& buf) const {
    const T d = fma(wd, p, g);
    sq = fma(alpha, sq, one_m_alpha * d * d);
    T den;
    if (centered) {
      gavg = fma(alpha, gavg, one_m_alpha * d);
      den = sqrt(fma(-gavg, gavg, sq)) + eps;
    } else {
      den = sqrt(sq) + eps;
    }
    if (has_buf) {
      buf = fma(momentum, buf, d / den);
      p = fma(-lr, buf, p);
    } else {
      p -= lr * d / den;
    }
  }
};

// m = β1·m + (1−β1)·d; v = β2·v + (1−β2)·d²; p −= lr/bc1 · m/(√v̂·(1/√bc2) + ε)
// (1/√bc2 comes from the host: a multiply, not a second division per element)
// Weight decay without a branch: coupled (Adam) wd_c = wd, decay_mul = 1; decoupled (AdamW)
// wd_c = 0, decay_mul = 1 − lr·wd.
template <typename T>
struct AdamRule {
  T beta1, one_m_beta1, beta2, one_m_beta2, eps, wd_c, decay_mul, step_size, inv_bc2_sqrt;
  int amsgrad;
  __device__ __forceinline__ void operator()(T& p, T g, T& m, T& v, T& vmax) const {
    p = p * decay_mul;
    const T d = fma(wd_c, p, g);
    m = fma(beta1, m, one_m_beta1 * d);
    v = fma(beta2, v, one_m_beta2 * d * d);
    T vh = v;
    if (amsgrad) {
      vmax = vmax > v ? vmax : v;
      vh = vmax;
    }
    p -= step_size * m / fma(sqrt(vh), inv_bc2_sqrt, eps);
  }
};

template <typename T>
struct NadamRule {  // p −= (c_g·d + c_m·m)/(√(v·(1/bc2)) + ε), c_g, c_m from μ_t, μ_t+1
  T beta1, one_m_beta1, beta2, one_m_beta2, eps, wd_c, decay_mul, c_g, c_m, inv_bc2;
  __device__ __forceinline__ void operator()(T& p, T g, T& m, T& v, T&) const {
    p = p * decay_mul;  // weight decay as in AdamRule
    const T d = fma(wd_c, p, g);
    m = fma(beta1, m, one_m_beta1 * d);
    v = fma(beta2, v, one_m_beta2 * d * d);
    p -= fma(c_g, d, c_m * m) / (sqrt(v * inv_bc2) + eps);
  }
};

// Lion (Chen et al. 2023), decoupled weight decay as lion-pytorch: p = p·(1 − lr·wd);
// u = sign(β1·m + (1−β1)·d) (±1, or c itself for ±0 and NaN: Numba's np.sign); p −= lr·u;
// m = β2·m + (1−β2)·d.
template <typename T>
struct LionRule {
  T lr, beta1, one_m_beta1, beta2, one_m_beta2, decay_mul;
  __device__ __forceinline__ void operator()(T& p, T g, T& m, T&, T&) const {
    p = p * decay_mul;
    const T c = fma(beta1, m, one_m_beta1 * g);
    const T u = c > T(0) ? T(1) : (c < T(0) ? T(-1) : c);
    p = fma(-lr, u, p);
    m = fma(beta2, m, one_m_beta2 * g);
  }
};

// ---- where a rule is applied: a range with a start and stride, and a tensor table ------

// rule over n elements of p, g and up to three states (null: unused), from `start` in steps
// of `stride`; 16-byte packs when every pointer in use is 16-byte aligned.
template <typename T>
__device__ __forceinline__ void add_update_stats(T old, T now, double* stats) {
  const double pn = static_cast<double>(now), dp = pn - static_cast<double>(old);
  stats[0] += pn * pn;
  stats[1] += dp * dp;
}

// The gradient every rule sees: g·s clamped to [−clip, clip] (clip = ∞: off); written so a
// NaN passes through (it compares false), as torch's clamp does.
template <typename T>
__device__ __forceinline__ T grad_in(T g, T grad_scale, T clip) {
  T d = g * grad_scale;
  d = d > clip ? clip : d;
  return d < -clip ? -clip : d;
}

// With `stats`, also adds Σ p_new² to stats[0] and Σ (p_new − p_old)² to stats[1] (double).
template <typename T, typename Rule, bool STATS = false>
__device__ __forceinline__ void apply_range(T* __restrict__ p, const T* __restrict__ g,
                                            T* __restrict__ s0, T* __restrict__ s1,
                                            T* __restrict__ s2, i64 n, i64 start, i64 stride,
                                            T grad_scale, T clip, const Rule& rule,
                                            double* stats = nullptr) {
  constexpr int W = Pack<T>::width;
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
      for (int k = 0; k < W; ++k) {
        const T old = pp.v[k];
        rule(pp.v[k], grad_in(gp.v[k], grad_scale, clip), a.v[k], b.v[k], c.v[k]);
        if (STATS) add_update_stats(old, pp.v[k], stats);
      }
      reinterpret_cast<P*>(p)[i] = pp;
      if (h0) reinterpret_cast<P*>(s0)[i] = a;
      if (h1) reinterpret_cast<P*>(s1)[i] = b;
      if (h2) reinterpret_cast<P*>(s2)[i] = c;
    }
    done = nv * W;
  }
  for (i64 i = done + start; i < n; i += stride) {
    T pv = p[i], a = h0 ? s0[i] : T(0), b = h1 ? s1[i] : T(0), c = h2 ? s2[i] : T(0);
    const T old = pv;
    rule(pv, grad_in(g[i], grad_scale, clip), a, b, c);
    if (STATS) add_update_stats(old, pv, stats);
    p[i] = pv;
    if (h0) s0[i] = a;
    if (h1) s1[i] = b;
    if (h2) s2[i] = c;
  }
}

// Mixed precision over n elements: p (P: f16_t/bf16_t, or the fp32 master copy when `out`
// is non-null), g (G), states (S: float or bf16_t), `out` (OutT: the half-precision
// parameters receiving round(p), or null); math in float. `first` is the index of element 0
// within its tensor (for stochastic rounding's counter). Packs of 4 elements (8 or 16 bytes
// per array) when every pointer in use allows.
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

template <typename T>
__device__ __forceinline__ bool aligned_quad(const T* a) {
  return a == nullptr || (reinterpret_cast<u64>(a) & (4 * sizeof(T) - 1)) == 0ull;
}

template <typename P, typename G, typename S, typename OutT, typename Rule, bool STATS = false>
__device__ __forceinline__ void apply_range_mixed(P* __restrict__ p, const G* __restrict__ g,
                                                  S* __restrict__ s0, S* __restrict__ s1,
                                                  S* __restrict__ s2, OutT* __restrict__ out,
                                                  i64 n, i64 first, i64 start, i64 stride,
                                                  float grad_scale, float clip, const Rule& rule,
                                                  const Rounding& rnd, double* stats = nullptr) {
  const Rounding nearest{0u, 0};
  const bool h0 = s0 != nullptr, h1 = s1 != nullptr, h2 = s2 != nullptr;
  // One element: load as float, apply the rule, store rounded (p: `rnd`, states: nearest);
  // returns the new p (the caller rounds it into `out`). Every state is a value of the
  // caller's: zero when the state is not in use, and then not written back. (Not pointers
  // that may be null: `out ? &o.v[k] : nullptr` kept the out pack in local memory, one STL
  // per element, and a state kept both its loaded and its new value live for a select.)
  auto one = [&](P& pr, G gr, S& a, S& b, S& c, i64 e) {
    float pv = to_float(pr), x = to_float(a), y = to_float(b), z = to_float(c);
    const float old = pv;
    rule(pv, grad_in(to_float(gr), grad_scale, clip), x, y, z);
    if (STATS) add_update_stats(old, pv, stats);
    store(pr, pv, rnd, e);
    store(a, x, nearest, e);
    store(b, y, nearest, e);
    store(c, z, nearest, e);
    return pv;
  };
  i64 done = 0;
  if (aligned_quad(p) && aligned_quad(g) && aligned_quad(s0) && aligned_quad(s1) &&
      aligned_quad(s2) && aligned_quad(out)) {
    const i64 nv = n / 4;
    for (i64 i = start; i < nv; i += stride) {
      Quad<P> pp = reinterpret_cast<Quad<P>*>(p)[i];
      const Quad<G> gp = reinterpret_cast<const Quad<G>*>(g)[i];
      const Quad<S> zero{};
      Quad<S> a = h0 ? reinterpret_cast<Quad<S>*>(s0)[i] : zero;
      Quad<S> b = h1 ? reinterpret_cast<Quad<S>*>(s1)[i] : zero;
      Quad<S> c = h2 ? reinterpret_cast<Quad<S>*>(s2)[i] : zero;
      float pn[4];  // the new p of each element (pp's own values when P is float)
#pragma unroll
      for (int k = 0; k < 4; ++k)
        pn[k] = one(pp.v[k], gp.v[k], a.v[k], b.v[k], c.v[k], first + 4 * i + k);
      reinterpret_cast<Quad<P>*>(p)[i] = pp;
      if (out != nullptr) {  // the half-precision parameters: round(pn) (`rnd`)
        Quad<OutT> o;
#pragma unroll
        for (int k = 0; k < 4; ++k) store(o.v[k], pn[k], rnd, first + 4 * i + k);
        reinterpret_cast<Quad<OutT>*>(out)[i] = o;
      }
      if (h0) reinterpret_cast<Quad<S>*>(s0)[i] = a;
      if (h1) reinterpret_cast<Quad<S>*>(s1)[i] = b;
      if (h2) reinterpret_cast<Quad<S>*>(s2)[i] = c;
    }
    done = nv * 4;
  }
  for (i64 i = done + start; i < n; i += stride) {
    S a = h0 ? s0[i] : S{}, b = h1 ? s1[i] : S{}, c = h2 ? s2[i] : S{};
    const float pv = one(p[i], g[i], a, b, c, first + i);
    if (out != nullptr) store(out[i], pv, rnd, first + i);
    if (h0) s0[i] = a;
    if (h1) s1[i] = b;
    if (h2) s2[i] = c;
  }
}

// Many tensors in one launch (the multi-tensor path). `table` lives in device memory, so the
// tensor count has no kernel-argument limit: rows of `ntensors` 64-bit entries — addresses
// of p, g, s0, s1, s2 (0: state unused), element counts, then the out row (OUT_ROW: the
// half-precision parameters beside fp32 master weights, 0: none). `chunks` holds (tensor,
// first element) pairs; one block sweeps one chunk of at most `chunk` elements at a time.
// `range(addr, t, lo, n, stats)` updates elements [lo, lo + n) of tensor t (addr: the row
// addresses, 0 where unused) across the block, adding to stats when it is non-null.
template <typename Range>
__device__ __forceinline__ void apply_table(const i64* __restrict__ table, i64 ntensors,
                                            const i64* __restrict__ chunks, i64 nchunks,
                                            i64 chunk, const Range& range,
                                            double* __restrict__ chunk_stats) {
  __shared__ double scratch[32];
  for (i64 c = blockIdx.x; c < nchunks; c += gridDim.x) {
    const i64 t = chunks[2 * c], lo = chunks[2 * c + 1];
    const i64 size = table[5 * ntensors + t];
    const i64 n = size - lo < chunk ? size - lo : chunk;
    i64 addr[6];
#pragma unroll
    for (int r = 0; r < 5; ++r) addr[r] = table[r * ntensors + t];
    addr[5] = table[6 * ntensors + t];
    if (chunk_stats == nullptr) {
      range.template run<false>(addr, t, lo, n, nullptr);
      continue;
    }
    // Monitoring: this chunk's Σ p_new² and Σ Δp², fixed-order block sums, no atomics.
    double st[2] = {0.0, 0.0};
    range.template run<true>(addr, t, lo, n, st);
    const double pn = block_sum(st[0], scratch);
    __syncthreads();
    const double dp = block_sum(st[1], scratch);
    if (threadIdx.x == 0) {
      chunk_stats[2 * c] = pn;
      chunk_stats[2 * c + 1] = dp;
    }
    __syncthreads();
  }
}

template <typename T>
__device__ __forceinline__ T* row_ptr(i64 a, i64 lo) {
  return a ? reinterpret_cast<T*>(a) + lo : nullptr;
}
// The same for an array every row has (p, g: 0 only for an empty tensor, of which no element
// is touched), without the null test, in integers (no arithmetic on a null pointer). With
// two null tests fewer, ptxas (12.9, sm_90) keeps the row addresses in uniform registers in
// the _master kernels too (as seen in the SASS: R2UR; likely its 7 uniform predicates); with
// them it held them in per-thread registers, 12 to 20 more per thread.
template <typename T>
__device__ __forceinline__ T* row_ptr_present(i64 a, i64 lo) {
  return reinterpret_cast<T*>(a + lo * static_cast<i64>(sizeof(T)));
}

// The range of one dtype T for every array (float32 or float64).
template <typename T, typename Rule>
struct PlainRange {
  const Rule& rule;
  T grad_scale, clip;
  template <bool STATS>
  __device__ __forceinline__ void run(const i64* a, i64, i64 lo, i64 n, double* st) const {
    apply_range<T, Rule, STATS>(row_ptr_present<T>(a[0], lo), row_ptr_present<T>(a[1], lo),
                                row_ptr<T>(a[2], lo), row_ptr<T>(a[3], lo),
                                row_ptr<T>(a[4], lo), n, threadIdx.x, blockDim.x, grad_scale,
                                clip, rule, st);
  }
};

// The mixed-precision range: P parameters (or float masters with OutT parameters), P
// gradients, S states; MASTER says whether row 0 is the fp32 master copy.
template <typename P, typename S, bool MASTER, typename Rule>
struct MixedRange {
  const Rule& rule;
  float grad_scale, clip;
  Rounding rnd;
  template <bool STATS>
  __device__ __forceinline__ void run(const i64* a, i64 t, i64 lo, i64 n, double* st) const {
    typedef typename Select<MASTER, float, P>::type W;  // what the rule updates
    const Rounding r{mix32(rnd.key, t), rnd.stochastic};
    apply_range_mixed<W, P, S, P, Rule, STATS>(
        row_ptr_present<W>(a[0], lo), row_ptr_present<const P>(a[1], lo), row_ptr<S>(a[2], lo),
        row_ptr<S>(a[3], lo), row_ptr<S>(a[4], lo), MASTER ? row_ptr<P>(a[5], lo) : nullptr,
        n, lo, threadIdx.x, blockDim.x, grad_scale, clip, rule, r, st);
  }
};

}  // namespace gpugd

// ---- entry points: per rule and dtype, one array (`_f32`) and a tensor table (`_multi_f32`)
// Both take the same scalars as the Numba kernels, flags included (has_buf, centered,
// amsgrad): not read from which state addresses are null, since a zero-size tensor has a
// null address too (CuPy gives an empty array the pointer 0), and a list starting with one
// would have switched the state off for every tensor. A non-zero *skip returns before any
// access. A non-null dev_scale replaces grad_scale by *dev_scale rounded once to T: the
// multiplier (grad_scale · clip coefficient, in float64) that gpugd_optim_step_decide wrote
// on the device, so an eager step with clipping reads nothing back to the host.
namespace gpugd {
template <typename T>
__device__ __forceinline__ T scale_of(T grad_scale, const double* dev_scale) {
  return dev_scale != nullptr ? static_cast<T>(*dev_scale) : grad_scale;
}
}  // namespace gpugd

#define GPUGD_OPTIM_ENTRIES(NAME, T, SFX, RULE, ...)                                           \
  extern "C" __global__ void gpugd_optim_##NAME##_##SFX(T* p, const T* g, T* s0, T* s1, T* s2,  \
                                                        i64 n, __VA_ARGS__, T grad_scale,       \
                                                        T clip, const int* skip,                \
                                                        const double* dev_scale) {              \
    if (skip != nullptr && *skip != 0) return;                                                  \
    const auto rule = RULE;                                                                     \
    gpugd::apply_range<T>(p, g, s0, s1, s2, n, gpugd::grid_start(), gpugd::grid_stride(),       \
                          gpugd::scale_of<T>(grad_scale, dev_scale), clip, rule);               \
  }                                                                                             \
  extern "C" __global__ void gpugd_optim_##NAME##_multi_##SFX(                                  \
      const i64* table, i64 ntensors, const i64* chunks, i64 nchunks, i64 chunk, __VA_ARGS__,   \
      T grad_scale, T clip, const int* skip, const double* dev_scale, double* chunk_stats) {    \
    if (skip != nullptr && *skip != 0) return;                                                  \
    const auto rule = RULE;                                                                     \
    const gpugd::PlainRange<T, decltype(rule)> range{                                           \
        rule, gpugd::scale_of<T>(grad_scale, dev_scale), clip};                                 \
    gpugd::apply_table(table, ntensors, chunks, nchunks, chunk, range, chunk_stats);            \
  }

// The rules with their scalar arguments, for an entry macro ENTRY(NAME, T, SFX, RULE, ARGS).
#define GPUGD_OPTIM_RULES(ENTRY, T, SFX)                                                         \
  ENTRY(sgd, T, SFX,                                                                            \
        (gpugd::SgdRule<T>{lr, wd, momentum, one_m_damp, nesterov, first, has_buf}), T lr,      \
        T wd, T momentum, T one_m_damp, int nesterov, int first, int has_buf)                   \
  ENTRY(adagrad, T, SFX, (gpugd::AdagradRule<T>{clr, wd, eps}), T clr, T wd, T eps)             \
  ENTRY(rmsprop, T, SFX,                                                                        \
        (gpugd::RmspropRule<T>{lr, alpha, one_m_alpha, eps, wd, momentum, centered, has_buf}),  \
        T lr, T alpha, T one_m_alpha, T eps, T wd, T momentum, int centered, int has_buf)       \
  ENTRY(adam, T, SFX,                                                                           \
        (gpugd::AdamRule<T>{beta1, one_m_beta1, beta2, one_m_beta2, eps, wd_c, decay_mul,       \
                            step_size, inv_bc2_sqrt, amsgrad}),                                 \
        T beta1, T one_m_beta1, T beta2, T one_m_beta2, T eps, T wd_c, T decay_mul,             \
        int amsgrad, T step_size, T inv_bc2_sqrt)                                               \
  ENTRY(nadam, T, SFX,                                                                          \
        (gpugd::NadamRule<T>{beta1, one_m_beta1, beta2, one_m_beta2, eps, wd_c, decay_mul, c_g, \
                             c_m, inv_bc2}),                                                    \
        T beta1, T one_m_beta1, T beta2, T one_m_beta2, T eps, T wd_c, T decay_mul, T c_g,      \
        T c_m, T inv_bc2)                                                                       \
  ENTRY(lion, T, SFX,                                                                           \
        (gpugd::LionRule<T>{lr, beta1, one_m_beta1, beta2, one_m_beta2, decay_mul}), T lr,      \
        T beta1, T one_m_beta1, T beta2, T one_m_beta2, T decay_mul)

GPUGD_OPTIM_RULES(GPUGD_OPTIM_ENTRIES, float, f32)
GPUGD_OPTIM_RULES(GPUGD_OPTIM_ENTRIES, double, f64)

// ---- mixed precision: `gpugd_optim_<rule>_multi_<policy>` over a tensor table, float math.
// policy = <param>p_<state>s[_master]; key/stochastic: the rounding of the parameters.
namespace gpugd {
template <typename PT, typename ST, bool M>
struct Policy {
  typedef PT P;
  typedef ST S;
  static constexpr bool master = M;
};
typedef Policy<f16_t, float, false> Policy_f16p_f32s;
typedef Policy<f16_t, float, true> Policy_f16p_f32s_master;
typedef Policy<f16_t, bf16_t, false> Policy_f16p_bf16s;
typedef Policy<f16_t, bf16_t, true> Policy_f16p_bf16s_master;
typedef Policy<bf16_t, float, false> Policy_bf16p_f32s;
typedef Policy<bf16_t, float, true> Policy_bf16p_f32s_master;
typedef Policy<bf16_t, bf16_t, false> Policy_bf16p_bf16s;
typedef Policy<bf16_t, bf16_t, true> Policy_bf16p_bf16s_master;
}  // namespace gpugd

#define GPUGD_OPTIM_MIXED(NAME, T, SFX, RULE, ...)                                               \
  extern "C" __global__ void gpugd_optim_##NAME##_multi_##SFX(                                  \
      const i64* table, i64 ntensors, const i64* chunks, i64 nchunks, i64 chunk, __VA_ARGS__,   \
      T grad_scale, T clip, unsigned key, int stochastic, const int* skip,                      \
      const double* dev_scale, double* chunk_stats) {                                           \
    if (skip != nullptr && *skip != 0) return;                                                  \
    const auto rule = RULE;                                                                     \
    typedef gpugd::Policy_##SFX Pol;                                                            \
    const gpugd::MixedRange<Pol::P, Pol::S, Pol::master, decltype(rule)> range{                 \
        rule, gpugd::scale_of<T>(grad_scale, dev_scale), clip,                                  \
        gpugd::Rounding{key, stochastic}};                                                      \
    gpugd::apply_table(table, ntensors, chunks, nchunks, chunk, range, chunk_stats);            \
  }

GPUGD_OPTIM_RULES(GPUGD_OPTIM_MIXED, float, f16p_f32s)
GPUGD_OPTIM_RULES(GPUGD_OPTIM_MIXED, float, f16p_f32s_master)
GPUGD_OPTIM_RULES(GPUGD_OPTIM_MIXED, float, f16p_bf16s)
GPUGD_OPTIM_RULES(GPUGD_OPTIM_MIXED, float, f16p_bf16s_master)
GPUGD_OPTIM_RULES(GPUGD_OPTIM_MIXED, float, bf16p_f32s)
GPUGD_OPTIM_RULES(GPUGD_OPTIM_MIXED, float, bf16p_f32s_master)
GPUGD_OPTIM_RULES(GPUGD_OPTIM_MIXED, float, bf16p_bf16s)
GPUGD_OPTIM_RULES(GPUGD_OPTIM_MIXED, float, bf16p_bf16s_master)

// ---- CUDA-graph-capturable Adam/AdamW: every step-dependent scalar in device memory -----
// gpugd_optim_adam_prepare (one thread) runs after the gradients' norm pass and before the
// update, all on the device: from the pass's totals (Σ g², non-finite count) and the step
// state it decides skip / go, advances the step count, computes the clip coefficient, the
// loss-scale update and per group the bias-corrected step sizes, and the stochastic-rounding
// key of this step. The same formulas, in the same order, as the eager host path
// (gpugd.optim.Optimizer.step, gpugd.ops.optim.adam_kernel, gpugd.ops.optim.rounding_key,
// gpugd.ops.reduce.clip_coefficient), so a replayed graph steps bit for bit as eager steps.
//   state: [0] step count t, [1] loss scale S, [2] growth tracker, [3] skipped steps (the
//          optimizer's), [4] unscaled global norm of this step, [5] clip coefficient,
//          [6] skipped steps (the scaler's)
//   hyper: per group (lr, β1, β2, wd_d), wd_d the decoupled weight decay (0 for Adam), in
//          device memory so a schedule can write lr between replays; scalars: per group 8
//          floats (step_size, 1/√bc2, grad_scale, key bits, lr, decay_mul = 1 − lr·wd_d,
//          2 unused)
namespace gpugd {
__device__ __forceinline__ u64 splitmix64(u64 z) {
  z = z * 0x9E3779B97F4A7C15ull + 0xD1B54A32D192ED03ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// torch's clip_grad_norm_ factor min(1, max_norm / (norm + 1e-6)), NaN for a NaN norm, 0 for
// an infinite one (gpugd.ops.reduce.clip_coefficient); max_norm <= 0: no clipping, 1.
__device__ __forceinline__ double clip_coefficient(double norm, double max_norm) {
  if (!(max_norm > 0.0)) return 1.0;
  const double c = max_norm / (norm + 1e-6);
  return (c < 1.0 || c != c) ? c : 1.0;
}
}  // namespace gpugd

// gpugd_optim_step_decide (one thread) runs between the gradients' norm pass and an eager
// step's update kernels, so that the host reads nothing back before the update (the optimizer
// copies `out` to the host asynchronously and reads it when asked: Optimizer.last_report):
//   norm = √Σg² · |grad_scale|, coef = clip_coefficient(norm, max_norm),
//   out = [√Σg² (as the pass gives it), coef, grad_scale · coef, non-finite count, outcome]
// outcome 0: update; 1: skipped for non-finite gradients (skip_nonfinite); 2: skipped by the
// caller's flag (skip_if, may be null). total may be null (no norm pass: a step with only a
// skip_if): then out[0] = 0 and coef = 1. skip[0] = outcome != 0 is the update kernels' skip
// flag. The formulas and their order are the host path's (gpugd.optim.Optimizer.step), so
// the update gets the same bits either way.
extern "C" __global__ void gpugd_optim_step_decide(const double* total, double grad_scale,
                                                   double max_norm, int skip_nonfinite,
                                                   const int* skip_if, double* out, int* skip) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const double raw = total != nullptr ? sqrt(total[0]) : 0.0;
  const double nonfinite = total != nullptr ? total[1] : 0.0;
  const double coef = total != nullptr ? gpugd::clip_coefficient(raw * fabs(grad_scale), max_norm)
                                       : 1.0;
  const int outcome = (skip_nonfinite && nonfinite > 0.0)     ? 1
                      : (skip_if != nullptr && *skip_if != 0) ? 2
                                                              : 0;
  out[0] = raw;
  out[1] = coef;
  out[2] = grad_scale * coef;
  out[3] = nonfinite;
  out[4] = outcome;
  skip[0] = outcome != 0;
}

extern "C" __global__ void gpugd_optim_adam_prepare(
    const double* total, double* state, int ngroups, const double* hyper, double max_norm,
    int skip_nonfinite, int use_scaler, double growth_factor, double backoff_factor,
    int growth_interval, u64 seed_base, float* scalars, int* skip) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const double scale = use_scaler ? state[1] : 1.0;
  const double inv_scale = 1.0 / scale;
  const bool found_inf = total != nullptr && total[1] > 0.0;
  if (found_inf && (use_scaler || skip_nonfinite)) {
    skip[0] = 1;
    state[3] += 1.0;
    if (use_scaler) {
      state[1] = scale * backoff_factor;
      state[2] = 0.0;
      state[6] += 1.0;
    }
    return;
  }
  skip[0] = 0;
  const double t = state[0] + 1.0;
  state[0] = t;
  double coef = 1.0;
  if (total != nullptr) {
    const double norm = sqrt(total[0]) * fabs(inv_scale);
    state[4] = norm;
    coef = gpugd::clip_coefficient(norm, max_norm);
  }
  state[5] = coef;
  const float grad_scale = static_cast<float>(inv_scale * coef);
  const unsigned key =
      static_cast<unsigned>(gpugd::splitmix64(seed_base + static_cast<u64>(t)) & 0xFFFFFFFFull);
  for (int g = 0; g < ngroups; ++g) {
    const double lr = hyper[4 * g], b1 = hyper[4 * g + 1], b2 = hyper[4 * g + 2];
    const double wd_d = hyper[4 * g + 3];
    scalars[8 * g] = static_cast<float>(lr / (1.0 - pow(b1, t)));
    scalars[8 * g + 1] = static_cast<float>(1.0 / sqrt(1.0 - pow(b2, t)));
    scalars[8 * g + 2] = grad_scale;
    scalars[8 * g + 3] = __uint_as_float(key);
    scalars[8 * g + 4] = static_cast<float>(lr);
    scalars[8 * g + 5] = static_cast<float>(1.0 - lr * wd_d);
  }
  if (use_scaler) {
    state[2] += 1.0;
    if (state[2] == static_cast<double>(growth_interval)) {
      state[1] = scale * growth_factor;
      state[2] = 0.0;
    }
  }
}

// The Adam update of one group over its tensor table with the scalars `dev` (8 floats, from
// gpugd_optim_adam_prepare) read on the device, the rest as the eager kernel takes them
// (wd_c: the coupled weight decay, 0 for AdamW); skip[0] != 0 returns before any access.
#define GPUGD_OPTIM_ADAM_GRAPH(SFX, RANGE)                                                      \
  extern "C" __global__ void gpugd_optim_adam_graph_##SFX(                                      \
      const i64* table, i64 ntensors, const i64* chunks, i64 nchunks, i64 chunk, float beta1,   \
      float one_m_beta1, float beta2, float one_m_beta2, float eps, float wd_c, float clip,     \
      int amsgrad, const float* dev, int stochastic, const int* skip) {                         \
    if (*skip != 0) return;                                                                     \
    const gpugd::AdamRule<float> rule{beta1, one_m_beta1, beta2,  one_m_beta2, eps,             \
                                      wd_c,  dev[5],      dev[0], dev[1],      amsgrad};        \
    const float grad_scale = dev[2];                                                            \
    const unsigned key = __float_as_uint(dev[3]);                                               \
    (void)key, (void)stochastic;                                                                \
    const auto range = RANGE;                                                                   \
    gpugd::apply_table(table, ntensors, chunks, nchunks, chunk, range, nullptr);                \
  }

GPUGD_OPTIM_ADAM_GRAPH(f32, (gpugd::PlainRange<float, decltype(rule)>{rule, grad_scale, clip}))
#define GPUGD_OPTIM_ADAM_GRAPH_MIXED(SFX)                                                       \
  GPUGD_OPTIM_ADAM_GRAPH(                                                                       \
      SFX, (gpugd::MixedRange<gpugd::Policy_##SFX::P, gpugd::Policy_##SFX::S,                   \
                              gpugd::Policy_##SFX::master, decltype(rule)>{                     \
               rule, grad_scale, clip, gpugd::Rounding{key, stochastic}}))
GPUGD_OPTIM_ADAM_GRAPH_MIXED(f16p_f32s)
GPUGD_OPTIM_ADAM_GRAPH_MIXED(f16p_f32s_master)
GPUGD_OPTIM_ADAM_GRAPH_MIXED(f16p_bf16s)
GPUGD_OPTIM_ADAM_GRAPH_MIXED(f16p_bf16s_master)
GPUGD_OPTIM_ADAM_GRAPH_MIXED(bf16p_f32s)
GPUGD_OPTIM_ADAM_GRAPH_MIXED(bf16p_f32s_master)
GPUGD_OPTIM_ADAM_GRAPH_MIXED(bf16p_bf16s)
GPUGD_OPTIM_ADAM_GRAPH_MIXED(bf16p_bf16s_master)
