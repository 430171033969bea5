"""Input checks shared by the ops (the losses above all): each error names the argument and what was expected.

``check_features`` (the (N, d) feature pairs), ``check_scalar`` (logit_scale, logit_bias, ...: a finite
single value, validated without a host synchronisation on a GPU), ``check_chunk`` (the tile edge of the
chunked PyTorch path) and ``acc_dtype`` (the compute dtype every loss path uses).
"""
import math

import torch

__all__ = ["KERNEL_DTYPES", "FEATURE_DTYPES", "DEFAULT_TILES", "acc_dtype", "check_features", "check_scalar", "check_chunk"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the fused kernels serve
FEATURE_DTYPES = KERNEL_DTYPES + (torch.float64,)  # the losses: float64 on the chunked path only
# Default tile of the chunked path: rows × columns of S per step (2 buffers of 16 MiB each). On 2 CPU
# cores 1024…2048 tiles run the matmuls at the same speed; the larger one issues 4× fewer ops.
DEFAULT_TILES = (2048, 2048)


def acc_dtype(t):
    """fp32 math for fp32/fp16/bf16 inputs, fp64 for fp64 (used by gradcheck)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_features(image_features, text_features, *, square=True, names=("image_features", "text_features")):
    """Two 2-D float tensors (M, d), (N, d) of one dtype and device, N = M when ``square``, M, N ≥ 1."""
    for name, t in zip(names, (image_features, text_features)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor (N, d), got shape {tuple(t.shape)}")
        if t.dtype not in FEATURE_DTYPES:
            raise TypeError(f"{name}: expected float32, float16, bfloat16 (or float64), got {t.dtype}")
    a, b = image_features, text_features
    if a.dtype != b.dtype:
        raise TypeError(f"{names[1]}: expected dtype {a.dtype} (same as {names[0]}), got {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{names[1]}: expected device {a.device} (same as {names[0]}), got {b.device}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[1]}: expected feature size d = {a.shape[1]} (same as {names[0]}), "
                         f"got {b.shape[1]}")
    if square and a.shape[0] != b.shape[0]:
        raise ValueError(f"{names[1]}: expected N = {a.shape[0]} rows (one text per image in {names[0]}), "
                         f"got {b.shape[0]}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f"{names[0]}: expected at least one pair, got N = 0")


def check_scalar(value, device, name="logit_scale"):
    """Validate ``value`` (a finite 1-element float tensor on ``device``, or a number); return it as 0-d.

    No host synchronisation: a CPU value is checked on the host (a ValueError); on a GPU the check is
    an asynchronous device-side assert (``torch._assert_async``: a non-finite value fails the next
    synchronising call with "expected a finite value"); under ``torch.compile`` it is skipped.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), device=device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor or a number, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(f"{name}: expected a single value (0-d or 1-element tensor), got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name}: expected device {device} (same as the features), got {value.device}")
    seen = value.detach()
    if torch.compiler.is_compiling() or seen.device.type == "meta":
        pass
    elif seen.device.type == "cpu":
        if not math.isfinite(float(seen)):
            raise ValueError(f"{name}: expected a finite value, got {float(seen)}")
    else:
        torch._assert_async(torch.isfinite(seen).all(), f"{name}: expected a finite value")
    return value.reshape(())


def check_chunk(chunk_size):
    """``chunk_size`` (a positive int, or None for the default) -> the (rows, columns) tile of the chunked path."""
    if chunk_size is None:
        return DEFAULT_TILES
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
    return chunk_size, chunk_size
