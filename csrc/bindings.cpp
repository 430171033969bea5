// The one bindings file of clipfast._C: op schemas (torch.ops.clipfast.*), their CPU and CUDA
// implementations, and the (empty) Python module whose import registers them.
#include <Python.h>
#include <torch/library.h>

#include "fused_adam.h"
#include "quick_gelu.h"

TORCH_LIBRARY_FRAGMENT(clipfast, m) {
  // y = q(x + bias), q(z) = z * sigmoid(1.702 z); x (..., N), bias (N,) or None; y contiguous.
  m.def("quick_gelu_fwd(Tensor x, Tensor? bias) -> Tensor");
  // (grad_x, grad_bias); grad_bias is (N,), or (0,) when bias is None.
  m.def("quick_gelu_bwd(Tensor grad, Tensor x, Tensor? bias) -> (Tensor, Tensor)");
  // One Adam (decoupled=False) / AdamW step over every tensor in place; args is the (n, 7) float64 CPU table
  // of per-tensor step_size, bc2_sqrt, SR key, fp16-state scales (fused_adam.h). Named _fwd like every op's
  // first kernel (clipfast.backend probes <op>_fwd).
  m.def("fused_adam_fwd(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] masters, Tensor args, float lr, float beta1, float beta2, float eps, float weight_decay, "
        "bool decoupled, bool stochastic_rounding) -> ()");
}

TORCH_LIBRARY_IMPL(clipfast, CPU, m) {
  m.impl("quick_gelu_fwd", &clipfast::quick_gelu_fwd_cpu);
  m.impl("quick_gelu_bwd", &clipfast::quick_gelu_bwd_cpu);
  m.impl("fused_adam_fwd", &clipfast::fused_adam_fwd_cpu);
}

#ifdef CLIPFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(clipfast, CUDA, m) {
  m.impl("quick_gelu_fwd", &clipfast::quick_gelu_fwd_cuda);
  m.impl("quick_gelu_bwd", &clipfast::quick_gelu_bwd_cuda);
  m.impl("fused_adam_fwd", &clipfast::fused_adam_fwd_cuda);
}
#endif

// Importing clipfast._C runs the registrations above; the module itself has no attributes.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "clipfast's compiled ops (torch.ops.clipfast)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
