"""One block of the SigLIP loss on the chosen backend: rows a (M, d) against columns b (N, d).

x_ij = s·a_i·b_j + bias, z_ij = +1 at the positives (i, i + positive_offset), −1 elsewhere (all −1 for
``positive_offset=None``, a negatives-only block). ``sigmoid_block_fwd`` / ``sigmoid_block_bwd`` are the
contract the loss engines (``clipfast.ops._loss_engines``) build on: the Triton launchers of
``clipfast.kernels.sigmoid_loss``, or the chunked PyTorch path below (the math is in
``clipfast.ops.sigmoid_loss``'s docstring).
"""
import torch
import torch.nn.functional as F

from clipfast import backend as _backend
from clipfast.ops._checks import acc_dtype, check_chunk
from clipfast.ops._contrastive_loss_chunked import tiled_grads

__all__ = ["sigmoid_block_fwd", "sigmoid_block_bwd"]


def _sig_fwd_chunked(a, b, s, bias, offset, tiles):
    """Σ_ij softplus(−z_ij·x_ij) over one block (positives at (i, i + offset); None: none), float64."""
    (m, _), n = a.shape, b.shape[0]
    tm, tn = min(tiles[0], m), min(tiles[1], n)
    acc = acc_dtype(a)
    buf = torch.empty(tm * tn, dtype=acc, device=a.device)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for r0 in range(0, m, tm):
        ar = a[r0:r0 + tm].to(acc) * s
        for c0 in range(0, n, tn):
            bc = b[c0:c0 + tn].to(acc)
            t = buf[: ar.shape[0] * bc.shape[0]].view(ar.shape[0], bc.shape[0])
            torch.mm(ar, bc.T, out=t).add_(bias)  # x tile
            if offset is not None:
                t.diagonal(r0 + offset - c0).neg_()  # positives: −x
            total += F.softplus(t).sum().to(torch.float64)
    return total


def _sig_bwd_chunked(a, b, s, bias, c, offset, tiles):
    """(da, db, dscale, dbias) of c·Σ_ij softplus(−z_ij·x_ij) over one block; compute dtype."""
    dbias = torch.zeros((), dtype=torch.float64, device=a.device)

    def g_tile(t, r0, c0):  # S tile -> G/c = σ(x) − [positive], in place
        t.add_(bias)  # x tile
        if offset is not None:
            diag = t.diagonal(r0 + offset - c0)
            diag.neg_()
            t.sigmoid_()
            diag.neg_()  # positives: −σ(−x) = σ(x) − 1, exact
        else:
            t.sigmoid_()
        dbias.add_(t.sum().to(torch.float64))

    gb, db, dscale = tiled_grads(a, b, s, tiles, g_tile, db_alpha=c)
    return gb.mul_(s * c), db, dscale * c, dbias * c


def sigmoid_block_fwd(a, b, scale, bias, positive_offset=0, *, chunk_size=None, backend=None):
    """Σ_ij softplus(−z_ij·(scale·a_i·b_j + bias)) over one block (0-d; positives at (i, i + offset),
    ``positive_offset=None`` for a negatives-only block). a (M, d), b (N, d); scale, bias 0-d tensors."""
    backend = backend or _backend.select("sigmoid_loss", a.device)
    if backend == "triton" and a.dtype != torch.float64:
        from clipfast.kernels.sigmoid_loss import sigmoid_loss_fwd

        return sigmoid_loss_fwd(a, b, scale.detach().float(), bias.detach().float(), positive_offset).sum()
    return _sig_fwd_chunked(a, b, float(scale), float(bias), positive_offset, check_chunk(chunk_size))


def sigmoid_block_bwd(a, b, scale, bias, c, positive_offset=0, *, chunk_size=None, backend=None):
    """Gradients of c·Σ_ij softplus(−z_ij·x_ij) for one block: (da (M, d), db (N, d), dscale, dbias)."""
    backend = backend or _backend.select("sigmoid_loss", a.device)
    if backend == "triton" and a.dtype != torch.float64:
        from clipfast.kernels.sigmoid_loss import sigmoid_loss_bwd

        c = torch.as_tensor(c, dtype=torch.float32, device=a.device)
        return sigmoid_loss_bwd(a, b, scale.detach().float(), bias.detach().float(), c, positive_offset)
    return _sig_bwd_chunked(a, b, float(scale), float(bias), float(c), positive_offset, check_chunk(chunk_size))
