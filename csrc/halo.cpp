// HALO-weighted squared error on CPU tensors: the forward and backward of `ipa.ops.halo_error`.
//
// No torch headers: Python hands us raw data pointers, sizes and dtype codes (see
// ipa/ops/_backends.py), so this extension does not depend on the torch ABI.
//
// Layout. pred, ref, target are contiguous [B, C, F, HW]; the optional hand mask is contiguous
// [B, F - skip, HW] and broadcast over C. A "plane" is one (b, c, f) slice of HW elements; each
// plane reads at most one mask plane, so the inner loops are plain unit-stride streams that the
// compiler vectorizes (`omp simd`), and OpenMP splits planes over the cores.
//
// Math. With N = C * F * HW and the HALO weight
//     w[b, c, f, i] = 1                                          for f <  skip
//                   = 1 + (lambda - 1) * clamp(mask[b, f - skip, i], 0, 1)   for f >= skip,
// the forward is     err[b] = (1 / N) * sum_{c, f, i} w * (pred - target)^2
// and its gradient   d err[b] / d pred[b, c, f, i] = (2 / N) * w * (pred - target),
// so given the upstream g[b] = dL / d err[b] the backward writes, in one pass,
//     grad_pred = (2 g[b] / N) * w * (pred - target)        (in pred's dtype).
// clamp is written as two compares so that a NaN in the mask stays NaN (never a silent 0 or 1).
//
// `halo_loss_forward` also evaluates the per-sample loss head on the B errors (IPA or SFT, see
// ipa/ops/halo_loss.py) in the same call: on CPU the head as ~15 tiny torch ops cost 4x the
// dispatch of the whole rest of the op.
//
// Accumulation is fp32 for fp16/bf16/fp32 inputs (fp64 for fp64 inputs), in chunks of kChunk
// elements folded into a double, then planes are summed per sample in a fixed order, so results
// are deterministic whatever the thread count.

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace py = pybind11;

namespace {

// Dtype codes shared with ipa/ops/_backends.py (_CPP_DTYPE_CODES).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3, kUInt8 = 4 };

constexpr int64_t kChunk = 2048;

// bf16 travels as its raw bits; conversions are bit casts the vectorizer understands (a struct
// wrapper with memcpy kept GCC from vectorizing the backward loop).
using bf16 = uint16_t;
using f16 = _Float16;

// Loads convert to the accumulation type; stores round from it (round-to-nearest-even for bf16,
// NaN kept quiet, matching torch's conversion).
template <typename A> inline A load(const float* p, int64_t i) { return A(p[i]); }
template <typename A> inline A load(const double* p, int64_t i) { return A(p[i]); }
template <typename A> inline A load(const f16* p, int64_t i) { return A(float(p[i])); }
template <typename A> inline A load(const uint8_t* p, int64_t i) { return A(p[i]); }
template <typename A> inline A load(const bf16* p, int64_t i) {
  return A(__builtin_bit_cast(float, uint32_t(p[i]) << 16));
}

template <typename A> inline void store(float* p, int64_t i, A v) { p[i] = float(v); }
template <typename A> inline void store(double* p, int64_t i, A v) { p[i] = double(v); }
template <typename A> inline void store(f16* p, int64_t i, A v) { p[i] = f16(float(v)); }
template <typename A> inline void store(bf16* p, int64_t i, A v) {
  const uint32_t u = __builtin_bit_cast(uint32_t, float(v));
  const uint32_t nan = (u >> 16) | 0x40u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  p[i] = bf16(((u & 0x7fffffffu) > 0x7f800000u) ? nan : rounded);
}

template <typename A> inline A clamp01(A v) { return v < A(0) ? A(0) : (v > A(1) ? A(1) : v); }

// clamp(mask, 0, 1) in A. For a uint8 (or bool) mask that is "nonzero", written as a compare:
// GCC turns clamp01 of a converted byte into a branch and then vectorizes nothing (measured:
// 4-5x slower kernels with a bool mask than with a bf16 one, benchmarks/NOTES.md).
template <typename A, typename M> inline A mask01(const M* m, int64_t i) { return clamp01(load<A>(m, i)); }
template <typename A> inline A mask01(const uint8_t* m, int64_t i) { return A(int32_t(m[i] != 0)); }

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

struct Sizes {
  int64_t B, C, F, HW, skip;
};

// Sum over one plane of w * (p - t)^2 (and of w * (r - t)^2 when HAS_REF).
template <bool HAS_REF, bool HAS_MASK, typename T, typename M, typename A = typename AccOf<T>::type>
inline void plane_sums(const T* p, const T* r, const T* t, const M* m, A lam1, int64_t n,
                       double* out_p, double* out_r) {
  double total_p = 0.0, total_r = 0.0;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = (i0 + kChunk < n) ? i0 + kChunk : n;
    A sp = 0, sr = 0;
#pragma omp simd reduction(+ : sp, sr)
    for (int64_t i = i0; i < i1; ++i) {
      const A tv = load<A>(t, i);
      A w = A(1);
      if constexpr (HAS_MASK) w = A(1) + lam1 * mask01<A>(m, i);
      const A dp = load<A>(p, i) - tv;
      sp += w * dp * dp;
      if constexpr (HAS_REF) {
        const A dr = load<A>(r, i) - tv;
        sr += w * dr * dr;
      }
    }
    total_p += double(sp);
    total_r += double(sr);
  }
  *out_p = total_p;
  if (HAS_REF) *out_r = total_r;
}

