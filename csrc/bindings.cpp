// The one bindings file of clipfast._C: op schemas (torch.ops.clipfast.*), their CPU and CUDA
// implementations, and the (empty) Python module whose import registers them.
#include <Python.h>
#include <torch/library.h>

#include "quick_gelu.h"

TORCH_LIBRARY_FRAGMENT(clipfast, m) {
  // y = q(x + bias), q(z) = z * sigmoid(1.702 z); x (..., N), bias (N,) or None; y contiguous.
  m.def("quick_gelu_fwd(Tensor x, Tensor? bias) -> Tensor");
  // (grad_x, grad_bias); grad_bias is (N,), or (0,) when bias is None.
  m.def("quick_gelu_bwd(Tensor grad, Tensor x, Tensor? bias) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(clipfast, CPU, m) {
  m.impl("quick_gelu_fwd", &clipfast::quick_gelu_fwd_cpu);
  m.impl("quick_gelu_bwd", &clipfast::quick_gelu_bwd_cpu);
}

#ifdef CLIPFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(clipfast, CUDA, m) {
  m.impl("quick_gelu_fwd", &clipfast::quick_gelu_fwd_cuda);
  m.impl("quick_gelu_bwd", &clipfast::quick_gelu_bwd_cuda);
}
#endif

// Importing clipfast._C runs the registrations above; the module itself has no attributes.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "clipfast's compiled ops (torch.ops.clipfast)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
