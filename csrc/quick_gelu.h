// Torch-level entry points of the quick_gelu op (registered in bindings.cpp as
// clipfast::quick_gelu_fwd / clipfast::quick_gelu_bwd).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace clipfast {

// Checks x (..., N) floating, bias (N,) or none, grad shaped like x; same dtype and device for all.
// Errors name the op and the argument. allow_f64: float64 is accepted (CPU only).
void check_quick_gelu_args(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                           const at::Tensor* grad, bool allow_f64);

// y = q(x + bias): (..., N) contiguous, x.dtype.
at::Tensor quick_gelu_fwd_cpu(const at::Tensor& x, const std::optional<at::Tensor>& bias);
// (grad_x (..., N) contiguous, grad_bias (N,) or (0,) without bias), in x.dtype.
std::tuple<at::Tensor, at::Tensor> quick_gelu_bwd_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                      const std::optional<at::Tensor>& bias);

#ifdef CLIPFAST_WITH_CUDA
at::Tensor quick_gelu_fwd_cuda(const at::Tensor& x, const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor> quick_gelu_bwd_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                       const std::optional<at::Tensor>& bias);
#endif

}  // namespace clipfast
