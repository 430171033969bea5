"""QuickGELU fused with the bias of the preceding bias-free matmul.

Math: ``y = q(x + b)`` with ``q(z) = z * sigmoid(1.702 * z)`` (OpenAI CLIP's activation). Backward:
``dL/dz = g * s * (1 + 1.702 * z * (1 - s))`` with ``s = sigmoid(1.702 * z)``; ``dL/dx = dL/dz`` and
``dL/db = sum over all leading dims of dL/dz``.
"""
import torch

__all__ = ["quick_gelu", "quick_gelu_ref"]

_ALPHA = 1.702


def quick_gelu_ref(x, bias=None):
    """Plain differentiable PyTorch QuickGELU with an optional fused bias (the oracle and CPU path).

    Args:
        x: input, any floating dtype.
        bias: optional, added along the last dimension before the activation.

    Shapes:
        x: ``(..., N)``; bias: ``(N,)``; returns ``(..., N)`` in ``x.dtype``.
    """
    z = x if bias is None else x + bias
    return z * torch.sigmoid(_ALPHA * z)


def _check_inputs(x, bias):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension (..., N), got a 0-d tensor")
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
    if bias.dim() != 1 or bias.shape[0] != x.shape[-1]:
        raise ValueError(f"bias: expected shape ({x.shape[-1]},) to match x's last dim, got {tuple(bias.shape)}")
    if bias.dtype != x.dtype:
        raise TypeError(f"bias: expected dtype {x.dtype} (same as x), got {bias.dtype}")
    if bias.device != x.device:
        raise ValueError(f"bias: expected device {x.device} (same as x), got {bias.device}")


def quick_gelu(x, bias=None):
    """QuickGELU of ``x + bias``: ``y = z * sigmoid(1.702 * z)``, ``z = x + bias``, fp32 math.

    Args:
        x: input, float32/float16/bfloat16 (float64 runs the reference).
        bias: optional bias of the preceding bias-free matmul, same dtype and device as ``x``.

    Shapes:
        x: ``(..., N)``; bias: ``(N,)``.

    Returns:
        ``(..., N)`` tensor in ``x.dtype``. Differentiable in ``x`` and ``bias``.
    """
    _check_inputs(x, bias)
    return quick_gelu_ref(x, bias)
