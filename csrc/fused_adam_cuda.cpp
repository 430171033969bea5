// Fused Adam/AdamW: the torch-side CUDA entry point (checks, pointer tables, stream) around the torch-free
// multi-tensor launcher of fused_adam.cu. Compiled only when the extension is built with CUDA.
#ifdef CLIPFAST_WITH_CUDA

#include "fused_adam.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

namespace clipfast {

void fused_adam_fwd_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_sqs, at::TensorList masters, const at::Tensor& args, double lr,
                         double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                         bool stochastic_rounding) {
  const auto [pcode, scode] = check_fused_adam_args(params, grads, exp_avgs, exp_avg_sqs, masters, args);
  if (params.empty()) return;
  TORCH_CHECK(params[0].is_cuda(), "fused_adam_fwd: params must be CUDA tensors here, got ", params[0].device());
  const c10::cuda::CUDAGuard guard(params[0].device());
  const size_t n = params.size();
  std::vector<void*> p(n), m(n), v(n);
  std::vector<const void*> g(n);
  std::vector<float*> master(masters.empty() ? 0 : n);
  std::vector<int64_t> numel(n);
  for (size_t i = 0; i < n; ++i) {
    p[i] = params[i].mutable_data_ptr();
    g[i] = grads[i].const_data_ptr();
    m[i] = exp_avgs[i].mutable_data_ptr();
    v[i] = exp_avg_sqs[i].mutable_data_ptr();
    if (!masters.empty()) master[i] = masters[i].mutable_data_ptr<float>();
    numel[i] = params[i].numel();
  }
  const std::vector<AdamTensorArgs> targs = fused_adam_tensor_args(args);
  const AdamHyper hyper = fused_adam_hyper(lr, beta1, beta2, eps, weight_decay, decoupled);
  const int err = fused_adam_cuda_launch(pcode, scode, !masters.empty(), stochastic_rounding, (int64_t)n, p.data(),
                                         g.data(), m.data(), v.data(), masters.empty() ? nullptr : master.data(),
                                         numel.data(), targs.data(), hyper, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "fused_adam_fwd: CUDA launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

}  // namespace clipfast

#endif  // CLIPFAST_WITH_CUDA
