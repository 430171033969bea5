"""QuickGELU fused with a bias: Triton kernels and launchers.

Math: ``y = q(z)``, ``z = x + b``, ``q(z) = z * s``, ``s = sigmoid(1.702 z)``.
Backward: ``dz = g * s * (1 + 1.702 z (1 - s))``; ``dx = dz``; ``db = sum over rows of dz``.

Algorithm: the forward is one elementwise pass over ``(BLOCK_M, BLOCK_N)`` tiles of the 2-D view
``(M, N)``. The backward recomputes ``z`` and ``s`` from ``x`` and ``b`` (nothing else is saved): each
program owns a ``BLOCK_N`` column strip of a contiguous range of rows, writes ``dx`` tile by tile and
keeps the column sums of ``dz`` in fp32 registers; it stores them into row ``pid_m`` of a small
``(n_splits, N)`` fp32 buffer (``n_splits <= MAX_ROW_SPLITS``), which the launcher sums over
``n_splits`` (deterministic, no atomics, no full-size temporary).

Limits: fp32/fp16/bf16 inputs with a unit stride on the last dim (the launchers copy otherwise); fp32
math; N < 2**31 and each row stride < 2**31, M * N may exceed 2**31.
"""
import torch
import triton
import triton.language as tl

from . import _aot
from ._common import DTYPE_NAMES

# Heuristic table keyed by N: (max N, BLOCK_M, BLOCK_N, num_warps, num_stages); the first row with
# N <= max N wins. Tiles hold 4096 elements (32 per thread at 4 warps), enough bytes in flight for a
# memory-bound pass. The launches and the AOT compile read num_warps/num_stages from here.
_CONFIGS = (
    (128, 16, 128, 4, 1),
    (None, 8, 512, 4, 1),
)
# Upper bound on the row splits of the backward (rows of the bias-gradient partial buffer); the same
# value as kBiasRowBlocksMax in csrc/quick_gelu.cuh (tests/ops/test_quick_gelu.py ties them).
MAX_ROW_SPLITS = 256


