"""One fused Adam/AdamW step over many tensors, with low-precision state and stochastically rounded weights.

Math (per element, fp32; ``x`` is the fp32 master weight or the parameter upcast, ``g`` the gradient), the
operations and order of ``torch.optim.AdamW``'s single-tensor path::

    AdamW: x = x * (1 - lr * wd)          Adam: g = g + wd * x
    m = lerp(m, g, 1 - beta1);  v = v * beta2 + (1 - beta2) * g * g
    x = x + (-step_size * m) / (sqrt(v) / bc2_sqrt + eps),  step_size = lr / (1 - beta1**t), bc2_sqrt = sqrt(1 - beta2**t)

Storage: parameters fp32/fp16/bf16 (grads in the same dtype), rounded back to nearest, or for bf16 with
``stochastic_rounding`` stochastically (add 16 random bits to the fp32 pattern and truncate: unbiased); with
``masters`` (fp32 copies of fp16/bf16 parameters) ``x`` lives there and the parameter gets it rounded to nearest.
State m, v: fp32; bf16 stochastically rounded (round-to-nearest freezes v once ``(1 - beta2)(g^2/v - 1)`` is
below bf16's half ulp, 2^-9 — at beta2 = 0.999 v could then never decay); fp16 as ``m * m_scale`` and
``sqrt(v) * v_scale`` rounded to nearest, with per-tensor power-of-two scales from the ``args`` table
(``clipfast.optim`` picks them so nothing overflows and gradients of 1e-8 keep their v = 1e-16).

Random bits: ``r = lowbias32(uint32(i) + key)`` for element ``i`` and the tensor's ``key`` (from seed, step and
tensor, see ``sr_key``): m rounds with ``r & 0xFFFF``, v with ``r >> 16``, a bf16 parameter with ``r & 0xFFFF``,
or ``lowbias32(r) & 0xFFFF`` when the state is bf16 too. So a step is reproducible from (seed, step) and the
same on every data-parallel rank.

``args``: a contiguous ``(n_tensors, 7)`` float64 CPU table, one row per tensor: ``step_size, bc2_sqrt, key,
m_decode, m_encode, v_decode, v_encode`` (stored = value * encode, value = stored * decode; 1 unless fp16 state).

Backends (``clipfast.backend.select("fused_adam", device)``): ``triton`` (``clipfast.kernels.fused_adam``, one
launch per tensor), ``extension`` (``torch.ops.clipfast.fused_adam_fwd``: the multi-tensor CUDA kernel, and the C++
CPU kernel — what CPU users get), ``reference`` (``fused_adam_ref``, torch ``_foreach`` ops). All three run the
same per-element math; results agree to fp32 rounding (a different FMA contraction can move an fp32 value by
an ulp, and then a bf16 rounding decision by one bf16 ulp).

Limits: dense, contiguous tensors (``fused_adam`` falls back to the reference otherwise), one parameter dtype
and one state dtype per call, fewer than 2**31 elements per tensor.
"""

import torch

from clipfast import backend as _backend
from clipfast.ops._checks import KERNEL_DTYPES

__all__ = ["fused_adam", "fused_adam_ref", "sr_key", "ARGS_COLUMNS"]

ARGS_COLUMNS = ("step_size", "bc2_sqrt", "key", "m_decode", "m_encode", "v_decode", "v_encode")
_MASK32 = 0xFFFFFFFF


