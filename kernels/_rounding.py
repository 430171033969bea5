"""Bit-level rounding helpers of the fused Adam kernel (``kernels/fused_adam.py``), inlined into it.

bf16 stores go through the fp32 bit pattern (``bits + add`` truncated to the high 16 bits): ``add`` = 16
random bits rounds stochastically, ``0x7FFF + lsb`` rounds to nearest even; NaN stays NaN.
"""
import triton
import triton.language as tl


@triton.jit
def lowbias32(x):
    """lowbias32 integer hash of uint32 ``x`` (the function of csrc/fused_adam.cuh)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def bf16_bits(x, add):
    """The fp32 value whose high half is the bf16 of ``x`` after adding ``add`` to its bits (NaN kept)."""
    bits = x.to(tl.uint32, bitcast=True)
    out = ((bits + add) >> 16) << 16
    out = tl.where(x != x, ((bits >> 16) | 0x40) << 16, out)
    return out.to(tl.float32, bitcast=True)


@triton.jit
def bf16_rne(x):
    """``x`` rounded to the nearest-even bf16, as an fp32 value (exact under the interpreter too)."""
    bits = x.to(tl.uint32, bitcast=True)
    return bf16_bits(x, 0x7FFF + ((bits >> 16) & 1))
