// Fused Adam/AdamW: the multi-tensor CUDA kernel and its torch-free launcher (math in fused_adam.cuh).
//
// Multi-tensor apply (as apex's multi_tensor_apply): the launcher walks the tensors in kAdamChunk-element
// chunks and packs (tensor pointers, sizes, per-tensor args, block -> (tensor, chunk) tables) into one
// kernel-argument struct of up to kAdamMaxTensors tensors and kAdamMaxBlocks chunks; it launches when either
// table is full and at the end. Each block strides over its chunk; each element is read and written once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fused_adam.cuh"

namespace clipfast {
namespace {

constexpr int kThreads = 512;

// The kernel argument (< 4 KiB, the classic CUDA parameter limit).
struct AdamLaunch {
  void* p[kAdamMaxTensors];
  const void* g[kAdamMaxTensors];
  void* m[kAdamMaxTensors];
  void* v[kAdamMaxTensors];
  float* master[kAdamMaxTensors];
  int64_t numel[kAdamMaxTensors];
  AdamTensorArgs args[kAdamMaxTensors];
  unsigned char block_tensor[kAdamMaxBlocks];
  int block_chunk[kAdamMaxBlocks];
};
static_assert(sizeof(AdamLaunch) <= 4096, "AdamLaunch exceeds the 4 KiB kernel parameter limit");

template <int P, int S, bool kMaster, bool kSR>
__global__ void __launch_bounds__(kThreads) fused_adam_kernel(const AdamLaunch launch, const AdamHyper hyper) {
  using PT = typename AdamStorage<P>::type;
  using ST = typename AdamStorage<S>::type;
  const int t = launch.block_tensor[blockIdx.x];
  const int64_t begin = (int64_t)launch.block_chunk[blockIdx.x] * kAdamChunk;
  const int64_t end = min(launch.numel[t], begin + kAdamChunk);
  PT* p = static_cast<PT*>(launch.p[t]);
  const PT* g = static_cast<const PT*>(launch.g[t]);
  ST* m = static_cast<ST*>(launch.m[t]);
  ST* v = static_cast<ST*>(launch.v[t]);
  float* master = launch.master[t];
  const AdamTensorArgs args = launch.args[t];
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    fused_adam_element<P, S, kMaster, kSR>(p, g, m, v, master, i, hyper, args);
  }
}

template <int P, int S, bool kMaster, bool kSR>
int launch_all(int64_t n_tensors, void* const* p, const void* const* g, void* const* m, void* const* v,
               float* const* master, const int64_t* numel, const AdamTensorArgs* args, const AdamHyper& hyper,
               cudaStream_t stream) {
  AdamLaunch launch;
  int tensors = 0, blocks = 0;
  for (int64_t i = 0; i < n_tensors; ++i) {
    if (numel[i] == 0) continue;
    launch.p[tensors] = p[i];
    launch.g[tensors] = g[i];
    launch.m[tensors] = m[i];
    launch.v[tensors] = v[i];
    launch.master[tensors] = master != nullptr ? master[i] : nullptr;
    launch.numel[tensors] = numel[i];
    launch.args[tensors] = args[i];
    const int64_t chunks = (numel[i] + kAdamChunk - 1) / kAdamChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      launch.block_tensor[blocks] = (unsigned char)tensors;
      launch.block_chunk[blocks] = (int)c;
      ++blocks;
      const bool tensors_full = tensors + 1 == kAdamMaxTensors && c + 1 == chunks;
      if (blocks == kAdamMaxBlocks || tensors_full) {
        fused_adam_kernel<P, S, kMaster, kSR><<<blocks, kThreads, 0, stream>>>(launch, hyper);
        const cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return (int)err;
        blocks = 0;
        if (c + 1 < chunks) {
          // The tensor continues in the next launch: it becomes entry 0 there.
          launch.p[0] = launch.p[tensors];
          launch.g[0] = launch.g[tensors];
          launch.m[0] = launch.m[tensors];
          launch.v[0] = launch.v[tensors];
          launch.master[0] = launch.master[tensors];
          launch.numel[0] = launch.numel[tensors];
          launch.args[0] = launch.args[tensors];
          tensors = 0;
        } else {
          tensors = -1;
        }
      }
    }
    ++tensors;
  }
  if (blocks > 0) {
    fused_adam_kernel<P, S, kMaster, kSR><<<blocks, kThreads, 0, stream>>>(launch, hyper);
    return (int)cudaGetLastError();
  }
  return 0;
}

template <int P, int S>
int dispatch_flags(bool has_master, bool sr, int64_t n, void* const* p, const void* const* g, void* const* m,
                   void* const* v, float* const* master, const int64_t* numel, const AdamTensorArgs* args,
                   const AdamHyper& hyper, cudaStream_t stream) {
  if (has_master) return launch_all<P, S, true, false>(n, p, g, m, v, master, numel, args, hyper, stream);
  if (sr && P == kAdamBF16) return launch_all<P, S, false, true>(n, p, g, m, v, master, numel, args, hyper, stream);
  return launch_all<P, S, false, false>(n, p, g, m, v, master, numel, args, hyper, stream);
}

template <int P>
int dispatch_state(int state_code, bool has_master, bool sr, int64_t n, void* const* p, const void* const* g,
                   void* const* m, void* const* v, float* const* master, const int64_t* numel,
                   const AdamTensorArgs* args, const AdamHyper& hyper, cudaStream_t stream) {
  switch (state_code) {
    case kAdamF32: return dispatch_flags<P, kAdamF32>(has_master, sr, n, p, g, m, v, master, numel, args, hyper, stream);
    case kAdamF16: return dispatch_flags<P, kAdamF16>(has_master, sr, n, p, g, m, v, master, numel, args, hyper, stream);
    case kAdamBF16: return dispatch_flags<P, kAdamBF16>(has_master, sr, n, p, g, m, v, master, numel, args, hyper, stream);
    default: return (int)cudaErrorInvalidValue;
  }
}

}  // namespace

int fused_adam_cuda_launch(int param_code, int state_code, bool has_master, bool stochastic_rounding,
                           int64_t n_tensors, void* const* p, const void* const* g, void* const* m, void* const* v,
                           float* const* master, const int64_t* numel, const AdamTensorArgs* args,
                           const AdamHyper& hyper, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool sr = stochastic_rounding;
  switch (param_code) {
    case kAdamF32:
      return dispatch_state<kAdamF32>(state_code, false, false, n_tensors, p, g, m, v, master, numel, args, hyper, s);
    case kAdamF16:
      return dispatch_state<kAdamF16>(state_code, has_master, false, n_tensors, p, g, m, v, master, numel, args, hyper, s);
    case kAdamBF16:
      return dispatch_state<kAdamBF16>(state_code, has_master, sr, n_tensors, p, g, m, v, master, numel, args, hyper, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

}  // namespace clipfast
