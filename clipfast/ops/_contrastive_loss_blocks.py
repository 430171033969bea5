"""One block of the contrastive loss on the chosen backend: rows a (M, d) against columns b (N, d), S = s·a·bᵀ.

``lse_block_fwd`` / ``lse_block_bwd`` are the block contract every loss engine (``clipfast.ops._loss_engines``)
builds on — the Triton launchers of ``clipfast.kernels.contrastive_loss`` or the chunked PyTorch path
(``clipfast.ops._contrastive_loss_chunked``) behind one signature. ``row_cross_entropy`` is the
differentiable per-row cross-entropy of one block, for OpenCLIP's gather mode (``clipfast.ClipLoss``).
"""
import math

import torch

from clipfast import backend as _backend
from clipfast.ops._checks import acc_dtype, check_chunk, check_features, check_scalar
from clipfast.ops._contrastive_loss_chunked import lse_bwd_chunked, lse_fwd_chunked

__all__ = ["lse_block_fwd", "lse_block_bwd", "row_cross_entropy"]


def lse_block_fwd(a, b, scale, *, want_row=True, want_col=True, chunk_size=None, backend=None,
                  positive_offset=None):
    """Row and column log-sum-exp of S = scale·a·bᵀ over one block, each S tile computed once.

    Args:
        a: (M, d), b: (N, d) features, float32/float16/bfloat16, same dtype and device.
        scale: 0-d tensor s (not differentiated here).
        want_row / want_col: skip a direction (returned as None) on the chunked path.
        chunk_size: tile edge of the chunked path (default 2048); ignored by Triton.
        backend: "triton" or "reference"; None → ``clipfast.backend.select``.
        positive_offset: None, or k: also return the positives' dots a_i·b_{i+k} (M,), unscaled, 0 where
            i + k is outside the block (on Triton from the forward's own tiles).
    Returns:
        (lse_row (M,), lse_col (N,)), each or None: float32 from Triton, float64 from the chunked path
        (an O(N) cost that keeps lse − S exact to S's own rounding); and, with ``positive_offset``, the
        (M,) dots in the compute dtype.
    """
    backend = backend or _backend.select("contrastive_loss", a.device)
    if backend == "triton" and a.dtype != torch.float64:
        from clipfast.kernels.contrastive_loss import contrastive_loss_fwd

        lse_row, lse_col, *pos = contrastive_loss_fwd(a, b, scale.detach().float().reshape(1), positive_offset)
        return (lse_row if want_row else None), (lse_col if want_col else None), *pos
    return lse_fwd_chunked(a, b, float(scale), want_row, want_col, check_chunk(chunk_size), positive_offset)


def lse_block_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, *, diag=None, chunk_size=None,
                  backend=None):
    """Gradients of Σ_i coef_row_i·lse_row_i + Σ_j coef_col_j·lse_col_j − c·Σ_i S_{i,i+k} for one block.

    Args:
        a: (M, d), b: (N, d); scale: 0-d tensor s.
        lse_row (M,), lse_col (N,): the GLOBAL LSEs of these rows / columns; either may be None together
            with its coefficient (that direction contributes nothing).
        coef_row (M,), coef_col (N,): weights, e.g. grad·0.5/N.
        diag: None, or (k, c): the positives (i, i + k) of this block enter with weight −c (a float, a
            0-d tensor or a per-row (M,) tensor), e.g. (0, grad/N) for the CLIP loss.
    Returns:
        (da (M, d), db (N, d), dscale 0-d), fp32 (fp64 for fp64 inputs): with G = P − c·[j = i + k],
        da = s·G·b, db = s·Gᵀ·a, dscale = Σ_ij G_ij a_i·b_j.
    """
    backend = backend or _backend.select("contrastive_loss", a.device)
    if backend == "triton" and a.dtype != torch.float64:
        from clipfast.kernels.contrastive_loss import contrastive_loss_bwd

        (m, _), n = a.shape, b.shape[0]
        f32 = dict(dtype=torch.float32, device=a.device)
        if lse_row is None:
            lse_row, coef_row = torch.full((m,), math.inf, **f32), torch.zeros(m, **f32)
        if lse_col is None:
            lse_col, coef_col = torch.full((n,), math.inf, **f32), torch.zeros(n, **f32)
        # The positives and d(scale) are folded into the kernel (no division by s: finite at s = 0).
        return contrastive_loss_bwd(a, b, scale.detach().float().reshape(1), lse_row.float(), lse_col.float(),
                                    coef_row.float(), coef_col.float(), positive=diag)
    if diag is not None and not (isinstance(diag[1], torch.Tensor) and diag[1].dim()):
        diag = (diag[0], float(diag[1]))
    return lse_bwd_chunked(a, b, float(scale), lse_row, lse_col, coef_row, coef_col, diag, check_chunk(chunk_size))


