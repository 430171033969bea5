"""Multi-head scaled dot-product attention, optionally causal: ``(B, H, L, D)``, packed and varlen entry points.

Math: ``out = softmax(q @ k^T * scale + M) @ v`` with ``scale = D ** -0.5`` and ``M`` the causal mask
(``-inf`` above the diagonal, aligned to the top-left) when ``causal=True``. Softmax accumulates in fp32.

Entry points (the packed ones mirror flash-attn's ``flash_attn_qkvpacked_func`` and
``flash_attn_varlen_qkvpacked_func``, without dropout and with the default scale):

- ``attention(q, k, v, *, causal=False)``: ``(B, H, L, D)`` tensors, any strides.
- ``attention_qkvpacked(qkv, *, causal=False)``: ``qkv (B, L, 3, H, D)`` — a free view of CLIP's
  ``in_proj`` output ``(B, L, 3·H·D)`` — returns ``(B, L, H, D)`` (a free view of ``(B, L, H·D)``); the
  Triton kernels read q/k/v through strides and the backward writes one packed ``dqkv``: no copies.
- ``attention_varlen_qkvpacked(qkv, cu_seqlens, max_seqlen, *, causal=False)``: packed tokens
  ``(T, 3, H, D)`` of B sequences, ``cu_seqlens`` int32 ``(B + 1,)``, causal within each sequence.

Backends (``clipfast.backend.select("attention", device)``): ``triton`` (``clipfast.kernels.attention``,
run as the custom ops ``torch.ops.clipfast.attention*`` with fake implementations and autograd, so
``torch.compile`` traces them) or ``reference`` (``F.scaled_dot_product_attention``). A problem the kernels
don't serve (head dim outside {32, 64, 80, 96, 128}, L_q != L_k, L > 1024, fp32 on CUDA, fp64) runs the
reference; ``fallback_reason`` says why (logged once per reason; ``python -m clipfast.info`` shows what the
kernels serve). Double backward is not supported on the kernel path.
"""
import torch
import torch.nn.functional as F

from clipfast.ops import _dispatch

__all__ = ["attention", "attention_ref", "attention_qkvpacked", "attention_qkvpacked_ref",
           "attention_varlen_qkvpacked", "attention_varlen_qkvpacked_ref", "fallback_reason"]


def attention_ref(q, k, v, *, causal=False):
    """Plain differentiable PyTorch attention (the CPU path and the oracle). Same contract as ``attention``."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def attention_qkvpacked_ref(qkv, *, causal=False):
    """Reference of ``attention_qkvpacked``: ``(B, L, 3, H, D)`` -> ``(B, L, H, D)``."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, D)
    return attention_ref(q, k, v, causal=causal).transpose(1, 2)


def attention_varlen_qkvpacked_ref(qkv, cu_seqlens, max_seqlen, *, causal=False):
    """Reference of ``attention_varlen_qkvpacked``: one SDPA per sequence; ``(T, 3, H, D)`` -> ``(T, H, D)``."""
    bounds = cu_seqlens.tolist()
    outs = [attention_qkvpacked_ref(qkv[a:b].unsqueeze(0), causal=causal)[0] for a, b in zip(bounds, bounds[1:])]
    return torch.cat(outs, 0) if outs else qkv.new_empty((0, *qkv.shape[2:]))


# --- custom ops (the Triton path) ----------------------------------------------------------------------------

def _kernels():
    from clipfast.kernels import attention as kernels

    return kernels


def _tokens(q, cu_seqlens):
    return q.shape[0] if cu_seqlens is not None else q.shape[0] * q.shape[1]


