// Fused Adam/AdamW per-element math, shared by the multi-tensor CUDA kernel (fused_adam.cu) and the C++
// CPU implementation (fused_adam_cpu.cpp), plus the torch-free CUDA launcher declaration.
//
// One element, fp32 math (x = the fp32 master weight, or the parameter upcast; g the gradient):
//   AdamW: x = x * (1 - lr wd)          Adam: g = g + wd x
//   m = lerp(m, g, 1 - beta1)           (torch's lerp: m + w (g - m) for w < 0.5, else g - (g - m)(1 - w))
//   v = v beta2 + (1 - beta2) g g
//   x = x + (-step_size m) / (sqrt(v) / bc2_sqrt + eps),  step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t)
// the same operations in the same order as torch.optim.AdamW's single-tensor path.
//
// Storage (codes kAdamF32/F16/BF16), decoded to fp32 on load and encoded on store:
//   parameter: fp32, or bf16/fp16 (then x is rounded back to it: to nearest, or stochastically for bf16);
//   m, v in fp32 as they are; in bf16 stochastically rounded (round-to-nearest would freeze v whenever
//   |(1 - beta2)(g^2 / v - 1)| < 2^-9, e.g. v never decays at beta2 = 0.999); in fp16 as m * m_scale and
//   sqrt(v) * v_scale with per-tensor power-of-two scales (the sqrt halves v's exponent range, the scale
//   moves it into fp16's, so gradients of 1e-8 keep a v of 1e-16), rounded to nearest.
// Stochastic rounding: add 16 random bits to the fp32 bit pattern, truncate to bf16 (unbiased, like torchao's);
// the bits are adam_random(key, i), a counter-based hash of the element index and a per-(seed, step, tensor)
// key, so a step is reproducible and identical on every rank.
#pragma once

#include <stdint.h>
#include <string.h>
#include <math.h>

// Always inlined on the host too: the CPU loops only vectorize with the whole element step inlined.
#ifdef __CUDACC__
#define CLIPFAST_ADAM_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define CLIPFAST_ADAM_HD inline __attribute__((always_inline))
#else
#define CLIPFAST_ADAM_HD inline
#endif

namespace clipfast {

enum FusedAdamDtype : int { kAdamF32 = 0, kAdamF16 = 1, kAdamBF16 = 2 };

// Hyper-parameters of one call (one param group), computed in double on the host and rounded to float once.
struct AdamHyper {
  float lerp_weight;  // 1 - beta1
  float beta2;
  float one_minus_beta2;
  float eps;
  float l2;     // Adam: weight_decay; AdamW: 0 (g + 0 x = g exactly)
  float decay;  // AdamW: 1 - lr * weight_decay; Adam: 1 (x * 1 = x exactly)
};

// Per-tensor values: bias corrections of this tensor's step, the SR key, the fp16-state scales (1 otherwise).
struct AdamTensorArgs {
  float step_size;  // lr / (1 - beta1^t)
  float bc2_sqrt;   // sqrt(1 - beta2^t)
  uint32_t key;     // random-stream key of (seed, step, tensor)
  float m_decode, m_encode, v_decode, v_encode;  // stored = value * encode; value = stored * decode
};

// Storage type of each code: fp16/bf16 are handled as their 16-bit patterns on host and device.
template <int C>
struct AdamStorage {
  using type = uint16_t;
};
template <>
struct AdamStorage<kAdamF32> {
  using type = float;
};

CLIPFAST_ADAM_HD uint32_t adam_f32_bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
#endif
}

CLIPFAST_ADAM_HD float adam_bits_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, 4);
  return x;
#endif
}