@triton.jit
def _quick_gelu_fwd_kernel(
    x_ptr, b_ptr, y_ptr,
    n_rows, n_cols,
    stride_xm, stride_ym,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    mask = (rows[:, None] < n_rows) & col_mask[None, :]
    z = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        z = z + b[None, :]
    s = 1.0 / (1.0 + tl.exp(-1.702 * z))
    y = z * s
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _quick_gelu_bwd_kernel(
    g_ptr, x_ptr, b_ptr, dx_ptr, db_partial_ptr,  # db_partial: (n_splits, n_cols) fp32
    n_rows, n_cols,
    rows_per_split,  # a multiple of BLOCK_M
    stride_gm, stride_xm, stride_dxm,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    if HAS_BIAS:
        b = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    else:
        b = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid_m * rows_per_split
    for m0 in range(0, rows_per_split, BLOCK_M):
        rows = row_start + m0 + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < n_rows) & col_mask[None, :]
        g = tl.load(g_ptr + rows[:, None] * stride_gm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        z = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        z = z + b[None, :]
        s = 1.0 / (1.0 + tl.exp(-1.702 * z))
        dz = g * s * (1.0 + 1.702 * z * (1.0 - s))  # 0 where masked (g = 0)
        tl.store(dx_ptr + rows[:, None] * stride_dxm + cols[None, :], dz.to(dx_ptr.dtype.element_ty), mask=mask)
        acc += tl.sum(dz, axis=0)
    if HAS_BIAS:
        tl.store(db_partial_ptr + pid_m * n_cols + cols, acc, mask=col_mask)


def _config(n_cols):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a row length of ``n_cols``."""
    for max_n, block_m, block_n, num_warps, num_stages in _CONFIGS:
        if max_n is None or n_cols <= max_n:
            return block_m, block_n, num_warps, num_stages


def _row_splits(n_rows, block_m):
    """(rows_per_split, n_splits) of the backward: at most MAX_ROW_SPLITS splits, BLOCK_M-aligned."""
    per = triton.cdiv(triton.cdiv(n_rows, MAX_ROW_SPLITS), block_m) * block_m
    return per, triton.cdiv(n_rows, per)


def _check(name, t, n_cols=None, like=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if n_cols is None and t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (M, N) tensor, got shape {tuple(t.shape)}")
    if n_cols is not None and (t.dim() != 1 or t.shape[0] != n_cols):
        raise ValueError(f"{name}: expected shape ({n_cols},), got {tuple(t.shape)}")
    if t.dtype not in DTYPE_NAMES:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")
    if like is not None and t.dtype != like.dtype:
        raise TypeError(f"{name}: expected dtype {like.dtype} (same as x), got {t.dtype}")
    if like is not None and t.device != like.device:
        raise ValueError(f"{name}: expected device {like.device} (same as x), got {t.device}")


def _unit_stride(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def quick_gelu_fwd(x, bias=None):
    """``y = q(x + bias)``.

    Args:
        x: ``(M, N)`` fp32/fp16/bf16, any row stride.
        bias: ``(N,)`` same dtype and device, or None.

    Returns:
        y: ``(M, N)`` contiguous, ``x.dtype``.
    """
    _check("x", x)
    n_rows, n_cols = x.shape
    if bias is not None:
        _check("bias", bias, n_cols=n_cols, like=x)
        bias = bias.contiguous()
    x = _unit_stride(x)
    y = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    block_m, block_n, num_warps, num_stages = _config(n_cols)
    grid = (triton.cdiv(n_rows, block_m), triton.cdiv(n_cols, block_n))
    _quick_gelu_fwd_kernel[grid](
        x, bias if bias is not None else x, y, n_rows, n_cols, x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages,
    )
    return y


def quick_gelu_bwd(grad, x, bias=None):
    """Gradients of ``y = q(x + bias)``, recomputing the activation from ``x`` and ``bias``.

    Args:
        grad: ``(M, N)`` upstream gradient ``dL/dy``, same dtype and device as x.
        x: ``(M, N)`` fp32/fp16/bf16.
        bias: ``(N,)`` or None.

    Returns:
        (grad_x ``(M, N)`` contiguous, grad_bias ``(N,)`` or ``(0,)`` when bias is None), ``x.dtype``.
    """
    _check("x", x)
    _check("grad", grad, like=x)
    if grad.shape != x.shape:
        raise ValueError(f"grad: expected shape {tuple(x.shape)} (same as x), got {tuple(grad.shape)}")
    n_rows, n_cols = x.shape
    if bias is not None:
        _check("bias", bias, n_cols=n_cols, like=x)
        bias = bias.contiguous()
    x, grad = _unit_stride(x), _unit_stride(grad)
    grad_x = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    if bias is None:
        grad_bias = torch.empty((0,), dtype=x.dtype, device=x.device)
    elif grad_x.numel() == 0:
        return grad_x, torch.zeros((n_cols,), dtype=x.dtype, device=x.device)
    if grad_x.numel() == 0:
        return grad_x, grad_bias
    block_m, block_n, num_warps, num_stages = _config(n_cols)
    rows_per_split, n_splits = _row_splits(n_rows, block_m)
    partial = torch.empty((n_splits, n_cols), dtype=torch.float32, device=x.device) if bias is not None else x
    grid = (triton.cdiv(n_cols, block_n), n_splits)
    _quick_gelu_bwd_kernel[grid](
        grad, x, bias if bias is not None else x, grad_x, partial,
        n_rows, n_cols, rows_per_split, grad.stride(0), x.stride(0), grad_x.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages,
    )
    if bias is not None:
        grad_bias = partial.sum(dim=0).to(x.dtype)  # (n_splits, N) -> (N,), fixed order
    return grad_x, grad_bias


def aot_launches():
    """Representative launcher calls for the AOT compile, on ``meta`` tensors (nothing allocated or run):
    each table row (N = 3072, a ViT-B MLP; N = 96) with aligned sizes, and odd ones (77·3 rows × 130),
    each dtype, with and without bias, forward and backward."""
    for dtype, ty in DTYPE_NAMES.items():
        for m, n in ((8192, 3072), (4096, 96), (231, 130), (231, 100)):
            x = torch.empty(m, n, dtype=dtype, device="meta")
            for bias in (torch.empty(n, dtype=dtype, device="meta"), None):
                tag = f"{ty} {m}x{n}{' bias' if bias is not None else ''}"
                yield f"{tag} fwd", quick_gelu_fwd, (x, bias), {}
                yield f"{tag} bwd", quick_gelu_bwd, (x, x, bias), {}


def aot_specs():
    """Every distinct binary the representative calls of ``aot_launches`` make the JIT build."""
    return _aot.specs_from_launches(aot_launches())