template <typename T, typename M>
void forward_impl(const T* pred, const T* ref, const T* target, const M* mask, double* out_pred,
                  double* out_ref, Sizes s, double hand_weight, int threads) {
  using A = typename AccOf<T>::type;
  const int64_t planes = s.B * s.C * s.F;
  const int64_t mask_frames = s.F - s.skip;
  const A lam1 = A(hand_weight - 1.0);
  std::vector<double> part_pred(planes), part_ref(ref ? planes : 0);

#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const int64_t b = pl / (s.C * s.F);
    const int64_t f = pl % s.F;
    const int64_t off = pl * s.HW;
    const M* m = (mask && f >= s.skip) ? mask + (b * mask_frames + (f - s.skip)) * s.HW : nullptr;
    const T* r = ref ? ref + off : nullptr;
    double* pr = ref ? &part_ref[pl] : nullptr;
    if (m && r) plane_sums<true, true>(pred + off, r, target + off, m, lam1, s.HW, &part_pred[pl], pr);
    else if (m) plane_sums<false, true>(pred + off, r, target + off, m, lam1, s.HW, &part_pred[pl], pr);
    else if (r) plane_sums<true, false>(pred + off, r, target + off, m, lam1, s.HW, &part_pred[pl], pr);
    else plane_sums<false, false>(pred + off, r, target + off, m, lam1, s.HW, &part_pred[pl], pr);
  }

  const int64_t per_sample = s.C * s.F;
  const double inv_n = 1.0 / double(per_sample * s.HW);
  for (int64_t b = 0; b < s.B; ++b) {
    double sp = 0.0, sr = 0.0;
    for (int64_t k = 0; k < per_sample; ++k) {
      sp += part_pred[b * per_sample + k];
      if (ref) sr += part_ref[b * per_sample + k];
    }
    out_pred[b] = sp * inv_n;
    if (ref) out_ref[b] = sr * inv_n;
  }
}

// grad[i] for i in [i0, i1), written to out[i - out_off].
template <bool HAS_MASK, typename T, typename M, typename A>
inline void grad_span(const T* p, const T* t, const M* m, A scale, A lam1, int64_t i0, int64_t i1,
                      T* out, int64_t out_off) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    A w = A(1);
    if constexpr (HAS_MASK) w = A(1) + lam1 * mask01<A>(m, i);
    store<A>(out, i - out_off, scale * w * (load<A>(p, i) - load<A>(t, i)));
  }
}

// Where the gradient goes. The model's backward reads it right after this kernel, so a gradient
// that fits in the last-level cache is stored normally and read back from there. A larger one
// would evict everything on its way out anyway: it is streamed past the caches with
// non-temporal stores, which also skips the read-for-ownership a plain store does on every line.
// Blocks of kStreamBytes are computed into an aligned scratch buffer (vectorized as above) and
// written with 16-byte non-temporal stores (SSE2: every x86-64 CPU). kStreamAbove is a server
// LLC slice (measured, benchmarks/NOTES.md: below it plain stores were 7-20% faster with the
// gradient read afterwards; at 37 MB streaming was even or ahead).
constexpr int64_t kStreamAbove = int64_t(32) << 20;
constexpr int64_t kStreamBytes = 256;

