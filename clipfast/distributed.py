"""torch.distributed helpers for the losses: rank discovery, gathers with gradient, and ring engines.

Two ways to spread a batch of N = P·B pairs over P processes (gloo on CPU, NCCL on GPU):

* gather (OpenCLIP's scalable mode, ``local_loss=True, gather_with_grad=True``): every rank all-gathers
  the features (backward sums the gradients of every copy back to the owner) and computes the loss
  of its B rows against all N columns, chunked, so memory is O(N·d) for the gathered features plus
  O(N) and tiles.
* ring: rank p keeps its own B image rows and passes text blocks around the ring with
  ``batch_isend_irecv``, each block travelling with its partial column log-sum-exp (forward) or its
  gradient accumulator (backward); the next block is prefetched while the current one is computed.
  Per-rank memory is O(B·d) plus tiles: no rank ever holds all N features.

Both give rank p the loss L_p of its own pairs (mean over its B rows, global normalisers) and, in
backward, Σ_q ∂L_q/∂(local features): exactly P × the single-process gradient of L = mean_p L_p. DDP's
gradient averaging (÷P) therefore reproduces the single-process gradients of the model and of
``logit_scale``/``logit_bias``: in the ring, every rank returns the mean over ranks of the block
contributions to d scale (one fp64 scalar all-reduce in backward), so DDP's sum ÷ P is exactly
Σ_p ∂L_p/∂s ÷ P — no stray world-size factor (the hazard in Inf-CL's ring), no cross-rank cancellation.
Block sizes must be equal on all ranks.
"""
import torch
import torch.distributed as dist

__all__ = ["world_info", "all_gather_features", "ring_shift", "RingContrastiveEngine", "RingSigmoidEngine"]


