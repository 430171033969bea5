// QuickGELU with fused bias: CUDA kernels and their torch-free launchers (math in quick_gelu.cuh).
//
// Forward: one grid-stride elementwise pass, y = q(x + b). Backward: a (column block, row block) grid
// where each thread walks its column through the block's rows, writes dx and keeps a running fp32 sum
// of dz; the per-row-block sums go to a small (row_blocks, n) buffer that a second kernel sums in a
// fixed order into grad_bias (deterministic, no atomics, no full-size temporary).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "quick_gelu.cuh"

namespace clipfast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;

__device__ __forceinline__ float load_f32(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_f32(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store_f32(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

template <typename S>
__global__ void quick_gelu_fwd_kernel(const S* __restrict__ x, const S* __restrict__ bias, S* __restrict__ y,
                                      int64_t total, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    float z = load_f32(x, i);
    if (bias != nullptr) z += load_f32(bias, i % n);
    store_f32(y, i, quick_gelu_forward(z));
  }
}

// grid: (ceil(n / kThreads), row_blocks); block b handles rows [b * rows_per_block, ...).
template <typename S>
__global__ void quick_gelu_bwd_kernel(const S* __restrict__ grad, const S* __restrict__ x,
                                      const S* __restrict__ bias, S* __restrict__ grad_x,
                                      float* __restrict__ bias_partial, int64_t rows, int64_t n,
                                      int64_t rows_per_block) {
  const int64_t col = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  if (col >= n) return;
  const int64_t row_begin = (int64_t)blockIdx.y * rows_per_block;
  const int64_t row_end = min(rows, row_begin + rows_per_block);
  const float b = bias != nullptr ? load_f32(bias, col) : 0.0f;
  float acc = 0.0f;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t i = r * n + col;
    const float dz = quick_gelu_backward(load_f32(grad, i), load_f32(x, i) + b);
    store_f32(grad_x, i, dz);
    acc += dz;
  }
  if (bias_partial != nullptr) bias_partial[blockIdx.y * n + col] = acc;
}

template <typename S>
__global__ void quick_gelu_bias_reduce_kernel(const float* __restrict__ bias_partial, S* __restrict__ grad_bias,
                                              int64_t row_blocks, int64_t n) {
  const int64_t col = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  if (col >= n) return;
  float acc = 0.0f;
  for (int64_t b = 0; b < row_blocks; ++b) acc += bias_partial[b * n + col];
  store_f32(grad_bias, col, acc);
}

template <typename S>
int launch_fwd(const void* x, const void* bias, void* y, int64_t rows, int64_t n, cudaStream_t stream) {
  const int64_t total = rows * n;
  if (total == 0) return 0;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  blocks = blocks < kMaxBlocks ? blocks : kMaxBlocks;
  quick_gelu_fwd_kernel<S><<<(unsigned)blocks, kThreads, 0, stream>>>(
      static_cast<const S*>(x), static_cast<const S*>(bias), static_cast<S*>(y), total, n);
  return (int)cudaGetLastError();
}

template <typename S>
int launch_bwd(const void* grad, const void* x, const void* bias, void* grad_x, void* grad_bias,
               float* bias_partial, int64_t rows, int64_t n, cudaStream_t stream) {
  if (n == 0) return 0;
  const int64_t col_blocks = (n + kThreads - 1) / kThreads;
  const bool want_bias = grad_bias != nullptr;
  if (rows > 0) {
    const dim3 grid((unsigned)col_blocks, (unsigned)quick_gelu_row_blocks(rows));
    quick_gelu_bwd_kernel<S><<<grid, kThreads, 0, stream>>>(
        static_cast<const S*>(grad), static_cast<const S*>(x), static_cast<const S*>(bias),
        static_cast<S*>(grad_x), want_bias ? bias_partial : nullptr, rows, n, quick_gelu_rows_per_block(rows));
  }
  if (want_bias) {
    quick_gelu_bias_reduce_kernel<S><<<(unsigned)col_blocks, kThreads, 0, stream>>>(
        bias_partial, static_cast<S*>(grad_bias), rows > 0 ? quick_gelu_row_blocks(rows) : 0, n);
  }
  return (int)cudaGetLastError();
}

}  // namespace

int quick_gelu_fwd_cuda_launch(const void* x, const void* bias, void* y, int64_t rows, int64_t n, int dtype,
                               void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kQuickGeluF32: return launch_fwd<float>(x, bias, y, rows, n, s);
    case kQuickGeluF16: return launch_fwd<__half>(x, bias, y, rows, n, s);
    case kQuickGeluBF16: return launch_fwd<__nv_bfloat16>(x, bias, y, rows, n, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

int quick_gelu_bwd_cuda_launch(const void* grad, const void* x, const void* bias, void* grad_x, void* grad_bias,
                               float* bias_partial, int64_t rows, int64_t n, int dtype, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kQuickGeluF32: return launch_bwd<float>(grad, x, bias, grad_x, grad_bias, bias_partial, rows, n, s);
    case kQuickGeluF16: return launch_bwd<__half>(grad, x, bias, grad_x, grad_bias, bias_partial, rows, n, s);
    case kQuickGeluBF16:
      return launch_bwd<__nv_bfloat16>(grad, x, bias, grad_x, grad_bias, bias_partial, rows, n, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

}  // namespace clipfast