@torch.library.custom_op("clipfast::attention_fwd", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                  cu_seqlens: torch.Tensor | None, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse) of q, k, v ``(B, L, H, D)`` or varlen ``(T, H, D)`` views; o contiguous, lse ``(H, T)`` fp32."""
    return _kernels().attention_fwd(q, k, v, causal=causal, cu_seqlens=cu_seqlens,
                                    max_seqlen=max_seqlen if cu_seqlens is not None else None)


@_attention_op.register_fake
def _(q, k, v, causal, cu_seqlens, max_seqlen):
    return q.new_empty(q.shape), q.new_empty((q.shape[-2], _tokens(q, cu_seqlens)), dtype=torch.float32)


@torch.library.custom_op("clipfast::attention_bwd", mutates_args=())
def _attention_backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                           lse: torch.Tensor, causal: bool, cu_seqlens: torch.Tensor | None,
                           max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each contiguous in q's shape."""
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    _kernels().attention_bwd(do, q, k, v, o, lse, dq, dk, dv, causal=causal, cu_seqlens=cu_seqlens,
                             max_seqlen=max_seqlen if cu_seqlens is not None else None)
    return dq, dk, dv


@_attention_backward_op.register_fake
def _(do, q, k, v, o, lse, causal, cu_seqlens, max_seqlen):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


@torch.library.custom_op("clipfast::attention_qkvpacked_fwd", mutates_args=())
def _packed_op(qkv: torch.Tensor, causal: bool, cu_seqlens: torch.Tensor | None,
               max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse) of a packed ``(B, L, 3, H, D)`` / varlen ``(T, 3, H, D)`` qkv read in place."""
    q, k, v = qkv.unbind(-3)
    return _kernels().attention_fwd(q, k, v, causal=causal, cu_seqlens=cu_seqlens,
                                    max_seqlen=max_seqlen if cu_seqlens is not None else None)


@_packed_op.register_fake
def _(qkv, causal, cu_seqlens, max_seqlen):
    q = qkv.select(-3, 0)
    return q.new_empty(q.shape), q.new_empty((q.shape[-2], _tokens(q, cu_seqlens)), dtype=torch.float32)


@torch.library.custom_op("clipfast::attention_qkvpacked_bwd", mutates_args=())
def _packed_backward_op(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, causal: bool,
                        cu_seqlens: torch.Tensor | None, max_seqlen: int) -> torch.Tensor:
    """Packed ``dqkv`` in qkv's shape (contiguous), written by the kernels through strides."""
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    _kernels().attention_bwd(do, *qkv.unbind(-3), o, lse, *dqkv.unbind(-3), causal=causal, cu_seqlens=cu_seqlens,
                             max_seqlen=max_seqlen if cu_seqlens is not None else None)
    return dqkv


@_packed_backward_op.register_fake
def _(do, qkv, o, lse, causal, cu_seqlens, max_seqlen):
    return qkv.new_empty(qkv.shape)


def _setup(ctx, inputs, output):
    *tensors, causal, cu_seqlens, max_seqlen = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(*tensors, o, lse, cu_seqlens)
    ctx.causal, ctx.max_seqlen = causal, max_seqlen


def _backward_separate(ctx, do, _dlse):
    q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(do, q, k, v, o, lse, ctx.causal, cu_seqlens, ctx.max_seqlen)
    return dq, dk, dv, None, None, None


def _backward_packed(ctx, do, _dlse):
    qkv, o, lse, cu_seqlens = ctx.saved_tensors
    return _packed_backward_op(do, qkv, o, lse, ctx.causal, cu_seqlens, ctx.max_seqlen), None, None, None


_attention_op.register_autograd(_backward_separate, setup_context=_setup)
_packed_op.register_autograd(_backward_packed, setup_context=_setup)


# --- dispatch ------------------------------------------------------------------------------------------------

def _use_kernels(q, seqlen, extra=None):
    """True when the Triton kernels serve this problem; else records why in ``fallback_reason``."""
    return _dispatch.use_kernels("attention", q.device, lambda: extra or _kernels().unsupported(q, seqlen))


def fallback_reason():
    """Why the last call that had the triton backend ran the reference instead (None if none did)."""
    return _dispatch.fallback_reason("attention")