@torch.library.custom_op("clipfast::row_cross_entropy", mutates_args=())
def _row_cross_entropy_op(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, offset: int,
                          chunk_size: int | None, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ce (M,) in the compute dtype, lse_row (M,) float64): ce_i = lse_row_i − S_{i,i+offset}."""
    lse_row, _, s_ii = lse_block_fwd(a, b, scale, want_col=False, chunk_size=chunk_size, backend=backend,
                                     positive_offset=offset)
    lse_row = lse_row.double()
    return (lse_row - scale.double() * s_ii.double()).to(acc_dtype(a)), lse_row


@_row_cross_entropy_op.register_fake
def _(a, b, scale, offset, chunk_size, backend):
    return a.new_empty(a.shape[0], dtype=acc_dtype(a)), a.new_empty(a.shape[0], dtype=torch.float64)


@torch.library.custom_op("clipfast::row_cross_entropy_backward", mutates_args=())
def _row_cross_entropy_backward_op(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                                   lse_row: torch.Tensor, offset: int, chunk_size: int | None,
                                   backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(da, db, dscale) of Σ_i grad_i·ce_i, in the dtypes of a, b and scale."""
    g = grad.to(torch.float64).contiguous()
    da, db, dscale = lse_block_bwd(a, b, scale, lse_row, None, g, None, diag=(offset, g), chunk_size=chunk_size,
                                   backend=backend)
    da = da.to(a.dtype)  # frees da's fp32 accumulator before db's 16-bit copy is made
    return da, db.to(b.dtype), dscale.to(scale.dtype).reshape(scale.shape)


@_row_cross_entropy_backward_op.register_fake
def _(grad, a, b, scale, lse_row, offset, chunk_size, backend):
    return a.new_empty(a.shape), b.new_empty(b.shape), scale.new_empty(scale.shape)


def _row_ce_setup(ctx, inputs, output):
    a, b, scale, offset, chunk_size, backend = inputs
    ctx.save_for_backward(a, b, scale, output[1])
    ctx.args = (offset, chunk_size, backend)


def _row_ce_backward(ctx, grad, _grad_lse):
    a, b, scale, lse_row = ctx.saved_tensors
    return (*_row_cross_entropy_backward_op(grad, a, b, scale, lse_row, *ctx.args), None, None, None)


_row_cross_entropy_op.register_autograd(_row_ce_backward, setup_context=_row_ce_setup)


def row_cross_entropy(a, b, scale, offset=0, *, chunk_size=None):
    """Per-row cross-entropy of S = scale·a·bᵀ with row i's target column i + ``offset``, chunked.

    Args:
        a: (M, d) rows (e.g. this rank's images); b: (N, d) columns (e.g. all texts), N ≥ offset + M.
        scale: 0-d tensor s; offset: column of row 0's positive (rank·B in the gather mode).
    Returns:
        (M,) fp32 ``lse_row_i − S_{i,i+offset}`` (= ``F.cross_entropy(S, targets, reduction="none")``);
        gradients to a, b and scale, O(M + N) memory plus tiles. Runs as the custom op
        ``torch.ops.clipfast.row_cross_entropy`` (traced by ``torch.compile``).
    """
    check_features(a, b, square=False, names=("a", "b"))
    if not 0 <= offset <= b.shape[0] - a.shape[0]:
        raise ValueError(f"offset: expected 0 <= offset <= {b.shape[0] - a.shape[0]} (N - M), got {offset}")
    scale = check_scalar(scale, a.device, "scale")
    check_chunk(chunk_size)
    return _row_cross_entropy_op(a, b, scale, offset, chunk_size, _backend.resolve("contrastive_loss", a.device))[0]