// lowbias32 (a 32-bit integer finalizer): a bijection with good avalanche; the Triton kernel and the
// PyTorch reference compute the same function.
CLIPFAST_ADAM_HD uint32_t adam_hash(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// 32 random bits for element i of the tensor with ``key``: the low 16 round the parameter (or m), the high
// 16 round v; with bf16 parameters and bf16 state the parameter takes adam_hash of this value.
CLIPFAST_ADAM_HD uint32_t adam_random(uint32_t key, int64_t i) { return adam_hash((uint32_t)i + key); }

// fp32 -> bf16 pattern: round to nearest even, or stochastically with 16 random bits r16; NaN stays NaN.
CLIPFAST_ADAM_HD uint16_t adam_bf16_rne(float x) {
  const uint32_t b = adam_f32_bits(x);
  const uint16_t r = (uint16_t)((b + 0x7FFFU + ((b >> 16) & 1U)) >> 16);
  return x != x ? (uint16_t)((b >> 16) | 0x40U) : r;
}

CLIPFAST_ADAM_HD uint16_t adam_bf16_sr(float x, uint32_t r16) {
  const uint32_t b = adam_f32_bits(x);
  const uint16_t r = (uint16_t)((b + (r16 & 0xFFFFU)) >> 16);
  return x != x ? (uint16_t)((b >> 16) | 0x40U) : r;
}

CLIPFAST_ADAM_HD float adam_bf16_to_f32(uint16_t h) { return adam_bits_f32((uint32_t)h << 16); }

// fp32 -> fp16 pattern, round to nearest even (IEEE, branch-free so the CPU loops vectorize).
CLIPFAST_ADAM_HD uint16_t adam_fp16_rne(float x) {
#ifdef __CUDA_ARCH__
  return __half_as_ushort(__float2half_rn(x));
#else
  const uint32_t b = adam_f32_bits(x);
  const uint32_t sign = (b >> 16) & 0x8000U;
  const uint32_t a = b & 0x7FFFFFFFU;
  // Normal fp16 (|x| >= 2^-14): rebias the exponent (127 - 15 = 112) and round the 13 dropped bits.
  const uint32_t normal = (a + 0xFFFU + ((a >> 13) & 1U) - 0x38000000U) >> 13;
  // Subnormal fp16: |x| + 0.5 rounds |x| to a multiple of 2^-24 in fp32's own round-to-nearest-even.
  const uint32_t sub = adam_f32_bits(adam_bits_f32(a) + 0.5f) - 0x3F000000U;
  uint32_t h = a < 0x38800000U ? sub : normal;
  h = a >= 0x477FF000U ? 0x7C00U : h;  // >= 65520 rounds to inf
  h = a > 0x7F800000U ? 0x7E00U : h;   // NaN
  return (uint16_t)(sign | h);
#endif
}

CLIPFAST_ADAM_HD float adam_fp16_to_f32(uint16_t h) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t sign = ((uint32_t)h & 0x8000U) << 16;
  const uint32_t e = ((uint32_t)h >> 10) & 0x1FU;
  const uint32_t normal = (((uint32_t)h & 0x7FFFU) << 13) + 0x38000000U;
  const uint32_t special = 0x7F800000U | (((uint32_t)h & 0x3FFU) << 13);
  const uint32_t sub = adam_f32_bits((float)((uint32_t)h & 0x3FFU) * 5.9604644775390625e-8f);  // m * 2^-24
  const uint32_t mag = e == 0 ? sub : (e == 31 ? special : normal);
  return adam_bits_f32(sign | mag);
#endif
}

template <int C>
CLIPFAST_ADAM_HD float adam_load(typename AdamStorage<C>::type s) {
  if constexpr (C == kAdamF32) {
    return s;
  } else if constexpr (C == kAdamBF16) {
    return adam_bf16_to_f32(s);
  } else {
    return adam_fp16_to_f32(s);
  }
}

// Encode x: fp32 as is, fp16 to nearest, bf16 to nearest (sr = false) or stochastically with r16.
template <int C>
CLIPFAST_ADAM_HD typename AdamStorage<C>::type adam_store(float x, bool sr, uint32_t r16) {
  if constexpr (C == kAdamF32) {
    return x;
  } else if constexpr (C == kAdamBF16) {
    return sr ? adam_bf16_sr(x, r16) : adam_bf16_rne(x);
  } else {
    return adam_fp16_rne(x);
  }
}

