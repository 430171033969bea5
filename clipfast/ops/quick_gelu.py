"""QuickGELU fused with the bias of the preceding bias-free matmul.

Math: ``y = q(x + b)`` with ``q(z) = z * sigmoid(1.702 * z)`` (OpenAI CLIP's activation). Backward:
``dL/dz = g * s * (1 + 1.702 * z * (1 - s))`` with ``s = sigmoid(1.702 * z)``; ``dL/dx = dL/dz`` and
``dL/db = sum of dL/dz over all leading dims``. The fused paths save only ``x`` (and ``b``) for backward
and recompute ``z`` and ``s`` there, so no activation-sized intermediate is kept; math is fp32.

Backends (``clipfast.backend.select``): ``triton`` (``clipfast.kernels.quick_gelu``), ``extension`` (the
``clipfast._C`` ops ``torch.ops.clipfast.quick_gelu_fwd/_bwd``: CUDA kernels and a C++ CPU kernel), or
``reference``. The fused paths run as the custom op ``torch.ops.clipfast.quick_gelu`` (with a fake
implementation and autograd), so ``torch.compile`` traces them. Double backward is not supported.
"""
import torch

from clipfast import backend as _backend
from clipfast.ops._checks import KERNEL_DTYPES

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


def _forward(x, bias, backend):
    if backend == "triton":
        from clipfast.kernels.quick_gelu import quick_gelu_fwd

        return quick_gelu_fwd(x.reshape(-1, x.shape[-1]), bias).view(x.shape)  # (M, N) -> (..., N)
    return torch.ops.clipfast.quick_gelu_fwd(x, bias)


def _backward(grad, x, bias, backend):
    if backend == "triton":
        from clipfast.kernels.quick_gelu import quick_gelu_bwd

        n = x.shape[-1]
        grad_x, grad_bias = quick_gelu_bwd(grad.reshape(-1, n), x.reshape(-1, n), bias)
        return grad_x.view(x.shape), grad_bias
    return torch.ops.clipfast.quick_gelu_bwd(grad, x, bias)


@torch.library.custom_op("clipfast::quick_gelu", mutates_args=())
def _quick_gelu_op(x: torch.Tensor, bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    """``y = q(x + bias)`` on ``backend`` ("triton" or "extension"); y is contiguous."""
    return _forward(x, bias, backend)


@_quick_gelu_op.register_fake
def _(x, bias, backend):
    return x.new_empty(x.shape)


@torch.library.custom_op("clipfast::quick_gelu_backward", mutates_args=())
def _quick_gelu_backward_op(
    grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_bias)``; grad_bias is ``(N,)``, or ``(0,)`` when bias is None."""
    return _backward(grad, x, bias, backend)


@_quick_gelu_backward_op.register_fake
def _(grad, x, bias, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape[-1] if bias is not None else 0)


def _setup_context(ctx, inputs, output):
    x, bias, backend = inputs
    ctx.save_for_backward(x, bias)
    ctx.backend = backend


def _backward_rule(ctx, grad):
    x, bias = ctx.saved_tensors
    grad_x, grad_bias = _quick_gelu_backward_op(grad, x, bias, ctx.backend)
    return grad_x, (grad_bias if bias is not None else None), None


_quick_gelu_op.register_autograd(_backward_rule, setup_context=_setup_context)


def quick_gelu(x, bias=None):
    """QuickGELU of ``x + bias``: ``y = z * sigmoid(1.702 * z)``, ``z = x + bias``, fp32 math.

    Args:
        x: input, float32/float16/bfloat16 (float64 runs the C++ kernel on CPU, else the reference).
        bias: optional bias of the preceding bias-free matmul, same dtype and device as ``x``.

    Shapes:
        x: ``(..., N)``, any strides; bias: ``(N,)``.

    Returns:
        ``(..., N)`` tensor in ``x.dtype`` (contiguous on the fused paths). Differentiable in ``x`` and
        ``bias``; backward recomputes the activation from the saved ``x`` and ``bias``.
    """
    _check_inputs(x, bias)
    backend = _backend.resolve("quick_gelu", x.device)
    if backend == "reference" or (x.dtype not in KERNEL_DTYPES and not (backend == "extension" and x.device.type == "cpu")):
        return quick_gelu_ref(x, bias)
    return _quick_gelu_op(x, bias, backend)
