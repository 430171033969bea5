"""Layer norm over the last dimension, computed in fp32 and cast back to the input dtype.

Math: ``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`` (biased variance), all in fp32 (fp64 for fp64
inputs) whatever the dtypes of x, weight and bias; ``y`` is returned in ``x.dtype``.
This is OpenAI CLIP's ``LayerNorm`` and OpenCLIP's ``LayerNormFp32``; for fp32 inputs it equals ``F.layer_norm``.
No fused kernel (``OP_BACKENDS["layer_norm"]`` is empty): every device runs the reference, which PyTorch's
own fused layer norm kernel computes.
"""
import torch
import torch.nn.functional as F

__all__ = ["layer_norm", "layer_norm_ref"]


def layer_norm_ref(x, weight, bias, eps=1e-5):
    """Plain differentiable PyTorch fp32 layer norm (the CPU path and the oracle). Contract of ``layer_norm``."""
    acc = torch.promote_types(x.dtype, torch.float32)  # fp32 math (fp64 stays fp64)
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    return F.layer_norm(x.to(acc), (x.shape[-1],), w, b, eps).to(x.dtype)


def _check_inputs(x, weight, bias):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension (..., N), got a 0-d tensor")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[-1],):
            raise ValueError(f"{name}: expected shape ({x.shape[-1]},) to match x's last dim, "
                             f"got {tuple(getattr(t, 'shape', ()))}")
        if t.device != x.device:
            raise ValueError(f"{name}: expected device {x.device} (same as x), got {t.device}")


def layer_norm(x, weight, bias, eps=1e-5):
    """fp32 layer norm over the last dim, cast back to ``x.dtype``.

    Args:
        x: input, any floating dtype.
        weight, bias: affine parameters or None, any floating dtype (upcast to fp32).
        eps: added to the variance.

    Shapes:
        x: ``(..., N)``; weight, bias: ``(N,)``.

    Returns:
        ``(..., N)`` in ``x.dtype``. Differentiable in x, weight and bias.
    """
    _check_inputs(x, weight, bias)
    return layer_norm_ref(x, weight, bias, eps)
