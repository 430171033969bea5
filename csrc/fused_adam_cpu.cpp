// Fused Adam/AdamW on the CPU: argument checks shared with the CUDA entry point, and the CPU kernel. The
// per-element step is fused_adam_element of fused_adam.cuh (the function the CUDA kernel calls); the tensors
// are cut into kCpuChunk-element chunks that at::parallel_for spreads over the threads, and each chunk's loop
// vectorizes (branch-free element code, cloned for AVX-512/AVX2 and picked at load time). Vectorizing needs
// -fno-trapping-math (the selects) and -fno-math-errno (sqrtf); setup.py and CMakeLists.txt pass the latter,
// whose pragma form GCC ignores for builtins. No FMA contraction (fp-contract=off): the vector body and the
// scalar remainder of a loop then round alike, so an element's result does not depend on where its chunk or
// shard starts (an FSDP2 shard steps exactly as the full tensor does).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif
#include "fused_adam.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <utility>
#include <vector>

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#pragma message("clipfast: fused_adam_cpu.cpp built without -fopenmp; its at::parallel_for loops run serially")
#endif

namespace clipfast {
namespace {

constexpr int64_t kCpuChunk = 16384;

int storage_code(at::ScalarType dt) {
  switch (dt) {
    case at::kFloat: return kAdamF32;
    case at::kHalf: return kAdamF16;
    case at::kBFloat16: return kAdamBF16;
    default: return -1;
  }
}

void check_like(const char* name, size_t i, const at::Tensor& t, const at::Tensor& p) {
  TORCH_CHECK(t.sizes() == p.sizes(), "fused_adam_fwd: ", name, "[", i, "] must have the shape of params[", i, "] ",
              p.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == p.device(), "fused_adam_fwd: ", name, "[", i, "] must be on ", p.device(),
              " (same as params), got ", t.device());
  TORCH_CHECK(t.is_contiguous(), "fused_adam_fwd: ", name, "[", i, "] must be contiguous");
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLIPFAST_ADAM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLIPFAST_ADAM_CLONES
#endif

template <int P, int S, bool kMaster, bool kSR>
CLIPFAST_ADAM_CLONES void adam_range(typename AdamStorage<P>::type* __restrict__ p,
                                     const typename AdamStorage<P>::type* __restrict__ g,
                                     typename AdamStorage<S>::type* __restrict__ m,
                                     typename AdamStorage<S>::type* __restrict__ v, float* __restrict__ master,
                                     int64_t begin, int64_t end, const AdamHyper hyper, const AdamTensorArgs args) {
  for (int64_t i = begin; i < end; ++i) fused_adam_element<P, S, kMaster, kSR>(p, g, m, v, master, i, hyper, args);
}

struct Chunk {
  int64_t tensor, begin, end;
};

template <int P, int S, bool kMaster, bool kSR>
void run(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
         at::TensorList masters, const std::vector<AdamTensorArgs>& args, const AdamHyper& hyper) {
  using PT = typename AdamStorage<P>::type;
  using ST = typename AdamStorage<S>::type;
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].numel();
    for (int64_t b = 0; b < n; b += kCpuChunk) chunks.push_back({(int64_t)i, b, std::min(n, b + kCpuChunk)});
  }
  at::parallel_for(0, (int64_t)chunks.size(), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const Chunk& k = chunks[c];
      const size_t i = (size_t)k.tensor;
      float* master = kMaster ? masters[i].mutable_data_ptr<float>() : nullptr;
      adam_range<P, S, kMaster, kSR>(static_cast<PT*>(params[i].mutable_data_ptr()),
                                     static_cast<const PT*>(grads[i].const_data_ptr()),
                                     static_cast<ST*>(exp_avgs[i].mutable_data_ptr()),
                                     static_cast<ST*>(exp_avg_sqs[i].mutable_data_ptr()), master, k.begin, k.end,
                                     hyper, args[i]);
    }
  });
}

template <int P, int S>
void run_flags(bool has_master, bool sr, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList exp_avg_sqs, at::TensorList masters, const std::vector<AdamTensorArgs>& args,
               const AdamHyper& hyper) {
  if constexpr (P == kAdamF32) {
    run<P, S, false, false>(params, grads, exp_avgs, exp_avg_sqs, masters, args, hyper);
  } else {
    if (has_master) {
      run<P, S, true, false>(params, grads, exp_avgs, exp_avg_sqs, masters, args, hyper);
    } else if (sr && P == kAdamBF16) {
      run<P, S, false, true>(params, grads, exp_avgs, exp_avg_sqs, masters, args, hyper);
    } else {
      run<P, S, false, false>(params, grads, exp_avgs, exp_avg_sqs, masters, args, hyper);
    }
  }
}

template <int P>
void run_state(int state_code, bool has_master, bool sr, at::TensorList params, at::TensorList grads,
               at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList masters,
               const std::vector<AdamTensorArgs>& args, const AdamHyper& hyper) {
  switch (state_code) {
    case kAdamF32: return run_flags<P, kAdamF32>(has_master, sr, params, grads, exp_avgs, exp_avg_sqs, masters, args, hyper);
    case kAdamF16: return run_flags<P, kAdamF16>(has_master, sr, params, grads, exp_avgs, exp_avg_sqs, masters, args, hyper);
    default: return run_flags<P, kAdamBF16>(has_master, sr, params, grads, exp_avgs, exp_avg_sqs, masters, args, hyper);
  }
}

}  // namespace

