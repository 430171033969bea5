"""Single-query multi-head attention pooling: one query per (batch, head) attends over L keys.

Math: ``out[b, h] = sum_j p[b, h, j] * v[b, h, j]`` with ``p = softmax_j(scale * <q[b, h], k[b, h, j]>)``
over the keys ``j < kv_len[b]`` (all L when ``kv_len`` is None), ``scale = D ** -0.5``. Scores, softmax and
the weighted sum run in fp32 (fp64 for fp64 inputs); the result is cast back to ``q.dtype``.

Used where CLIP returns one token: ModifiedResNet's ``AttentionPool2d`` (query = spatial mean token),
the ViT's last block (class token) and the text tower's last block (EOT token, ``kv_len = eot + 1`` keeps
it causal). Computing only that query saves the other L - 1 rows of the attention, out-projection and MLP.

Entry points:

- ``attention_pool(q, k, v, *, kv_len=None)``: q ``(B, H, D)``, k/v ``(B, H, L, D)``, any strides.
- ``attention_pool_kvpacked(q, kv, *, kv_len=None)``: kv ``(B, L, 2, H, D)`` — a free view of a packed
  key/value projection ``(B, L, 2·H·D)`` (like flash-attn's ``flash_attn_kvpacked_func(q, kv)`` with one
  query) — read in place by the kernels; the backward returns one packed ``dkv``.

Backends (``clipfast.backend.select("attention_pool", device)``): ``triton``
(``clipfast.kernels.attention_pool``, run as the custom ops ``torch.ops.clipfast.attention_pool*`` with
fake implementations and autograd, so ``torch.compile`` traces them) or ``reference``
(``attention_pool_ref``). A problem the kernels don't serve (head dim > 256, fp64) runs the reference;
``fallback_reason`` says why (logged once per reason; ``python -m clipfast.info`` shows what the kernels
serve). Double backward is not supported on the kernel path.
"""
import torch

from clipfast.ops import _dispatch

__all__ = ["attention_pool", "attention_pool_ref", "attention_pool_kvpacked", "attention_pool_kvpacked_ref",
           "fallback_reason"]


def attention_pool_ref(q, k, v, *, kv_len=None):
    """Plain differentiable PyTorch single-query attention (the CPU path and the oracle).

    Same contract as ``attention_pool``.
    """
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5
    acc = torch.promote_types(dtype, torch.float32)  # fp32 math (fp64 stays fp64)
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    scores = torch.matmul(kf, qf.unsqueeze(-1)).squeeze(-1) * scale  # (B, H, L)
    if kv_len is not None:
        keep = torch.arange(k.shape[2], device=k.device) < kv_len.to(k.device).view(-1, 1, 1)  # (B, 1, L)
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs.unsqueeze(-2), vf).squeeze(-2)  # (B, H, D)
    return out.to(dtype)


def attention_pool_kvpacked_ref(q, kv, *, kv_len=None):
    """Reference of ``attention_pool_kvpacked``: q ``(B, H, D)``, kv ``(B, L, 2, H, D)`` -> ``(B, H, D)``."""
    k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, D)
    return attention_pool_ref(q, k, v, kv_len=kv_len)


# --- custom ops (the Triton path) ----------------------------------------------------------------------------

def _kernels():
    from clipfast.kernels import attention_pool as kernels

    return kernels


def _pool_fake(q):
    return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)


@torch.library.custom_op("clipfast::attention_pool_fwd", mutates_args=())
def _pool_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             kv_len: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse) of q ``(B, H, D)`` and k, v ``(B, L, H, D)`` views; o contiguous, lse ``(B, H)`` fp32."""
    return _kernels().attention_pool_fwd(q, k, v, kv_len=kv_len)


@_pool_op.register_fake
def _(q, k, v, kv_len):
    return _pool_fake(q)


@torch.library.custom_op("clipfast::attention_pool_bwd", mutates_args=())
def _pool_backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                      lse: torch.Tensor, kv_len: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq ``(B, H, D)``, dk, dv ``(B, L, H, D)``), contiguous."""
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk, dv = (torch.empty(k.shape, dtype=k.dtype, device=k.device) for _ in range(2))
    _kernels().attention_pool_bwd(do, q, k, v, o, lse, dq, dk, dv, kv_len=kv_len)
    return dq, dk, dv


@_pool_backward_op.register_fake
def _(do, q, k, v, o, lse, kv_len):
    return q.new_empty(q.shape), k.new_empty(k.shape), k.new_empty(k.shape)


@torch.library.custom_op("clipfast::attention_pool_kvpacked_fwd", mutates_args=())
def _packed_op(q: torch.Tensor, kv: torch.Tensor, kv_len: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse) of q ``(B, H, D)`` and a packed kv ``(B, L, 2, H, D)`` read in place."""
    return _kernels().attention_pool_fwd(q, *kv.unbind(2), kv_len=kv_len)


@_packed_op.register_fake
def _(q, kv, kv_len):
    return _pool_fake(q)


@torch.library.custom_op("clipfast::attention_pool_kvpacked_bwd", mutates_args=())
def _packed_backward_op(do: torch.Tensor, q: torch.Tensor, kv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                        kv_len: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dq ``(B, H, D)``, packed dkv in kv's shape), contiguous, written by the kernel through strides."""
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dkv = torch.empty(kv.shape, dtype=kv.dtype, device=kv.device)
    _kernels().attention_pool_bwd(do, q, *kv.unbind(2), o, lse, dq, *dkv.unbind(2), kv_len=kv_len)
    return dq, dkv


