// QuickGELU per-element math, shared by the CUDA kernels (quick_gelu.cu) and the CPU implementation
// (quick_gelu_cpu.cpp), plus the torch-free CUDA launcher declarations.
//
//   forward:  y = z * s,                          s = sigmoid(1.702 z),  z = x + b
//   backward: dz = g * s * (1 + 1.702 z (1 - s)), dx = dz, db = sum over rows of dz
//
// T is the math type: float for fp32/fp16/bf16 inputs, double for fp64 (CPU only).
#pragma once

#include <stdint.h>
#include <string.h>
#include <math.h>

#ifdef __CUDACC__
#define CLIPFAST_HD __host__ __device__ __forceinline__
#else
#define CLIPFAST_HD inline
#endif

namespace clipfast {

// Bias-gradient reduction: rows are split into at most kBiasRowBlocksMax blocks of consecutive rows;
// each block sums its rows into one fp32 row of a (row_blocks, N) buffer, and the blocks are then
// summed in order. Deterministic, and the buffer is at most kBiasRowBlocksMax x N (never full size).
// The same bound as the Triton backward's MAX_ROW_SPLITS (clipfast/kernels/quick_gelu.py); a test
// (tests/ops/test_quick_gelu.py) keeps the two equal.
constexpr int64_t kBiasRowBlocksMax = 256;
constexpr int64_t kBiasRowsPerBlockMin = 16;

CLIPFAST_HD int64_t quick_gelu_rows_per_block(int64_t rows) {
  int64_t per = (rows + kBiasRowBlocksMax - 1) / kBiasRowBlocksMax;
  return per < kBiasRowsPerBlockMin ? kBiasRowsPerBlockMin : per;
}

CLIPFAST_HD int64_t quick_gelu_row_blocks(int64_t rows) {
  int64_t per = quick_gelu_rows_per_block(rows);
  return (rows + per - 1) / per;
}

// exp(v) in fp32. On the device: __expf (ex2.approx.ftz: rel. error ~2^-21, plus |v|·2^-24 from scaling v
// by log2(e); inf/0 at overflow/underflow, NaN -> NaN), the fast path the issue-bound kernels need.
// On the host (the CPU kernels, and what the tests check), to ~1 ulp: a branchless
// Cody-Waite reduction + degree-6 polynomial (Cephes coefficients) that compilers vectorize, unlike
// a call to libm's expf; overflow -> inf, underflow -> 0 (through denormals), NaN -> NaN.
CLIPFAST_HD float math_exp(float v) {
#ifdef __CUDA_ARCH__
  return __expf(v);
#else
  // Clamp (NaN -> 0) so that every step below is plain arithmetic; fix the result up at the end.
  const float c = v > 88.8f ? 88.8f : (v < -104.0f ? -104.0f : (v == v ? v : 0.0f));
  // Round to nearest with the 1.5 * 2^23 trick (rintf is a libm call without SSE4.1); n in [-150, 128].
  const float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = c - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n as two factors 2^h * 2^(n-h), each a normal float, so results reach denormals gracefully.
  const int32_t ni = (int32_t)n;
  const int32_t h = ni / 2;
  const int32_t b1 = (h + 127) << 23, b2 = (ni - h + 127) << 23;
  float s1, s2;
  memcpy(&s1, &b1, 4);
  memcpy(&s2, &b2, 4);
  float out = p * s1 * s2;
  out = v > 88.7228394f ? INFINITY : out;
  out = v < -103.972084f ? 0.0f : out;
  return v == v ? out : v;
#endif
}

CLIPFAST_HD double math_exp(double v) { return exp(v); }

template <typename T>
CLIPFAST_HD T quick_gelu_sigmoid(T z) {
  return T(1) / (T(1) + math_exp(T(-1.702) * z));
}

template <typename T>
CLIPFAST_HD T quick_gelu_forward(T z) {
  return z * quick_gelu_sigmoid(z);
}

// dL/dz for upstream gradient g at pre-activation z (recomputed, nothing saved but x and b).
template <typename T>
CLIPFAST_HD T quick_gelu_backward(T g, T z) {
  const T s = quick_gelu_sigmoid(z);
  return g * s * (T(1) + T(1.702) * z * (T(1) - s));
}

// Torch-free CUDA launchers (quick_gelu.cu). dtype: 0 = fp32, 1 = fp16, 2 = bf16. All tensors are
// contiguous (rows, n) row-major; bias may be null. bias_partial is an fp32 (row_blocks, n) buffer
// with row_blocks = quick_gelu_row_blocks(rows), required when grad_bias is not null. Returns the
// cudaError_t of the launches as int (0 = success). stream is a cudaStream_t.
enum QuickGeluDtype : int { kQuickGeluF32 = 0, kQuickGeluF16 = 1, kQuickGeluBF16 = 2 };

int quick_gelu_fwd_cuda_launch(const void* x, const void* bias, void* y, int64_t rows, int64_t n,
                               int dtype, void* stream);
int quick_gelu_bwd_cuda_launch(const void* grad, const void* x, const void* bias, void* grad_x,
                               void* grad_bias, float* bias_partial, int64_t rows, int64_t n, int dtype,
                               void* stream);

}  // namespace clipfast
