// QuickGELU with fused bias: torch-side CUDA entry points (checks, allocation, stream) around the
// torch-free launchers of quick_gelu.cu. Compiled only when the extension is built with CUDA.
#ifdef CLIPFAST_WITH_CUDA

#include "quick_gelu.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include "quick_gelu.cuh"

namespace clipfast {
namespace {

int dtype_code(at::ScalarType dt) {
  return dt == at::kFloat ? kQuickGeluF32 : (dt == at::kHalf ? kQuickGeluF16 : kQuickGeluBF16);
}

void check_launch(const char* op, int err) {
  TORCH_CHECK(err == 0, op, ": CUDA launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

}  // namespace

at::Tensor quick_gelu_fwd_cuda(const at::Tensor& x, const std::optional<at::Tensor>& bias) {
  check_quick_gelu_args("quick_gelu_fwd", x, bias, nullptr, /*allow_f64=*/false);
  TORCH_CHECK(x.is_cuda(), "quick_gelu_fwd: x must be a CUDA tensor here, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty(x.sizes(), x.options());
  const int64_t n = x.size(-1);
  const int64_t rows = n == 0 ? 0 : x.numel() / n;
  check_launch("quick_gelu_fwd",
               quick_gelu_fwd_cuda_launch(xc.const_data_ptr(), bias.has_value() ? bc.const_data_ptr() : nullptr,
                                          y.mutable_data_ptr(), rows, n, dtype_code(x.scalar_type()),
                                          c10::cuda::getCurrentCUDAStream().stream()));
  return y;
}

std::tuple<at::Tensor, at::Tensor> quick_gelu_bwd_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                       const std::optional<at::Tensor>& bias) {
  check_quick_gelu_args("quick_gelu_bwd", x, bias, &grad, /*allow_f64=*/false);
  TORCH_CHECK(x.is_cuda(), "quick_gelu_bwd: x must be a CUDA tensor here, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  const int64_t n = x.size(-1);
  const int64_t rows = n == 0 ? 0 : x.numel() / n;
  at::Tensor grad_bias = at::empty({bias.has_value() ? n : 0}, x.options());
  at::Tensor partial;  // (row_blocks, n) fp32 bias-gradient partial sums
  if (bias.has_value()) partial = at::empty({rows == 0 ? 0 : quick_gelu_row_blocks(rows), n}, x.options().dtype(at::kFloat));
  check_launch("quick_gelu_bwd",
               quick_gelu_bwd_cuda_launch(gc.const_data_ptr(), xc.const_data_ptr(),
                                          bias.has_value() ? bc.const_data_ptr() : nullptr, grad_x.mutable_data_ptr(),
                                          bias.has_value() ? grad_bias.mutable_data_ptr() : nullptr,
                                          bias.has_value() ? partial.mutable_data_ptr<float>() : nullptr, rows, n,
                                          dtype_code(x.scalar_type()), c10::cuda::getCurrentCUDAStream().stream()));
  return {grad_x, grad_bias};
}

}  // namespace clipfast

#endif  // CLIPFAST_WITH_CUDA