@_packed_backward_op.register_fake
def _(do, q, kv, o, lse, kv_len):
    return q.new_empty(q.shape), kv.new_empty(kv.shape)


def _setup(ctx, inputs, output):
    *tensors, kv_len = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(*tensors, o, lse, kv_len)


def _backward_separate(ctx, do, _dlse):
    q, k, v, o, lse, kv_len = ctx.saved_tensors
    return (*_pool_backward_op(do, q, k, v, o, lse, kv_len), None)


def _backward_packed(ctx, do, _dlse):
    q, kv, o, lse, kv_len = ctx.saved_tensors
    return (*_packed_backward_op(do, q, kv, o, lse, kv_len), None)


_pool_op.register_autograd(_backward_separate, setup_context=_setup)
_packed_op.register_autograd(_backward_packed, setup_context=_setup)


# --- dispatch and checks -------------------------------------------------------------------------------------

def _use_kernels(q):
    return _dispatch.use_kernels("attention_pool", q.device, lambda: _kernels().unsupported(q))


def fallback_reason():
    """Why the last call that had the triton backend ran the reference instead (None if none did)."""
    return _dispatch.fallback_reason("attention_pool")


def _check_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def _check_query(q):
    _check_tensor("q", q)
    if q.dim() != 3:
        raise ValueError(f"q: expected 3 dims (B, H, D), got shape {tuple(q.shape)}")


def _check_common(q, k, kv_len):
    """dtype and device of k against q; kv_len."""
    if not q.dtype == k.dtype:
        raise TypeError(f"k, v: expected dtype {q.dtype} (same as q), got {k.dtype}")
    if not q.device == k.device:
        raise ValueError(f"k, v: expected device {q.device} (same as q), got {k.device}")
    if kv_len is not None:
        if not isinstance(kv_len, torch.Tensor) or kv_len.dtype.is_floating_point or kv_len.shape != (q.shape[0],):
            raise ValueError(f"kv_len: expected an integer tensor of shape ({q.shape[0]},), got {kv_len!r}")


def _kv_len_arg(kv_len, device):
    """kv_len as the kernels take it: int32 on q's device (a no-op when it already is)."""
    return None if kv_len is None else kv_len.to(device=device, dtype=torch.int32)


def attention_pool(q, k, v, *, kv_len=None):
    """Attention of one query per (batch, head) over L keys; softmax scale ``D ** -0.5``, fp32 math.

    Args:
        q: the pooling query, float32/float16/bfloat16.
        k, v: keys and values, same dtype and device as q; any strides.
        kv_len: optional integer tensor; batch row b attends to keys ``0 .. kv_len[b] - 1`` only
            (each must be >= 1). None: all L keys.

    Shapes:
        q: ``(B, H, D)``; k, v: ``(B, H, L, D)``; kv_len: ``(B,)``.

    Returns:
        ``(B, H, D)`` in ``q.dtype``. Differentiable in q, k and v.
    """
    _check_query(q)
    _check_tensor("k", k)
    _check_tensor("v", v)
    if k.dim() != 4 or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[2]:
        raise ValueError(f"k: expected (B, H, L, D) = ({q.shape[0]}, {q.shape[1]}, L, {q.shape[2]}), "
                         f"got {tuple(k.shape)}")
    if k.shape[2] < 1:
        raise ValueError("k: expected at least one key (L >= 1)")
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if v.dtype != k.dtype or v.device != k.device:
        raise TypeError(f"v: expected dtype {k.dtype} on {k.device} (same as k), got {v.dtype} on {v.device}")
    _check_common(q, k, kv_len)
    if not _use_kernels(q):
        return attention_pool_ref(q, k, v, kv_len=kv_len)
    return _pool_op(q, k.transpose(1, 2), v.transpose(1, 2), _kv_len_arg(kv_len, q.device))[0]


def attention_pool_kvpacked(q, kv, *, kv_len=None):
    """Attention pooling of a packed key/value projection (one query per batch row and head).

    Like ``flash_attn_kvpacked_func(q.unsqueeze(1), kv)[:, 0]`` without dropout and with the default
    scale, plus per-row key lengths.

    Args:
        q: ``(B, H, D)`` float32/float16/bfloat16 query (e.g. a ``(B, H·D)`` projection viewed).
        kv: ``(B, L, 2, H, D)``, slot 0 = keys, 1 = values: the ``(B, L, 2·H·D)`` output of one linear
            layer viewed (any strides with a unit stride along D are read in place). Same dtype/device as q.
        kv_len: optional integer ``(B,)``; row b attends to keys ``0 .. kv_len[b] - 1`` (each >= 1).

    Returns:
        ``(B, H, D)`` in q's dtype (contiguous on the kernel path). Differentiable in q and kv; the kernel
        backward returns dq and one packed ``dkv``.
    """
    _check_query(q)
    _check_tensor("kv", kv)
    if (kv.dim() != 5 or kv.shape[0] != q.shape[0] or kv.shape[2] != 2
            or kv.shape[3:] != q.shape[1:] or kv.shape[1] < 1):
        raise ValueError(f"kv: expected (B, L, 2, H, D) = ({q.shape[0]}, L >= 1, 2, {q.shape[1]}, {q.shape[2]}), "
                         f"got {tuple(kv.shape)}")
    _check_common(q, kv, kv_len)
    if not _use_kernels(q):
        return attention_pool_kvpacked_ref(q, kv, kv_len=kv_len)
    return _packed_op(q, kv, _kv_len_arg(kv_len, q.device))[0]