template <bool HAS_MASK, typename T, typename M, typename A = typename AccOf<T>::type>
inline void plane_grad(const T* p, const T* t, const M* m, A scale, A lam1, int64_t n, T* g,
                       bool stream) {
#if defined(__SSE2__)
  constexpr int64_t block = kStreamBytes / int64_t(sizeof(T));
  const uintptr_t addr = reinterpret_cast<uintptr_t>(g);
  if (stream && addr % sizeof(T) == 0 && n >= 2 * block) {
    const int64_t head = std::min<int64_t>(n, int64_t((16 - addr % 16) % 16) / int64_t(sizeof(T)));
    grad_span<HAS_MASK>(p, t, m, scale, lam1, 0, head, g, 0);
    alignas(64) T buf[block];
    int64_t i = head;
    for (; i + block <= n; i += block) {
      grad_span<HAS_MASK>(p, t, m, scale, lam1, i, i + block, buf, i);
      for (int64_t k = 0; k < kStreamBytes / 16; ++k)
        _mm_stream_si128(reinterpret_cast<__m128i*>(g + i) + k,
                         _mm_load_si128(reinterpret_cast<const __m128i*>(buf) + k));
    }
    grad_span<HAS_MASK>(p, t, m, scale, lam1, i, n, g, 0);
    return;
  }
#endif
  grad_span<HAS_MASK>(p, t, m, scale, lam1, 0, n, g, 0);
}

template <typename T, typename M>
void backward_impl(const double* grad_err, const T* pred, const T* target, const M* mask,
                   T* grad_pred, Sizes s, double hand_weight, int threads) {
  using A = typename AccOf<T>::type;
  const int64_t planes = s.B * s.C * s.F;
  const int64_t mask_frames = s.F - s.skip;
  const A lam1 = A(hand_weight - 1.0);
  const double two_over_n = 2.0 / double(s.C * s.F * s.HW);
  const bool stream = planes * s.HW * int64_t(sizeof(T)) > kStreamAbove;

#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl) {
      const int64_t b = pl / (s.C * s.F);
      const int64_t f = pl % s.F;
      const int64_t off = pl * s.HW;
      const A scale = A(grad_err[b] * two_over_n);
      const M* m = (mask && f >= s.skip) ? mask + (b * mask_frames + (f - s.skip)) * s.HW : nullptr;
      if (m) plane_grad<true>(pred + off, target + off, m, scale, lam1, s.HW, grad_pred + off, stream);
      else plane_grad<false>(pred + off, target + off, m, scale, lam1, s.HW, grad_pred + off, stream);
    }
#if defined(__SSE2__)
    if (stream) _mm_sfence();  // each thread: order its streamed stores before the closing barrier
#endif
  }
}

// The loss head, in double, on err[b] (and err_ref[b], t[b] for IPA); outputs in O (the
// accumulation dtype the Python side reports: float, or double for double inputs).
//   IPA: c_b = beta/2 (1 - t_b)^2, logit_b = c_b (err_ref_b - err_b),
//        L = mean_b softplus(-logit_b)  (= -log sigmoid(logit_b)),
//        coef_b = dL / d err_b = c_b sigmoid(-logit_b) / B,
//        stats = [mean gap, mean err, mean err_ref, mean(gap > 0), mean logit].
//   SFT: L = mean_b err_b, coef_b = 1 / B, stats = [L].
// The errors are first rounded to O, the dtype `halo_error` returns, so a reference error stored
// from `halo_error` gives the same gap as the online one (step 0: exactly log 2 either way).
// softplus and sigmoid in their overflow-free forms; a NaN error propagates to L and coef.
enum Objective : int { kIPA = 0, kSFT = 1 };

inline double softplus_neg(double x) {  // softplus(-x) = max(-x, 0) + log1p(exp(-|x|))
  return std::isnan(x) ? x : std::max(-x, 0.0) + std::log1p(std::exp(-std::fabs(x)));
}

