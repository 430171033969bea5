"""Single-query multi-head attention pooling: one query per (batch, head) attends over L keys.

Math: ``out[b, h] = sum_j p[b, h, j] * v[b, h, j]`` with ``p = softmax_j(scale * <q[b, h], k[b, h, j]>)``
over the keys ``j < kv_len[b]`` (all L when ``kv_len`` is None), ``scale = D ** -0.5``. Scores, softmax and
the weighted sum run in fp32 (fp64 for fp64 inputs); the result is cast back to ``q.dtype``.

Used where CLIP returns one token: ModifiedResNet's ``AttentionPool2d`` (query = spatial mean token),
the ViT's last block (class token) and the text tower's last block (EOT token, ``kv_len = eot + 1`` keeps
it causal). Computing only that query saves the other L - 1 rows of the attention, out-projection and MLP.
"""
import torch

from clipfast import backend

__all__ = ["attention_pool", "attention_pool_ref"]


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


def _check_inputs(q, k, v, kv_len):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if q.dim() != 3:
        raise ValueError(f"q: expected 3 dims (B, H, D), got shape {tuple(q.shape)}")
    if k.dim() != 4 or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[2]:
        raise ValueError(f"k: expected (B, H, L, D) = ({q.shape[0]}, {q.shape[1]}, L, {q.shape[2]}), "
                         f"got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.shape[2] < 1:
        raise ValueError("k: expected at least one key (L >= 1)")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"k, v: expected dtype {q.dtype} (same as q), got {k.dtype} and {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"k, v: expected device {q.device} (same as q), got {k.device} and {v.device}")
    if kv_len is not None:
        if not isinstance(kv_len, torch.Tensor) or kv_len.dtype.is_floating_point or kv_len.shape != (q.shape[0],):
            raise ValueError(f"kv_len: expected an integer tensor of shape ({q.shape[0]},), got {kv_len!r}")


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
    _check_inputs(q, k, v, kv_len)
    backend.select("attention_pool", q.device)
    return attention_pool_ref(q, k, v, kv_len=kv_len)