def world_info(rank=None, world_size=None, group=None):
    """(rank, world_size): the given values, else torch.distributed's (if initialised), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank(group) if rank is None else rank
        world_size = dist.get_world_size(group) if world_size is None else world_size
    return (0 if rank is None else rank), (1 if world_size is None else world_size)


class _AllGatherWithGrad(torch.autograd.Function):
    """(B, d) → (P·B, d); backward sums every rank's gradient of the whole and keeps this rank's slice
    (an all-reduce: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous()
        out = torch.empty((dist.get_world_size(group) * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype,
                          device=x.device)
        dist.all_gather(list(out.chunk(dist.get_world_size(group))), x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(dist.get_world_size(ctx.group))[dist.get_rank(ctx.group)], None


def all_gather_features(x, *, with_grad, local_loss=True, rank=None, group=None):
    """Concatenate ``x`` (B, d) from every rank into (P·B, d), rank order (OpenCLIP's ``gather_features``).

    with_grad: backward sums the gradients of every rank's copy into the owner (as
        ``torch.distributed.nn.all_gather``). Otherwise the gathered copies carry no gradient, and when
        ``local_loss`` is False this rank's own slice is replaced by ``x`` so that it keeps its gradient.
    """
    if with_grad:
        return _AllGatherWithGrad.apply(x, group)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    if not local_loss:
        parts[world_info(rank, group=group)[0]] = x
    return torch.cat(parts, dim=0)


def ring_shift(tensors, group=None):
    """Start sending ``tensors`` to the next rank and receiving the previous rank's into new buffers.

    Returns (received, wait): ``received`` are filled once ``wait()`` has returned.
    """
    rank, size = world_info(group=group)
    if size == 1:
        return list(tensors), lambda: None
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    if group is not None:
        nxt, prv = dist.get_global_rank(group, nxt), dist.get_global_rank(group, prv)
    received = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t.contiguous(), nxt, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, r, prv, group) for r in received]
    works = dist.batch_isend_irecv(ops)

    def wait():
        for w in works:
            w.wait()

    return received, wait


def _mean_share(value, group):
    """Σ over ranks of ``value`` / P, in float64 on every rank.

    A rank's ring blocks hold other ranks' column terms, so its own share of d scale is large and the
    shares cancel across ranks (like Σ_ij P_ij·cos_ij against the diagonal). Returning the mean keeps
    DDP's sum-then-divide exact in fp32 and equal on every rank.
    """
    _, size = world_info(group=group)
    value = value.to(torch.float64).clone()
    if size > 1:
        dist.all_reduce(value, group=group)
    return value / size


class RingContrastiveEngine:
    """Global row/column LSEs and their gradients over the ring (for ``local_contrastive_loss``).

    Step k: rank p holds text block q = p − k and computes the block (I_p, T_q) once: row LSE partials
    stay, column LSE partials travel with T_q and arrive home after P steps. Backward: T_q travels with
    its final LSE, its coefficients and its gradient accumulator dT_q, which arrives home complete.
    """

    def __init__(self, group=None, chunk_size=None, backend=None):
        self.group, self.chunk_size, self.backend = group, chunk_size, backend

    def forward(self, a, b, scale):
        from clipfast.ops.contrastive_loss import lse_block_fwd

        _, size = world_info(group=self.group)
        cur_b, lse_row, cur_col = b.contiguous(), None, None
        for k in range(size):
            nxt = ring_shift([cur_b], self.group) if k < size - 1 else None  # prefetch the next block
            lr, lc = lse_block_fwd(a, cur_b, scale, chunk_size=self.chunk_size, backend=self.backend)
            lse_row = lr if lse_row is None else torch.logaddexp(lse_row, lr)
            cur_col = lc if cur_col is None else torch.logaddexp(cur_col, lc)
            (cur_col,), wait_col = ring_shift([cur_col], self.group)  # partial travels with its block
            wait_col()
            if nxt is not None:
                nxt[1]()
                cur_b = nxt[0][0]
        return lse_row, cur_col

    def backward(self, a, b, scale, lse_row, lse_col, coef_row, coef_col, diag_coef):
        from clipfast.ops.contrastive_loss import lse_block_bwd

        _, size = world_info(group=self.group)
        cur = [b.contiguous(), lse_col.contiguous(), coef_col.contiguous()]
        da = dscale = pending_db = None
        for k in range(size):
            nxt = ring_shift(cur, self.group) if k < size - 1 else None
            da_k, db_k, ds_k = lse_block_bwd(a, cur[0], scale, lse_row, cur[1], coef_row, cur[2],
                                             diag=(0, diag_coef) if k == 0 else None,
                                             chunk_size=self.chunk_size, backend=self.backend)
            da = da_k if da is None else da.add_(da_k)
            dscale = ds_k if dscale is None else dscale + ds_k
            if pending_db is not None:  # the accumulator of this block, from the previous rank
                pending_db[1]()
                db_k.add_(pending_db[0][0])
            pending_db = ring_shift([db_k], self.group)
            if nxt is not None:
                nxt[1]()
                cur = nxt[0]
        pending_db[1]()
        return da, pending_db[0][0], _mean_share(dscale, self.group)


class RingSigmoidEngine:
    """SigLIP sums and gradients over the ring: text blocks travel (with their gradient accumulators in
    backward); only the home block (k = 0) has positives."""

    def __init__(self, group=None, chunk_size=None, backend=None):
        self.group, self.chunk_size, self.backend = group, chunk_size, backend

    def forward(self, a, b, scale, bias):
        from clipfast.ops.sigmoid_loss import sigmoid_block_fwd

        _, size = world_info(group=self.group)
        cur_b, total = b.contiguous(), None
        for k in range(size):
            nxt = ring_shift([cur_b], self.group) if k < size - 1 else None
            part = sigmoid_block_fwd(a, cur_b, scale, bias, 0 if k == 0 else None,
                                     chunk_size=self.chunk_size, backend=self.backend)
            total = part if total is None else total + part
            if nxt is not None:
                nxt[1]()
                cur_b = nxt[0][0]
        return total

    def backward(self, a, b, scale, bias, c):
        from clipfast.ops.sigmoid_loss import sigmoid_block_bwd

        _, size = world_info(group=self.group)
        cur_b = b.contiguous()
        da = dscale = dbias = pending_db = None
        for k in range(size):
            nxt = ring_shift([cur_b], self.group) if k < size - 1 else None
            da_k, db_k, ds_k, dbias_k = sigmoid_block_bwd(a, cur_b, scale, bias, c, 0 if k == 0 else None,
                                                          chunk_size=self.chunk_size, backend=self.backend)
            da = da_k if da is None else da.add_(da_k)
            dscale = ds_k if dscale is None else dscale + ds_k
            dbias = dbias_k if dbias is None else dbias + dbias_k
            if pending_db is not None:
                pending_db[1]()
                db_k.add_(pending_db[0][0])
            pending_db = ring_shift([db_k], self.group)
            if nxt is not None:
                nxt[1]()
                cur_b = nxt[0][0]
        pending_db[1]()
        return da, pending_db[0][0], _mean_share(dscale, self.group), _mean_share(dbias, self.group)