inline double sigmoid_neg(double x) {  // sigmoid(-x) = 1 / (1 + exp(x))
  if (x >= 0) {
    const double e = std::exp(-x);
    return e / (1.0 + e);
  }
  return 1.0 / (1.0 + std::exp(x));
}

template <typename O>
void loss_head(int objective, const double* err, const double* err_ref, const double* t, double beta,
               int64_t B, O* out_loss, O* out_stats, O* out_coef) {
  const double inv_b = 1.0 / double(B);
  auto rounded = [](double v) { return double(O(v)); };
  if (objective == kSFT) {
    double sum = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      sum += rounded(err[b]);
      out_coef[b] = O(inv_b);
    }
    *out_loss = O(sum * inv_b);
    out_stats[0] = O(sum * inv_b);
    return;
  }
  double loss = 0, gap = 0, e = 0, e_ref = 0, wins = 0, logit = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double c = beta / 2 * (1 - t[b]) * (1 - t[b]);
    const double eb = rounded(err[b]), eb_ref = rounded(err_ref[b]);
    const double g = eb_ref - eb;
    const double z = c * g;
    loss += softplus_neg(z);
    out_coef[b] = O(c * sigmoid_neg(z) * inv_b);
    gap += g;
    e += eb;
    e_ref += eb_ref;
    wins += g > 0 ? 1.0 : 0.0;
    logit += z;
  }
  *out_loss = O(loss * inv_b);
  const double stats[5] = {gap, e, e_ref, wins, logit};
  for (int k = 0; k < 5; ++k) out_stats[k] = O(stats[k] * inv_b);
}

// Turn (dtype code, mask dtype code) into concrete pointer types and call `fn`.
template <typename Fn>
void dispatch(int dtype, int mask_dtype, Fn&& fn) {
  auto with_mask = [&](auto tag) {
    using T = decltype(tag);
    switch (mask_dtype) {
      case kFloat32: return fn(T{}, float{});
      case kFloat16: return fn(T{}, f16{});
      case kBFloat16: return fn(T{}, bf16{});
      case kFloat64: return fn(T{}, double{});
      case kUInt8: return fn(T{}, uint8_t{});
      default: throw std::invalid_argument("ipa._C: unsupported mask dtype code " + std::to_string(mask_dtype));
    }
  };
  switch (dtype) {
    case kFloat32: return with_mask(float{});
    case kFloat16: return with_mask(f16{});
    case kBFloat16: return with_mask(bf16{});
    case kFloat64: return with_mask(double{});
    default: throw std::invalid_argument("ipa._C: unsupported dtype code " + std::to_string(dtype));
  }
}

void check_sizes(const Sizes& s) {
  if (s.B < 0 || s.C < 0 || s.F < 0 || s.HW < 0 || s.skip < 0 || s.skip > s.F)
    throw std::invalid_argument("ipa._C: invalid sizes");
}

void halo_forward(uintptr_t pred, uintptr_t ref, uintptr_t target, uintptr_t mask, uintptr_t out_pred,
                  uintptr_t out_ref, int64_t B, int64_t C, int64_t F, int64_t HW, int64_t skip,
                  double hand_weight, int dtype, int mask_dtype, int threads) {
  const Sizes s{B, C, F, HW, skip};
  check_sizes(s);
  dispatch(dtype, mask ? mask_dtype : kFloat32, [&](auto t, auto m) {
    using T = decltype(t);
    using M = decltype(m);
    forward_impl<T, M>(reinterpret_cast<const T*>(pred), reinterpret_cast<const T*>(ref),
                       reinterpret_cast<const T*>(target), reinterpret_cast<const M*>(mask),
                       reinterpret_cast<double*>(out_pred), reinterpret_cast<double*>(out_ref), s,
                       hand_weight, threads);
  });
}

