"""torch.distributed collectives for the losses: rank discovery, gathers with gradient, ring shifts.

Used by the distributed loss engines (``clipfast.ops._loss_engines``, which describes the gather and ring
modes) and by ``clipfast.loss``. gloo on CPU, NCCL on GPU; with no process group everything is one rank.
"""
import torch
import torch.distributed as dist

__all__ = ["world_info", "all_gather_features", "RingShift", "mean_share"]


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


class RingShift:
    """Start sending ``tensors`` to the next rank and receiving the previous rank's into new buffers.

    ``wait()`` returns the received tensors (same shapes and dtypes), complete. With one process it
    returns ``tensors`` themselves.
    """

    def __init__(self, tensors, group=None):
        rank, size = world_info(group=group)
        self._received, self._works = list(tensors), []
        if size == 1:
            return
        nxt, prv = (rank + 1) % size, (rank - 1) % size
        if group is not None:
            nxt, prv = dist.get_global_rank(group, nxt), dist.get_global_rank(group, prv)
        self._received = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t.contiguous(), nxt, group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, r, prv, group) for r in self._received]
        self._works = dist.batch_isend_irecv(ops)

    def wait(self):
        for w in self._works:
            w.wait()
        self._works = []
        return self._received


def mean_share(value, group):
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
