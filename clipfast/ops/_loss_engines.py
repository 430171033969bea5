"""Loss engines: where the global normalisers of a loss over one process's pairs come from.

A loss over this process's pairs (image rows a (B, d), text rows b (B, d), positives on the diagonal)
needs sums over every column its rows meet and every row its columns meet. An engine supplies them and
their gradients; the loss math around it (``clipfast.ops.contrastive_loss``,
``clipfast.ops.sigmoid_loss``) is the same for all engines. The contracts are ``ContrastiveEngine`` and
``SigmoidEngine`` below; the engines:

* ``LocalContrastiveEngine`` / ``LocalSigmoidEngine``: one process, the block is the whole batch.
* ``GatherSigmoidEngine``: this rank's rows against all gathered columns (positives at rank·B), one block.
  (The contrastive gather mode needs no engine: ``row_cross_entropy`` on the gathered features.)
* ``RingContrastiveEngine`` / ``RingSigmoidEngine``: rank p keeps its own B image rows and passes text
  blocks around the ring (``clipfast.collectives.RingShift``), each block travelling with its partial
  column log-sum-exp (forward) or its gradient accumulator (backward); the next block is prefetched while
  the current one is computed. Per-rank memory is O(B·d) plus tiles: no rank ever holds all N features.

Distributed semantics (gather or ring, P processes, N = P·B pairs): rank p gets the loss L_p of its own
pairs (mean over its B rows, global normalisers) and, in backward, Σ_q ∂L_q/∂(local features): exactly
P × the single-process gradient of L = mean_p L_p, so DDP's averaging (÷P) reproduces the single-process
gradients. For ``logit_scale``/``logit_bias`` every ring rank returns the MEAN over ranks of the block
contributions (one fp64 scalar all-reduce in backward, ``clipfast.collectives.mean_share``), so DDP's
sum ÷ P is exactly Σ_p ∂L_p/∂s ÷ P — no stray world-size factor (the hazard in Inf-CL's ring), no
cross-rank cancellation. Block sizes must be equal on all ranks.
"""
from typing import Protocol

import torch

from clipfast.collectives import RingShift, mean_share, world_info
from clipfast.ops._contrastive_loss_blocks import lse_block_bwd, lse_block_fwd
from clipfast.ops._sigmoid_loss_blocks import sigmoid_block_bwd, sigmoid_block_fwd

__all__ = ["ContrastiveEngine", "SigmoidEngine", "LocalContrastiveEngine", "LocalSigmoidEngine",
           "GatherSigmoidEngine", "RingContrastiveEngine", "RingSigmoidEngine"]

Tensor = torch.Tensor