// Errors and loss head in one call. `ref` (0: none) gives err_ref in the same pass; otherwise
// IPA reads the precomputed `ref_err` (double [B]). `t`: double [B] timesteps (IPA).
void halo_loss_forward(uintptr_t pred, uintptr_t ref, uintptr_t target, uintptr_t mask, uintptr_t t,
                       uintptr_t ref_err, uintptr_t out_loss, uintptr_t out_stats, uintptr_t out_coef,
                       int64_t B, int64_t C, int64_t F, int64_t HW, int64_t skip, double hand_weight,
                       double beta, int objective, int dtype, int mask_dtype, int out_dtype, int threads) {
  if (objective != kIPA && objective != kSFT)
    throw std::invalid_argument("ipa._C: unknown objective code " + std::to_string(objective));
  if (objective == kIPA && (!t || (!ref && !ref_err)))
    throw std::invalid_argument("ipa._C: the IPA head needs timesteps and a reference");
  std::vector<double> err(B), err_ref(B);
  halo_forward(pred, ref, target, mask, reinterpret_cast<uintptr_t>(err.data()),
               reinterpret_cast<uintptr_t>(err_ref.data()), B, C, F, HW, skip, hand_weight, dtype,
               mask_dtype, threads);
  const double* e_ref = ref ? err_ref.data() : reinterpret_cast<const double*>(ref_err);
  const double* ts = reinterpret_cast<const double*>(t);
  if (out_dtype == kFloat32)
    loss_head(objective, err.data(), e_ref, ts, beta, B, reinterpret_cast<float*>(out_loss),
              reinterpret_cast<float*>(out_stats), reinterpret_cast<float*>(out_coef));
  else if (out_dtype == kFloat64)
    loss_head(objective, err.data(), e_ref, ts, beta, B, reinterpret_cast<double*>(out_loss),
              reinterpret_cast<double*>(out_stats), reinterpret_cast<double*>(out_coef));
  else
    throw std::invalid_argument("ipa._C: unsupported output dtype code " + std::to_string(out_dtype));
}

void halo_backward(uintptr_t grad_err, uintptr_t pred, uintptr_t target, uintptr_t mask,
                   uintptr_t grad_pred, int64_t B, int64_t C, int64_t F, int64_t HW, int64_t skip,
                   double hand_weight, int dtype, int mask_dtype, int threads) {
  const Sizes s{B, C, F, HW, skip};
  check_sizes(s);
  dispatch(dtype, mask ? mask_dtype : kFloat32, [&](auto t, auto m) {
    using T = decltype(t);
    using M = decltype(m);
    backward_impl<T, M>(reinterpret_cast<const double*>(grad_err), reinterpret_cast<const T*>(pred),
                        reinterpret_cast<const T*>(target), reinterpret_cast<const M*>(mask),
                        reinterpret_cast<T*>(grad_pred), s, hand_weight, threads);
  });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ipa CPU kernels (HALO-weighted squared error and loss head, forward and backward).";
  m.def("halo_forward", &halo_forward, py::call_guard<py::gil_scoped_release>(),
        "Per-sample HALO errors of pred (and ref) against target, written as float64 [B].",
        py::arg("pred"), py::arg("ref"), py::arg("target"), py::arg("mask"), py::arg("out_pred"),
        py::arg("out_ref"), py::arg("B"), py::arg("C"), py::arg("F"), py::arg("HW"),
        py::arg("skip"), py::arg("hand_weight"), py::arg("dtype"), py::arg("mask_dtype"),
        py::arg("threads"));
  m.def("halo_loss_forward", &halo_loss_forward, py::call_guard<py::gil_scoped_release>(),
        "HALO errors and the IPA/SFT loss head: loss, stats and dL/derr written in out_dtype.",
        py::arg("pred"), py::arg("ref"), py::arg("target"), py::arg("mask"), py::arg("t"),
        py::arg("ref_err"), py::arg("out_loss"), py::arg("out_stats"), py::arg("out_coef"),
        py::arg("B"), py::arg("C"), py::arg("F"), py::arg("HW"), py::arg("skip"),
        py::arg("hand_weight"), py::arg("beta"), py::arg("objective"), py::arg("dtype"),
        py::arg("mask_dtype"), py::arg("out_dtype"), py::arg("threads"));
  m.def("halo_backward", &halo_backward, py::call_guard<py::gil_scoped_release>(),
        "Gradient of the HALO error with respect to pred, written in pred's dtype.",
        py::arg("grad_err"), py::arg("pred"), py::arg("target"), py::arg("mask"),
        py::arg("grad_pred"), py::arg("B"), py::arg("C"), py::arg("F"), py::arg("HW"),
        py::arg("skip"), py::arg("hand_weight"), py::arg("dtype"), py::arg("mask_dtype"),
        py::arg("threads"));
}