// The update of one element in fp32 (see the file comment); v_sqrt returns sqrt of the new v.
CLIPFAST_ADAM_HD void adam_update(float& x, float g, float& m, float& v, float& v_sqrt, const AdamHyper& h,
                             const AdamTensorArgs& t) {
  x = x * h.decay;  // branch-free: one of decay = 1, l2 = 0 holds
  g = g + h.l2 * x;
  const float lerp_lo = m + h.lerp_weight * (g - m);
  const float lerp_hi = g - (g - m) * (1.0f - h.lerp_weight);
  m = h.lerp_weight < 0.5f ? lerp_lo : lerp_hi;
  v = v * h.beta2;
  v = v + h.one_minus_beta2 * g * g;
  v_sqrt = sqrtf(v);
  const float denom = v_sqrt / t.bc2_sqrt + h.eps;
  x = x + (-t.step_size * m) / denom;
}

// One element of one tensor, storage to storage. P: parameter (and gradient) code, S: state code,
// kMaster: an fp32 master copy holds x (the parameter gets x rounded to nearest), kSR: round a bf16
// parameter stochastically (ignored with kMaster or non-bf16 parameters).
template <int P, int S, bool kMaster, bool kSR>
CLIPFAST_ADAM_HD void fused_adam_element(typename AdamStorage<P>::type* __restrict__ p,
                                    const typename AdamStorage<P>::type* __restrict__ g,
                                    typename AdamStorage<S>::type* __restrict__ m,
                                    typename AdamStorage<S>::type* __restrict__ v, float* __restrict__ master,
                                    int64_t i, const AdamHyper& h, const AdamTensorArgs& t) {
  constexpr bool kStateSR = S == kAdamBF16;
  constexpr bool kParamSR = kSR && P == kAdamBF16 && !kMaster;
  float x = kMaster ? master[i] : adam_load<P>(p[i]);
  const float gi = adam_load<P>(g[i]);
  float mi = adam_load<S>(m[i]);
  float vi = adam_load<S>(v[i]);
  if constexpr (S == kAdamF16) {
    mi = mi * t.m_decode;
    vi = vi * t.v_decode;
    vi = vi * vi;  // fp16 holds sqrt(v) * v_scale
  }
  float v_sqrt;
  adam_update(x, gi, mi, vi, v_sqrt, h, t);
  const uint32_t r = (kStateSR || kParamSR) ? adam_random(t.key, i) : 0U;
  if constexpr (S == kAdamF16) {
    m[i] = adam_store<S>(mi * t.m_encode, false, 0U);
    v[i] = adam_store<S>(v_sqrt * t.v_encode, false, 0U);
  } else {
    m[i] = adam_store<S>(mi, kStateSR, r);
    v[i] = adam_store<S>(vi, kStateSR, r >> 16);
  }
  if constexpr (kMaster) master[i] = x;
  p[i] = adam_store<P>(x, kParamSR, kStateSR ? adam_hash(r) : r);
}

// Torch-free CUDA launcher (fused_adam.cu): one pass over n_tensors tensors, packed into launches of up to
// kAdamMaxTensors tensors and kAdamMaxBlocks chunks of kAdamChunk elements each (multi-tensor apply).
// All tensors contiguous; g has the parameter's code; master entries are null unless has_master.
// Returns the cudaError_t of the launches as int (0 = success). stream is a cudaStream_t.
constexpr int kAdamMaxTensors = 24;
constexpr int kAdamMaxBlocks = 320;
constexpr int64_t kAdamChunk = 65536;

int fused_adam_cuda_launch(int param_code, int state_code, bool has_master, bool stochastic_rounding,
                           int64_t n_tensors, void* const* p, const void* const* g, void* const* m, void* const* v,
                           float* const* master, const int64_t* numel, const AdamTensorArgs* args,
                           const AdamHyper& hyper, void* stream);

}  // namespace clipfast
