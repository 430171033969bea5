"""Fused Adam/AdamW step: the Triton kernel and its launcher (the alternative GPU path to csrc/fused_adam.cu).

Math per element, fp32 (``x``: fp32 master or the parameter upcast, ``g``: gradient)::

    x = x * decay;  g = g + l2 * x            (AdamW: decay = 1 - lr wd, l2 = 0; Adam: decay = 1, l2 = wd)
    m = lerp(m, g, 1 - beta1);  v = v * beta2 + (1 - beta2) g g
    x = x + (-step_size m) / (sqrt(v) / bc2_sqrt + eps)

with IEEE ``sqrt_rn``/``div_rn`` (Triton's default ``sqrt`` and ``/`` are approximate on GPUs). Storage as
``clipfast/ops/fused_adam.py`` documents: m, v fp32; bf16 rounded stochastically; fp16 as ``m * m_scale`` and
``sqrt(v) * v_scale``. bf16 stores go through the fp32 bit pattern (``bits + add`` truncated; ``add`` = 16
random bits, or ``0x7FFF + lsb`` to round to nearest even), so they are exact under the interpreter too (whose
fp32->bf16 casts truncate). Random bits: ``lowbias32(uint32(i) + key)``, the function of fused_adam.cuh.

Algorithm: one program per ``BLOCK`` elements of one tensor, one launch per tensor (the CUDA kernel packs many
tensors per launch); every element is loaded and stored once.

Limits: contiguous tensors of fewer than 2**31 elements; param and grad share a dtype (fp32/fp16/bf16); the
state dtype is fp32/fp16/bf16; masters only for fp16/bf16 params.
"""
import torch
import triton
import triton.language as tl

from . import _aot
from ._common import DTYPE_NAMES
from ._rounding import bf16_bits, bf16_rne, lowbias32

BLOCK = 1024
NUM_WARPS = 4
NUM_STAGES = 1  # no loop to pipeline; explicit, so the launch and the AOT compile can't drift
_STATE_MODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@triton.jit(do_not_specialize=["key"])
def _fused_adam_fwd_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, w_ptr,  # w: fp32 master weights (HAS_MASTER), else any pointer
    n_elements,
    lerp_weight, beta2, one_minus_beta2, eps, l2, decay,  # l2 = wd (Adam) or 0; decay = 1 - lr wd (AdamW) or 1
    step_size, bc2_sqrt, key,  # key: the tensor's random key as int32 (its uint32 bits)
    m_decode, m_encode, v_decode, v_encode,
    STATE_MODE: tl.constexpr,  # 0: fp32 m, v; 1: fp16 m * scale, sqrt(v) * scale; 2: bf16, stochastic
    HAS_MASTER: tl.constexpr, PARAM_SR: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    if HAS_MASTER:
        x = tl.load(w_ptr + offs, mask=mask, other=0.0)
    else:
        x = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if STATE_MODE == 1:
        m = m * m_decode
        v = v * v_decode
        v = v * v
    x = x * decay
    g = g + l2 * x
    m = tl.where(lerp_weight < 0.5, m + lerp_weight * (g - m), g - (g - m) * (1.0 - lerp_weight))
    v = v * beta2
    v = v + one_minus_beta2 * g * g
    v_sqrt = tl.sqrt_rn(v)
    denom = tl.div_rn(v_sqrt, bc2_sqrt) + eps
    x = x + tl.div_rn(-step_size * m, denom)
    if STATE_MODE == 2 or PARAM_SR:
        r = lowbias32(offs.to(tl.uint32) + key.to(tl.uint32, bitcast=True))
    if STATE_MODE == 1:
        tl.store(m_ptr + offs, (m * m_encode).to(tl.float16), mask=mask)
        tl.store(v_ptr + offs, (v_sqrt * v_encode).to(tl.float16), mask=mask)
    elif STATE_MODE == 2:
        tl.store(m_ptr + offs, bf16_bits(m, r & 0xFFFF).to(tl.bfloat16), mask=mask)
        tl.store(v_ptr + offs, bf16_bits(v, r >> 16).to(tl.bfloat16), mask=mask)
    else:
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
    if HAS_MASTER:
        tl.store(w_ptr + offs, x, mask=mask)
    if PARAM_SR:
        if STATE_MODE == 2:
            r = lowbias32(r)
        tl.store(p_ptr + offs, bf16_bits(x, r & 0xFFFF).to(tl.bfloat16), mask=mask)
    elif p_ptr.dtype.element_ty == tl.bfloat16:
        tl.store(p_ptr + offs, bf16_rne(x).to(tl.bfloat16), mask=mask)
    else:
        tl.store(p_ptr + offs, x.to(p_ptr.dtype.element_ty), mask=mask)