def _hash32(x):
    """lowbias32 of uint32 values held in an int64 tensor (or a Python int)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def sr_key(seed, step, index):
    """The 32-bit random-stream key of tensor ``index`` at optimizer ``step`` for ``seed``."""
    return _hash32((_hash32((_hash32(int(seed) & _MASK32) + int(step)) & _MASK32) + int(index)) & _MASK32)


def _random_bits(numel, key, device):
    idx = torch.arange(numel, dtype=torch.int64, device=device)
    return _hash32((idx + key) & _MASK32)


def _bf16_pattern(x, add):
    """bf16 bit patterns (int64 in [0, 65535]) of fp32 ``x`` after adding ``add`` to its bits and truncating."""
    bits = x.view(torch.int32).to(torch.int64) & _MASK32
    out = ((bits + add) >> 16) & 0xFFFF
    return torch.where(torch.isnan(x), (bits >> 16) | 0x40, out)


def _to_bf16(pattern):
    pattern = torch.where(pattern >= 32768, pattern - 65536, pattern)
    return pattern.to(torch.int16).view(torch.bfloat16)


def bf16_round(x, r16=None):
    """fp32 ``x`` -> bf16, to nearest even (``r16`` None) or stochastically with 16 random bits per element."""
    x = x.float().contiguous()
    if r16 is None:
        bits = x.view(torch.int32).to(torch.int64) & _MASK32
        return _to_bf16(_bf16_pattern(x, 0x7FFF + ((bits >> 16) & 1))).view(x.shape)
    return _to_bf16(_bf16_pattern(x, r16.reshape(x.shape) & 0xFFFF)).view(x.shape)


def fused_adam_ref(params, grads, exp_avgs, exp_avg_sqs, masters, args, lr, beta1, beta2, eps, weight_decay,
                   decoupled, stochastic_rounding):
    """The step in PyTorch ``_foreach`` ops (the oracle, and the path without kernels); arguments as
    :func:`fused_adam`. Mutates ``params``, ``exp_avgs``, ``exp_avg_sqs`` and ``masters`` in place."""
    if not params:
        return
    rows = args.tolist()
    state_dtype = exp_avgs[0].dtype
    # fp32 tensors alias their .float(): those update in place; the others are fp32 copies stored back below.
    xs = list(masters) if masters else [p.float() for p in params]
    gs = [g.float() for g in grads]
    ms = [m.float() for m in exp_avgs]
    vs = [v.float() for v in exp_avg_sqs]
    if state_dtype == torch.float16:
        ms = torch._foreach_mul(ms, [r[3] for r in rows])
        vs = torch._foreach_mul(vs, [r[5] for r in rows])
        vs = torch._foreach_mul(vs, vs)
    if decoupled:
        torch._foreach_mul_(xs, 1.0 - lr * weight_decay)
    elif weight_decay != 0:
        gs = torch._foreach_add(gs, xs, alpha=weight_decay)
    torch._foreach_lerp_(ms, gs, 1.0 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, gs, gs, value=1.0 - beta2)
    v_sqrt = torch._foreach_sqrt(vs)
    denom = torch._foreach_div(v_sqrt, [r[1] for r in rows])
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(xs, ms, denom, [-r[0] for r in rows])
    state_bits = []
    for i, row in enumerate(rows):
        if state_dtype == torch.float16:
            exp_avgs[i].copy_(ms[i] * row[4])
            exp_avg_sqs[i].copy_(v_sqrt[i] * row[6])
        elif state_dtype == torch.bfloat16:
            r = _random_bits(ms[i].numel(), int(row[2]), ms[i].device)
            exp_avgs[i].copy_(bf16_round(ms[i], r))
            exp_avg_sqs[i].copy_(bf16_round(vs[i], r >> 16))
            state_bits.append(r)
    for i, (p, x) in enumerate(zip(params, xs)):
        if p.dtype == torch.float32:
            continue  # x is p
        if p.dtype == torch.bfloat16 and stochastic_rounding and not masters:
            r = _hash32(state_bits[i]) if state_bits else _random_bits(p.numel(), int(rows[i][2]), p.device)
            p.copy_(bf16_round(x, r))
        else:
            p.copy_(x)


def _launch(params, grads, exp_avgs, exp_avg_sqs, masters, args, lr, beta1, beta2, eps, weight_decay, decoupled,
            stochastic_rounding, backend):
    if backend == "triton":
        from clipfast.kernels.fused_adam import fused_adam_fwd

        fused_adam_fwd(params, grads, exp_avgs, exp_avg_sqs, masters, args, lr, beta1, beta2, eps, weight_decay,
                       decoupled, stochastic_rounding)
    elif backend == "extension":
        torch.ops.clipfast.fused_adam_fwd(params, grads, exp_avgs, exp_avg_sqs, masters, args, lr, beta1, beta2, eps,
                                          weight_decay, decoupled, stochastic_rounding)
    else:
        fused_adam_ref(params, grads, exp_avgs, exp_avg_sqs, masters, args, lr, beta1, beta2, eps, weight_decay,
                       decoupled, stochastic_rounding)


@torch.library.custom_op("clipfast::fused_adam", mutates_args=("params", "exp_avgs", "exp_avg_sqs", "masters"))
def _fused_adam_op(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                   exp_avg_sqs: list[torch.Tensor], masters: list[torch.Tensor], args: torch.Tensor, lr: float,
                   beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
                   stochastic_rounding: bool, backend: str) -> None:
    """The step on ``backend`` ("triton", "extension" or "reference"), in place."""
    _launch(params, grads, exp_avgs, exp_avg_sqs, masters, args, lr, beta1, beta2, eps, weight_decay, decoupled,
            stochastic_rounding, backend)


@_fused_adam_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, masters, args, lr, beta1, beta2, eps, weight_decay, decoupled,
      stochastic_rounding, backend):
    return None


def _check(params, grads, exp_avgs, exp_avg_sqs, masters, args):
    n = len(params)
    for name, lst in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        if len(lst) != n:
            raise ValueError(f"{name}: expected {n} tensors (one per param), got {len(lst)}")
    if masters and len(masters) != n:
        raise ValueError(f"masters: expected [] or {n} tensors (one per param), got {len(masters)}")
    if not isinstance(args, torch.Tensor) or args.shape != (n, 7) or args.dtype != torch.float64 or args.device.type != "cpu":
        got = tuple(args.shape) if isinstance(args, torch.Tensor) else type(args).__name__
        raise ValueError(f"args: expected a ({n}, 7) float64 CPU tensor (columns {ARGS_COLUMNS}), got {got}")
    if not n:
        return
    pdt, sdt = params[0].dtype, exp_avgs[0].dtype
    if pdt not in KERNEL_DTYPES or sdt not in KERNEL_DTYPES:
        raise TypeError(f"params/exp_avgs: expected float32, float16 or bfloat16, got {pdt} / {sdt}")
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if p.dtype != pdt or g.dtype != pdt:
            raise TypeError(f"params[{i}]/grads[{i}]: expected dtype {pdt} (one dtype per call), got {p.dtype} / {g.dtype}")
        if m.dtype != sdt or v.dtype != sdt:
            raise TypeError(f"exp_avgs[{i}]/exp_avg_sqs[{i}]: expected dtype {sdt}, got {m.dtype} / {v.dtype}")
        if not (g.shape == m.shape == v.shape == p.shape):
            raise ValueError(f"grads[{i}], exp_avgs[{i}], exp_avg_sqs[{i}]: expected shape {tuple(p.shape)} (the param's)")
        if g.is_sparse:
            raise TypeError(f"grads[{i}]: sparse gradients are not supported")
    if masters and (pdt == torch.float32 or any(w.dtype != torch.float32 or w.shape != p.shape for w, p in zip(masters, params))):
        raise TypeError("masters: expected fp32 tensors shaped like fp16/bf16 params")


def fused_adam(params, grads, exp_avgs, exp_avg_sqs, masters, args, *, lr, beta1, beta2, eps, weight_decay,
               decoupled=True, stochastic_rounding=False):
    """One Adam (``decoupled=False``) or AdamW step over every tensor, in place.

    Args:
        params: parameters, one dtype (fp32/fp16/bf16), one device.
        grads: their gradients, same dtypes and shapes.
        exp_avgs, exp_avg_sqs: m and v (encoded as the module docstring says), one dtype (fp32/fp16/bf16).
        masters: ``[]``, or fp32 master weights of fp16/bf16 params.
        args: ``(n, 7)`` float64 CPU table (``ARGS_COLUMNS``): per-tensor step size, sqrt bias correction,
            random key, fp16-state scales.
        lr, beta1, beta2, eps, weight_decay: as ``torch.optim.AdamW``.
        stochastic_rounding: round bf16 params (without masters) stochastically.
    """
    _check(params, grads, exp_avgs, exp_avg_sqs, masters, args)
    if not params:
        return
    backend = _backend.resolve("fused_adam", params[0].device)
    tensors = [*params, *grads, *exp_avgs, *exp_avg_sqs, *masters]
    if backend != "reference" and not all(t.is_contiguous() for t in tensors):
        backend = "reference"
    _fused_adam_op(list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(masters), args, float(lr),
                   float(beta1), float(beta2), float(eps), float(weight_decay), bool(decoupled),
                   bool(stochastic_rounding), backend)