class ContrastiveEngine(Protocol):
    """Global LSEs of S = s·a·bᵀ for this process's rows a (B, d) and columns b (B, d), and their gradients."""

    def forward(self, a: Tensor, b: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(lse_row (B,), lse_col (B,), positives): the LSEs over every column / row these rows / columns
        meet, and the (B,) dots a_i·b_i if the engine gets them from its own tiles (else None)."""

    def backward(self, a: Tensor, b: Tensor, scale: Tensor, lse_row: Tensor, lse_col: Tensor, coef_row: Tensor,
                 coef_col: Tensor, diag_coef: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(da, db, dscale) of Σ coef_row·lse_row + Σ coef_col·lse_col − diag_coef·Σ_i S_ii, summed over every
        block these rows and columns meet (dscale: this rank's share, see the module docstring)."""


class SigmoidEngine(Protocol):
    """SigLIP sums of softplus(−z·x), x = s·a·bᵀ + bias, over every column this process's rows meet."""

    def forward(self, a: Tensor, b: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        """0-d float64 Σ_ij softplus(−z_ij·x_ij) over this rank's rows and every column they meet."""

    def backward(self, a: Tensor, b: Tensor, scale: Tensor, bias: Tensor,
                 c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(da, db, dscale, dbias) of c·(that sum), db for this process's own columns b."""


class LocalContrastiveEngine:
    """Single-process engine: the block is the whole batch; positives from the forward's own tiles."""

    def __init__(self, chunk_size=None, backend=None):
        self.chunk_size, self.backend = chunk_size, backend

    def forward(self, a, b, scale):
        return lse_block_fwd(a, b, scale, chunk_size=self.chunk_size, backend=self.backend, positive_offset=0)

    def backward(self, a, b, scale, lse_row, lse_col, coef_row, coef_col, diag_coef):
        return lse_block_bwd(a, b, scale, lse_row, lse_col, coef_row, coef_col, diag=(0, diag_coef),
                             chunk_size=self.chunk_size, backend=self.backend)


class LocalSigmoidEngine:
    """Single-process engine: the block is the whole batch, positives on the diagonal."""

    def __init__(self, chunk_size=None, backend=None):
        self.chunk_size, self.backend = chunk_size, backend

    def forward(self, a, b, scale, bias):
        return sigmoid_block_fwd(a, b, scale, bias, 0, chunk_size=self.chunk_size, backend=self.backend)

    def backward(self, a, b, scale, bias, c):
        return sigmoid_block_bwd(a, b, scale, bias, c, 0, chunk_size=self.chunk_size, backend=self.backend)


class GatherSigmoidEngine:
    """This rank's rows against all gathered columns b (P·B, d), positives at offset rank·B, one block."""

    def __init__(self, rank, chunk_size=None, backend=None):
        self.rank, self.chunk_size, self.backend = rank, chunk_size, backend

    def forward(self, a, b, scale, bias):
        return sigmoid_block_fwd(a, b, scale, bias, self.rank * a.shape[0], chunk_size=self.chunk_size,
                                 backend=self.backend)

    def backward(self, a, b, scale, bias, c):
        return sigmoid_block_bwd(a, b, scale, bias, c, self.rank * a.shape[0], chunk_size=self.chunk_size,
                                 backend=self.backend)


def _ring_backward(block_grads, travelling, group):
    """Walk the ring for a backward: at step k this rank holds the ``travelling`` tensors of rank p − k
    (its text block first) and ``block_grads(k, travelling)`` returns (local, d_block): gradients summed
    here (a list) and the gradient of the travelling block, which follows the block home accumulating
    every rank's share. Returns (Σ_k local, the complete gradient of this rank's own block)."""
    _, size = world_info(group=group)
    cur = [t.contiguous() for t in travelling]
    local = pending = None
    for k in range(size):
        prefetch = RingShift(cur, group) if k < size - 1 else None  # the next block, while this one computes
        local_k, d_block = block_grads(k, cur)
        local = local_k if local is None else [x + y for x, y in zip(local, local_k)]
        if pending is not None:  # this block's accumulator, from the previous rank
            d_block.add_(pending.wait()[0])
        pending = RingShift([d_block], group)
        if prefetch is not None:
            cur = prefetch.wait()
    return local, pending.wait()[0]


class RingContrastiveEngine:
    """Global row/column LSEs and their gradients over the ring.

    Step k: rank p holds text block q = p − k and computes the block (I_p, T_q) once: row LSE partials
    stay, column LSE partials travel with T_q and arrive home after P steps. Backward: T_q travels with
    its final LSE and coefficients; its gradient accumulator dT_q arrives home complete.
    """

    def __init__(self, group=None, chunk_size=None, backend=None):
        self.group, self.chunk_size, self.backend = group, chunk_size, backend

    def forward(self, a, b, scale):
        _, size = world_info(group=self.group)
        cur_b, lse_row, cur_col = b.contiguous(), None, None
        for k in range(size):
            prefetch = RingShift([cur_b], self.group) if k < size - 1 else None
            lr, lc = lse_block_fwd(a, cur_b, scale, chunk_size=self.chunk_size, backend=self.backend)
            lse_row = lr if lse_row is None else torch.logaddexp(lse_row, lr)
            cur_col = lc if cur_col is None else torch.logaddexp(cur_col, lc)
            (cur_col,) = RingShift([cur_col], self.group).wait()  # the partial travels with its block
            if prefetch is not None:
                (cur_b,) = prefetch.wait()
        return lse_row, cur_col, None

    def backward(self, a, b, scale, lse_row, lse_col, coef_row, coef_col, diag_coef):
        def block_grads(k, cur):
            b_q, lse_col_q, coef_col_q = cur
            da, db, ds = lse_block_bwd(a, b_q, scale, lse_row, lse_col_q, coef_row, coef_col_q,
                                       diag=(0, diag_coef) if k == 0 else None, chunk_size=self.chunk_size,
                                       backend=self.backend)
            return [da, ds.to(torch.float64)], db

        (da, dscale), db = _ring_backward(block_grads, [b, lse_col, coef_col], self.group)
        return da, db, mean_share(dscale, self.group)


class RingSigmoidEngine:
    """SigLIP sums and gradients over the ring: text blocks travel (with their gradient accumulators in
    backward); only the home block (k = 0) has positives."""

    def __init__(self, group=None, chunk_size=None, backend=None):
        self.group, self.chunk_size, self.backend = group, chunk_size, backend

    def forward(self, a, b, scale, bias):
        _, size = world_info(group=self.group)
        cur_b, total = b.contiguous(), None
        for k in range(size):
            prefetch = RingShift([cur_b], self.group) if k < size - 1 else None
            part = sigmoid_block_fwd(a, cur_b, scale, bias, 0 if k == 0 else None, chunk_size=self.chunk_size,
                                     backend=self.backend)
            total = part if total is None else total + part
            if prefetch is not None:
                (cur_b,) = prefetch.wait()
        return total

    def backward(self, a, b, scale, bias, c):
        def block_grads(k, cur):
            da, db, ds, dbias = sigmoid_block_bwd(a, cur[0], scale, bias, c, 0 if k == 0 else None,
                                                  chunk_size=self.chunk_size, backend=self.backend)
            return [da, ds.to(torch.float64), dbias.to(torch.float64)], db

        (da, dscale, dbias), db = _ring_backward(block_grads, [b], self.group)
        return da, db, mean_share(dscale, self.group), mean_share(dbias, self.group)