def _check(params, grads, exp_avgs, exp_avg_sqs, masters, args):
    n = len(params)
    if args.shape != (n, 7) or args.dtype != torch.float64:
        raise ValueError(f"args: expected a ({n}, 7) float64 tensor, got {tuple(args.shape)} {args.dtype}")
    if masters and len(masters) != n:
        raise ValueError(f"masters: expected [] or {n} tensors, got {len(masters)}")
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, strict=True)):
        if p.dtype not in DTYPE_NAMES or g.dtype != p.dtype:
            raise TypeError(f"params[{i}]/grads[{i}]: expected one of fp32/fp16/bf16 for both, got {p.dtype} / {g.dtype}")
        if m.dtype not in _STATE_MODES or v.dtype != m.dtype:
            raise TypeError(f"exp_avgs[{i}]/exp_avg_sqs[{i}]: expected one fp32/fp16/bf16 dtype, got {m.dtype} / {v.dtype}")
        tensors = (p, g, m, v) + ((masters[i],) if masters else ())
        if any(t.shape != p.shape or t.device != p.device or not t.is_contiguous() for t in tensors):
            raise ValueError(f"params[{i}]: grads, states and master must be contiguous, shaped like it, on its device")
        if p.numel() >= 2**31:
            raise ValueError(f"params[{i}]: {p.numel()} elements; at most 2**31 - 1 are supported")
        if masters and (p.dtype == torch.float32 or masters[i].dtype != torch.float32):
            raise TypeError(f"masters[{i}]: expected fp32 for a fp16/bf16 param")


def fused_adam_fwd(params, grads, exp_avgs, exp_avg_sqs, masters, args, lr, beta1, beta2, eps, weight_decay,
                   decoupled, stochastic_rounding):
    """One Adam/AdamW step, in place: one launch per tensor (see ``clipfast.ops.fused_adam`` for the arguments)."""
    _check(params, grads, exp_avgs, exp_avg_sqs, masters, args)
    decay = 1.0 - lr * weight_decay if decoupled else 1.0
    l2 = 0.0 if decoupled else weight_decay
    # floats, whatever the caller passed (an int 0 would make the JIT build an i32 variant)
    scalars = [float(x) for x in (1.0 - beta1, beta2, 1.0 - beta2, eps, l2, decay)]
    for i, row in enumerate(args.tolist()):
        p = params[i]
        if p.numel() == 0:
            continue
        key = int(row[2]) & 0xFFFFFFFF
        key = key - 2**32 if key >= 2**31 else key
        master = masters[i] if masters else None
        grid = (triton.cdiv(p.numel(), BLOCK),)
        _fused_adam_fwd_kernel[grid](
            p, grads[i], exp_avgs[i], exp_avg_sqs[i], master if master is not None else p, p.numel(),
            *scalars, row[0], row[1], key, row[3], row[4], row[5], row[6],
            STATE_MODE=_STATE_MODES[exp_avgs[i].dtype], HAS_MASTER=master is not None,
            PARAM_SR=bool(stochastic_rounding and p.dtype == torch.bfloat16 and master is None),
            BLOCK=BLOCK, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )


# The tensors of aot_launches: (tag, numel, offset in its buffer in elements).
_AOT_TENSORS = (("2304x768", 2304 * 768, 0), ("odd 777", 777, 1), ("1 element", 1, 0))


def aot_launches():
    """Representative launcher calls (label, launcher, args, kwargs) for the AOT compile, on ``meta`` tensors
    (nothing is allocated or run; ``args`` is the CPU table the launcher reads): every param dtype x state dtype
    x master x stochastic-rounding variant the launcher picks, each on three tensors: 2304 x 768 (a ViT-B qkv
    weight: aligned, numel divisible by 16), 777 elements one element into their buffers (misaligned, odd numel)
    and 1 element (``logit_scale``: the JIT turns ``n_elements = 1`` into a constant)."""
    args = torch.ones(1, 7, dtype=torch.float64)
    for pdt, pty in DTYPE_NAMES.items():
        for sdt in _STATE_MODES:
            variants = [(False, False)] + ([(True, False)] if pdt != torch.float32 else [])
            variants += [(False, True)] if pdt == torch.bfloat16 else []
            for master, sr in variants:
                for tag, numel, offset in _AOT_TENSORS:
                    def t(dtype, numel=numel, offset=offset):
                        return [torch.empty(numel + offset, dtype=dtype, device="meta")[offset:]]
                    label = f"p={pty} state={DTYPE_NAMES[sdt]} master={int(master)} sr={int(sr)} {tag}"
                    yield label, fused_adam_fwd, (t(pdt), t(pdt), t(sdt), t(sdt), t(torch.float32) if master else [],
                                                  args, 1e-3, 0.9, 0.999, 1e-8, 0.1, True, sr), {}


def aot_specs():
    """Every distinct binary the representative calls of ``aot_launches`` make the JIT build."""
    return _aot.specs_from_launches(aot_launches())