std::pair<int, int> check_fused_adam_args(const at::TensorList& params, const at::TensorList& grads,
                                          const at::TensorList& exp_avgs, const at::TensorList& exp_avg_sqs,
                                          const at::TensorList& masters, const at::Tensor& args) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n,
              "fused_adam_fwd: grads, exp_avgs and exp_avg_sqs must have one tensor per param (", n, "), got ",
              grads.size(), ", ", exp_avgs.size(), ", ", exp_avg_sqs.size());
  TORCH_CHECK(masters.empty() || masters.size() == n, "fused_adam_fwd: masters must be empty or have one tensor per param (",
              n, "), got ", masters.size());
  TORCH_CHECK(args.dim() == 2 && args.size(0) == (int64_t)n && args.size(1) == 7 && args.scalar_type() == at::kDouble &&
                  args.device().is_cpu() && args.is_contiguous(),
              "fused_adam_fwd: args must be a contiguous (", n, ", 7) float64 CPU tensor, got ", args.sizes(), " ",
              args.scalar_type(), " on ", args.device());
  if (n == 0) return {kAdamF32, kAdamF32};
  const at::Tensor& p0 = params[0];
  const int pcode = storage_code(p0.scalar_type());
  TORCH_CHECK(pcode >= 0, "fused_adam_fwd: params must be float32, float16 or bfloat16, got ", p0.scalar_type());
  const int scode = storage_code(exp_avgs[0].scalar_type());
  TORCH_CHECK(scode >= 0, "fused_adam_fwd: exp_avgs must be float32, float16 or bfloat16, got ", exp_avgs[0].scalar_type());
  TORCH_CHECK(masters.empty() || pcode != kAdamF32, "fused_adam_fwd: masters must be empty for float32 params");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.scalar_type() == p0.scalar_type(), "fused_adam_fwd: params[", i, "] must have dtype ", p0.scalar_type(),
                " (same as params[0]), got ", p.scalar_type());
    TORCH_CHECK(p.device() == p0.device(), "fused_adam_fwd: params[", i, "] must be on ", p0.device(),
                " (same as params[0]), got ", p.device());
    TORCH_CHECK(p.is_contiguous(), "fused_adam_fwd: params[", i, "] must be contiguous");
    TORCH_CHECK(p.numel() < (int64_t(1) << 31), "fused_adam_fwd: params[", i, "] has ", p.numel(),
                " elements; at most 2^31 - 1 are supported");
    check_like("grads", i, grads[i], p);
    TORCH_CHECK(grads[i].scalar_type() == p.scalar_type(), "fused_adam_fwd: grads[", i, "] must have dtype ",
                p.scalar_type(), " (same as params), got ", grads[i].scalar_type());
    check_like("exp_avgs", i, exp_avgs[i], p);
    check_like("exp_avg_sqs", i, exp_avg_sqs[i], p);
    for (const at::Tensor* s : {&exp_avgs[i], &exp_avg_sqs[i]}) {
      TORCH_CHECK(s->scalar_type() == exp_avgs[0].scalar_type(), "fused_adam_fwd: exp_avgs and exp_avg_sqs[", i,
                  "] must have dtype ", exp_avgs[0].scalar_type(), " (one state dtype), got ", s->scalar_type());
    }
    if (!masters.empty()) {
      check_like("masters", i, masters[i], p);
      TORCH_CHECK(masters[i].scalar_type() == at::kFloat, "fused_adam_fwd: masters[", i, "] must be float32, got ",
                  masters[i].scalar_type());
    }
  }
  return {pcode, scode};
}

std::vector<AdamTensorArgs> fused_adam_tensor_args(const at::Tensor& args) {
  const double* a = args.const_data_ptr<double>();
  std::vector<AdamTensorArgs> out((size_t)args.size(0));
  for (size_t i = 0; i < out.size(); ++i, a += 7) {
    out[i] = {(float)a[0], (float)a[1], (uint32_t)a[2], (float)a[3], (float)a[4], (float)a[5], (float)a[6]};
  }
  return out;
}

AdamHyper fused_adam_hyper(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled) {
  const float l2 = decoupled ? 0.0f : (float)weight_decay;
  const float decay = decoupled ? (float)(1.0 - lr * weight_decay) : 1.0f;
  return {(float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2), (float)eps, l2, decay};
}

void fused_adam_fwd_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList masters, const at::Tensor& args, double lr,
                        double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                        bool stochastic_rounding) {
  const auto [pcode, scode] = check_fused_adam_args(params, grads, exp_avgs, exp_avg_sqs, masters, args);
  if (params.empty()) return;
  TORCH_CHECK(params[0].device().is_cpu(), "fused_adam_fwd: params must be CPU tensors here, got ", params[0].device());
  const std::vector<AdamTensorArgs> targs = fused_adam_tensor_args(args);
  const AdamHyper hyper = fused_adam_hyper(lr, beta1, beta2, eps, weight_decay, decoupled);
  const bool has_master = !masters.empty();
  switch (pcode) {
    case kAdamF32:
      return run_state<kAdamF32>(scode, false, false, params, grads, exp_avgs, exp_avg_sqs, masters, targs, hyper);
    case kAdamF16:
      return run_state<kAdamF16>(scode, has_master, false, params, grads, exp_avgs, exp_avg_sqs, masters, targs, hyper);
    default:
      return run_state<kAdamBF16>(scode, has_master, stochastic_rounding, params, grads, exp_avgs, exp_avg_sqs, masters,
                                  targs, hyper);
  }
}

}  // namespace clipfast
