// Torch-level entry points of the fused_adam op (registered in bindings.cpp as clipfast::fused_adam_fwd).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "fused_adam.cuh"

namespace clipfast {

// Checks the tensor lists of one call and returns the (param, state) storage codes. Errors name the op
// and the argument: same lengths; params fp32/fp16/bf16, one dtype, contiguous, one device; grads, exp_avgs,
// exp_avg_sqs shaped like their params, contiguous, on that device, grads in the params' dtype, states in
// one fp32/fp16/bf16 dtype; masters empty or one fp32 tensor per (fp16/bf16) param; args (n, 7) float64 CPU.
std::pair<int, int> check_fused_adam_args(const at::TensorList& params, const at::TensorList& grads,
                                          const at::TensorList& exp_avgs, const at::TensorList& exp_avg_sqs,
                                          const at::TensorList& masters, const at::Tensor& args);

// Per-tensor args from the (n, 7) float64 table: step_size, bc2_sqrt, key, m_decode, m_encode, v_decode, v_encode.
std::vector<AdamTensorArgs> fused_adam_tensor_args(const at::Tensor& args);

AdamHyper fused_adam_hyper(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled);

// One Adam/AdamW step over every tensor, in place (params, exp_avgs, exp_avg_sqs, masters).
void fused_adam_fwd_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList masters, const at::Tensor& args, double lr,
                        double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                        bool stochastic_rounding);

#ifdef CLIPFAST_WITH_CUDA
void fused_adam_fwd_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_sqs, at::TensorList masters, const at::Tensor& args, double lr,
                         double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                         bool stochastic_rounding);
#endif

}  // namespace clipfast