def _check_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def _check_inputs(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name}: expected 4 dims (B, H, L, D), got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"k: expected (B, H, L_k, D) = ({q.shape[0]}, {q.shape[1]}, L_k, {q.shape[3]}) "
                         f"to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"k, v: expected dtype {q.dtype} (same as q), got {k.dtype} and {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"k, v: expected device {q.device} (same as q), got {k.device} and {v.device}")


def attention(q, k, v, *, causal=False):
    """Scaled dot-product attention, softmax scale ``D ** -0.5``.

    Args:
        q, k, v: float32/float16/bfloat16 tensors on one device; any strides.
        causal: mask keys after each query's position (query i sees keys ``j <= i``).

    Shapes:
        q: ``(B, H, L_q, D)``; k, v: ``(B, H, L_k, D)``.

    Returns:
        ``(B, H, L_q, D)`` in ``q.dtype`` (on the kernel path a transposed view of a ``(B, L, H, D)``
        buffer). Differentiable in q, k and v.
    """
    _check_inputs(q, k, v)
    lq, lk = q.shape[2], k.shape[2]
    if not _use_kernels(q, lq, None if lq == lk else f"L_q {lq} != L_k {lk} (kernels: self-attention)"):
        return attention_ref(q, k, v, causal=causal)
    o, _ = _attention_op(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal, None, lq)
    return o.transpose(1, 2)


def attention_qkvpacked(qkv, *, causal=False):
    """Attention of a packed q/k/v projection, like ``flash_attn_qkvpacked_func(qkv, causal=causal)``.

    Args:
        qkv: ``(B, L, 3, H, D)`` float32/float16/bfloat16 (``in_proj`` output viewed; any strides with a
            unit stride along D are read in place), slots 0/1/2 = q/k/v.
        causal: query i sees keys ``j <= i``.

    Returns:
        ``(B, L, H, D)`` in qkv's dtype (contiguous on the kernel path). Differentiable in qkv; the kernel
        backward returns one packed ``dqkv``.
    """
    _check_tensor("qkv", qkv)
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv: expected (B, L, 3, H, D), got shape {tuple(qkv.shape)}")
    if not _use_kernels(qkv, qkv.shape[1]):
        return attention_qkvpacked_ref(qkv, causal=causal)
    return _packed_op(qkv, causal, None, qkv.shape[1])[0]


def attention_varlen_qkvpacked(qkv, cu_seqlens, max_seqlen, *, causal=False):
    """Attention over packed variable-length sequences, like ``flash_attn_varlen_qkvpacked_func``.

    Args:
        qkv: ``(T, 3, H, D)`` tokens of B sequences laid end to end (no padding).
        cu_seqlens: int32 ``(B + 1,)``, ``cu_seqlens[0] = 0``, ``cu_seqlens[-1] = T``, non-decreasing;
            sequence b is tokens ``cu_seqlens[b] .. cu_seqlens[b + 1] - 1``.
        max_seqlen: int, the longest sequence (the kernels size their grid by it).
        causal: causal within each sequence.

    Returns:
        ``(T, H, D)``; attention never crosses sequences. Differentiable in qkv.
    """
    _check_tensor("qkv", qkv)
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"qkv: expected (T, 3, H, D), got shape {tuple(qkv.shape)}")
    if (not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1
            or cu_seqlens.numel() < 2 or cu_seqlens.device != qkv.device):
        raise ValueError(f"cu_seqlens: expected a 1-D int32 tensor of B + 1 offsets on {qkv.device}, got "
                         f"{cu_seqlens!r}"[:300])
    if not isinstance(max_seqlen, int) or max_seqlen < 1:
        raise ValueError(f"max_seqlen: expected a positive int, got {max_seqlen!r}")
    if not _use_kernels(qkv, max_seqlen):
        return attention_varlen_qkvpacked_ref(qkv, cu_seqlens, max_seqlen, causal=causal)
    return _packed_op(qkv, causal, cu_seqlens, max_seqlen)[0]
