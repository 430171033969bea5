// QuickGELU with fused bias on the CPU: argument checks shared with the CUDA entry points, and the
// CPU kernels. Per-element math comes from quick_gelu.cuh (the same functions the CUDA kernels call);
// rows are split across threads with at::parallel_for, inner loops over columns vectorize.
//
// Vectorizing the branchless exp of quick_gelu.cuh needs -fno-trapping-math (GCC otherwise keeps its
// selects as branches); the row loops are cloned for AVX-512/AVX2 and picked at load time (ifunc).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "quick_gelu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <vector>

#include "quick_gelu.cuh"

// With torch's OpenMP backend, at::parallel_for is a header-inlined `#pragma omp parallel`: it runs on one
// thread unless this file is compiled and linked with -fopenmp (the process then shares torch's libgomp).
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#pragma message("clipfast: quick_gelu_cpu.cpp built without -fopenmp; its at::parallel_for loops run serially")
#endif

namespace clipfast {

void check_quick_gelu_args(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                           const at::Tensor* grad, bool allow_f64) {
  const auto dt = x.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || (allow_f64 && dt == at::kDouble);
  TORCH_CHECK(ok, op, ": x must be float32, float16 or bfloat16", allow_f64 ? " (or float64)" : "",
              ", got ", dt);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have shape (..., N), got a 0-d tensor");
  const int64_t n = x.size(-1);
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == n, op, ": bias must have shape (", n, ",) to match x's last dim, got ",
                b.sizes());
    TORCH_CHECK(b.scalar_type() == dt, op, ": bias must have dtype ", dt, " (same as x), got ", b.scalar_type());
    TORCH_CHECK(b.device() == x.device(), op, ": bias must be on ", x.device(), " (same as x), got ", b.device());
  }
  if (grad != nullptr) {
    TORCH_CHECK(grad->sizes() == x.sizes(), op, ": grad must have x's shape ", x.sizes(), ", got ", grad->sizes());
    TORCH_CHECK(grad->scalar_type() == dt, op, ": grad must have dtype ", dt, " (same as x), got ",
                grad->scalar_type());
    TORCH_CHECK(grad->device() == x.device(), op, ": grad must be on ", x.device(), " (same as x), got ",
                grad->device());
  }
}

namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLIPFAST_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLIPFAST_CPU_CLONES
#endif

// Bias converted to the math type once (a pointer to it for fp32/fp64, a copy for fp16/bf16).
template <typename scalar_t, typename acc_t>
const acc_t* bias_as_acc(const std::optional<at::Tensor>& bias, const at::Tensor& contiguous_bias,
                         std::vector<acc_t>& storage) {
  if (!bias.has_value()) return nullptr;
  const scalar_t* b = contiguous_bias.const_data_ptr<scalar_t>();
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return b;
  } else {
    storage.resize(contiguous_bias.numel());
    for (size_t c = 0; c < storage.size(); ++c) storage[c] = static_cast<acc_t>(b[c]);
    return storage.data();
  }
}

template <typename scalar_t, typename acc_t>
CLIPFAST_CPU_CLONES void fwd_row(const scalar_t* __restrict__ x, const acc_t* __restrict__ b, scalar_t* __restrict__ y, int64_t n) {
  if (b != nullptr) {
    for (int64_t c = 0; c < n; ++c) y[c] = static_cast<scalar_t>(quick_gelu_forward<acc_t>(acc_t(x[c]) + b[c]));
  } else {
    for (int64_t c = 0; c < n; ++c) y[c] = static_cast<scalar_t>(quick_gelu_forward<acc_t>(acc_t(x[c])));
  }
}

// One row of the backward; adds dz into acc (the row block's bias-gradient partial) when given.
template <typename scalar_t, typename acc_t>
CLIPFAST_CPU_CLONES void bwd_row(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, const acc_t* __restrict__ b,
             scalar_t* __restrict__ gx, acc_t* __restrict__ acc, int64_t n) {
  if (acc != nullptr) {
    for (int64_t c = 0; c < n; ++c) {
      const acc_t dz = quick_gelu_backward<acc_t>(acc_t(g[c]), acc_t(x[c]) + b[c]);
      gx[c] = static_cast<scalar_t>(dz);
      acc[c] += dz;
    }
  } else if (b != nullptr) {
    for (int64_t c = 0; c < n; ++c) gx[c] = static_cast<scalar_t>(quick_gelu_backward<acc_t>(acc_t(g[c]), acc_t(x[c]) + b[c]));
  } else {
    for (int64_t c = 0; c < n; ++c) gx[c] = static_cast<scalar_t>(quick_gelu_backward<acc_t>(acc_t(g[c]), acc_t(x[c])));
  }
}

}  // namespace

at::Tensor quick_gelu_fwd_cpu(const at::Tensor& x, const std::optional<at::Tensor>& bias) {
  check_quick_gelu_args("quick_gelu_fwd", x, bias, nullptr, /*allow_f64=*/true);
  TORCH_CHECK(x.device().is_cpu(), "quick_gelu_fwd: x must be a CPU tensor here, got ", x.device());
  const at::Tensor xc = x.contiguous();  // no copy when x is already contiguous
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty(x.sizes(), x.options());
  const int64_t n = x.size(-1);
  const int64_t rows = n == 0 ? 0 : x.numel() / n;
  if (rows == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quick_gelu_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> bias_storage;
    const acc_t* b = bias_as_acc<scalar_t, acc_t>(bias, bc, bias_storage);
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / n);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) fwd_row<scalar_t, acc_t>(xp + r * n, b, yp + r * n, n);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> quick_gelu_bwd_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                      const std::optional<at::Tensor>& bias) {
  check_quick_gelu_args("quick_gelu_bwd", x, bias, &grad, /*allow_f64=*/true);
  TORCH_CHECK(x.device().is_cpu(), "quick_gelu_bwd: x must be a CPU tensor here, got ", x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  const int64_t n = x.size(-1);
  const int64_t rows = n == 0 ? 0 : x.numel() / n;
  at::Tensor grad_bias = at::empty({bias.has_value() ? n : 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quick_gelu_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> bias_storage;
    const acc_t* b = bias_as_acc<scalar_t, acc_t>(bias, bc, bias_storage);
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    // Bias gradient: one partial row per block of consecutive rows, summed in block order below.
    const int64_t per = quick_gelu_rows_per_block(rows);
    const int64_t blocks = rows == 0 ? 0 : quick_gelu_row_blocks(rows);
    std::vector<acc_t> partial(b != nullptr ? blocks * n : 0, acc_t(0));
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        acc_t* acc = b != nullptr ? partial.data() + blk * n : nullptr;
        for (int64_t r = blk * per; r < std::min(rows, (blk + 1) * per); ++r)
          bwd_row<scalar_t, acc_t>(gp + r * n, xp + r * n, b, gxp + r * n, acc, n);
      }
    });
    if (b != nullptr) {
      std::vector<acc_t> total(n, acc_t(0));
      for (int64_t blk = 0; blk < blocks; ++blk)
        for (int64_t c = 0; c < n; ++c) total[c] += partial[blk * n + c];
      scalar_t* gbp = grad_bias.mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < n; ++c) gbp[c] = static_cast<scalar_t>(total[c]);
    }
  });
  return {grad_x, grad_bias};
}

}  // namespace clipfast
