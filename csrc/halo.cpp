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
//
// Files. This one: dtype dispatch, the loss head, instruction-set variants and the Python
// bindings. halo_kernels.inc: the element loops, compiled once per variant (see "The variants").

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

struct Sizes {
  int64_t B, C, F, HW, skip;
};

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

// One instruction-set variant of the kernels (halo_kernels.inc).
struct Kernels {
  const char* name;
  void (*forward)(uintptr_t pred, uintptr_t ref, uintptr_t target, uintptr_t mask, double* out_pred,
                  double* out_ref, Sizes s, double hand_weight, int dtype, int mask_dtype, int threads);
  void (*backward)(const double* grad_err, uintptr_t pred, uintptr_t target, uintptr_t mask,
                   uintptr_t grad, Sizes s, double hand_weight, int dtype, int mask_dtype, int threads);
};

// The variants. A portable build (the default `pip install`) targets baseline x86-64 (SSE2),
// where the bf16 loops vectorize poorly (kernels 3-5x slower than a native build, measured in
// benchmarks/NOTES.md); so it also compiles the kernels for AVX2 and AVX-512, and the best one
// the CPU runs is picked when the module loads (ipa.ops then matches torch's CPU capability).
// A native build (IPA_BUILD_NATIVE=1, `make install`) compiles one variant for this CPU: GCC
// cannot target less than the command line's -march in a region (its intrinsics are compiled
// for the global target), so variants there would all be native anyway.
// tests/ops/test_cpu_isas.py builds the portable extension and checks every variant this CPU runs.
#if defined(IPA_NATIVE)
#define IPA_ISA_NAME "native"
#else
#define IPA_ISA_NAME "baseline"
#endif
namespace isa_baseline {
#include "halo_kernels.inc"
}  // namespace isa_baseline
#undef IPA_ISA_NAME

#if !defined(IPA_NATIVE) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define IPA_MULTI_ISA 1
#define IPA_ISA_NAME "avx2"
namespace isa_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
#include "halo_kernels.inc"
#pragma GCC pop_options
}  // namespace isa_avx2
#undef IPA_ISA_NAME
#define IPA_ISA_NAME "avx512"
namespace isa_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt,prefer-vector-width=512")
#include "halo_kernels.inc"
#pragma GCC pop_options
}  // namespace isa_avx512
#undef IPA_ISA_NAME
#endif

// Variants this CPU can run, best first.
std::vector<const Kernels*> runnable_kernels() {
  std::vector<const Kernels*> out;
#if defined(IPA_MULTI_ISA)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi") &&
                    __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512) out.push_back(&isa_avx512::kKernels);
  if (avx2) out.push_back(&isa_avx2::kKernels);
#endif
  out.push_back(&isa_baseline::kKernels);
  return out;
}

const Kernels* g_kernels = nullptr;  // set when the module loads, then only by set_isa

const Kernels& active_kernels() { return *g_kernels; }

py::list isas() {
  py::list names;
  for (const Kernels* k : runnable_kernels()) names.append(k->name);
  return names;
}

void set_isa(const std::string& name) {
  std::string known;
  for (const Kernels* k : runnable_kernels()) {
    if (name == k->name) {
      g_kernels = k;
      return;
    }
    known += (known.empty() ? "" : ", ") + std::string(k->name);
  }
  throw std::invalid_argument("ipa._C.set_isa: '" + name +
                              "' is not a kernel variant this CPU runs; choose from: " + known);
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

void check_sizes(const Sizes& s) {
  if (s.B < 0 || s.C < 0 || s.F < 0 || s.HW < 0 || s.skip < 0 || s.skip > s.F)
    throw std::invalid_argument("ipa._C: invalid sizes");
}

void halo_forward(uintptr_t pred, uintptr_t ref, uintptr_t target, uintptr_t mask, uintptr_t out_pred,
                  uintptr_t out_ref, int64_t B, int64_t C, int64_t F, int64_t HW, int64_t skip,
                  double hand_weight, int dtype, int mask_dtype, int threads) {
  const Sizes s{B, C, F, HW, skip};
  check_sizes(s);
  active_kernels().forward(pred, ref, target, mask, reinterpret_cast<double*>(out_pred),
                           reinterpret_cast<double*>(out_ref), s, hand_weight, dtype,
                           mask ? mask_dtype : kFloat32, threads);
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

// The gradient is a fresh allocation, and a large one is fresh memory: glibc maps anything over
// 32 MB anew each time, and each 4 KB page then faults on its first write (measured: 45 ms of
// faults for a 148 MB buffer, 9x the cost of writing it). Asking for transparent huge pages on
// the buffer's 2 MB-aligned interior before the write takes 512x fewer faults where THP is in
// `madvise` mode (a common default; PyTorch's THP_MEM_ALLOC_ENABLE does the same for all its
// allocations). Best effort: a kernel without THP ignores it, and so do we.
constexpr int64_t kHugePagesAbove = int64_t(8) << 20;

void advise_huge_pages(uintptr_t p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t lo = (p + kHuge - 1) & ~(kHuge - 1), hi = (p + uintptr_t(bytes)) & ~(kHuge - 1);
  if (bytes > kHugePagesAbove && hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

int64_t dtype_bytes(int dtype) { return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2; }

void halo_backward(uintptr_t grad_err, uintptr_t pred, uintptr_t target, uintptr_t mask,
                   uintptr_t grad_pred, int64_t B, int64_t C, int64_t F, int64_t HW, int64_t skip,
                   double hand_weight, int dtype, int mask_dtype, int threads) {
  const Sizes s{B, C, F, HW, skip};
  check_sizes(s);
  advise_huge_pages(grad_pred, B * C * F * HW * dtype_bytes(dtype));
  active_kernels().backward(reinterpret_cast<const double*>(grad_err), pred, target, mask, grad_pred, s,
                            hand_weight, dtype, mask ? mask_dtype : kFloat32, threads);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ipa CPU kernels (HALO-weighted squared error and loss head, forward and backward).";
  g_kernels = runnable_kernels().front();
  m.def("isa", [] { return std::string(active_kernels().name); },
        "The instruction-set variant of the kernels in use (see isas).");
  m.def("isas", &isas, "Kernel variants this CPU runs, best first (the first is the default).");
  m.def("set_isa", &set_isa, py::arg("name"), "Use another kernel variant (one of isas()).");
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
