"""Multi-head scaled dot-product attention on ``(B, H, L, D)`` tensors, optionally causal.

Math: ``out = softmax(q @ k^T * scale + M) @ v`` with ``scale = D ** -0.5`` and ``M`` the causal mask
(``-inf`` above the diagonal, aligned to the top-left) when ``causal=True``. Softmax accumulates in fp32.
The reference goes through ``F.scaled_dot_product_attention(is_causal=...)``, so PyTorch can pick its flash /
memory-efficient kernels (an explicit mask tensor would block them).
"""
import torch
import torch.nn.functional as F

from clipfast import backend

__all__ = ["attention", "attention_ref"]


def attention_ref(q, k, v, *, causal=False):
    """Plain differentiable PyTorch attention (the CPU path and the oracle). Same contract as ``attention``."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _check_inputs(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
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
        ``(B, H, L_q, D)`` in ``q.dtype``. Differentiable in q, k and v.
    """
    _check_inputs(q, k, v)
    backend.select("attention", q.device)  # only the reference exists yet; the selector validates the op name
    return attention_ref(q, k, v, causal=causal)
