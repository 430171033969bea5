"""OpenCLIP-compatible loss modules on clipfast's chunked O(N)-memory losses.

``ClipLoss`` and ``SigLipLoss`` take OpenCLIP's constructor arguments and ``forward`` contracts, so
``loss(**model_out, output_dict=True)`` works in OpenCLIP's training loop; the N×N logits are never
materialised (see ``clipfast.ops.contrastive_loss`` / ``clipfast.ops.sigmoid_loss``). Distributed
modes (``clipfast.ops._loss_engines``, ``clipfast.collectives``): OpenCLIP's gather modes with the same
gradient semantics, and ``mode="ring"`` (O(B·d) memory per rank). Loss values are fp32 whatever the
feature dtype. On one process both losses are custom ops: ``torch.compile(fullgraph=True)`` traces them.
"""
import torch
import torch.nn as nn

from clipfast import backend as _backend
from clipfast.collectives import all_gather_features
from clipfast.ops._checks import check_features, check_scalar
from clipfast.ops.contrastive_loss import contrastive_loss, local_contrastive_loss
from clipfast.ops._contrastive_loss_blocks import row_cross_entropy
from clipfast.ops._loss_engines import GatherSigmoidEngine, RingContrastiveEngine, RingSigmoidEngine
from clipfast.ops.sigmoid_loss import local_sigmoid_loss, sigmoid_loss

__all__ = ["ClipLoss", "SigLipLoss"]

MODES = ("gather", "ring")  # ClipLoss(mode=...)


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return mode


class ClipLoss(nn.Module):
    """CLIP's symmetric contrastive loss, OpenCLIP ``ClipLoss`` compatible, in O(N) extra memory.

    Args:
        local_loss: (distributed) each rank computes the loss of its own B rows against all N columns,
            labels offset by rank·B (OpenCLIP semantics); False: every rank computes the full N×N loss.
        gather_with_grad: (distributed) gather features with gradient (backward sums every copy's grad).
        cache_labels: accepted for compatibility (no label tensor is ever built).
        rank, world_size: this process's rank and the number of processes (OpenCLIP passes them).
        use_horovod: not supported (raises if True).
        mode: "gather" (OpenCLIP's semantics for the flags above) or "ring" (ring exchange of text
            blocks; implies local_loss + gradient to the owners; O(B·d) memory per rank).
        chunk_size: tile edge of the chunked CPU path (default: clipfast.ops' default).
        group: torch.distributed process group (default: the world).

    forward(image_features (B, d), text_features (B, d), logit_scale (0-d, exponentiated),
    logit_bias=None, output_dict=False) → 0-d loss, or ``{"contrastive_loss": loss}``. A logit_bias
    is added to every logit by OpenCLIP and cancels in the softmax; it gets a zero gradient here.
    """

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
                 use_horovod=False, *, mode="gather", chunk_size=None, group=None):
        super().__init__()
        if use_horovod:
            raise ValueError("use_horovod: horovod is not supported by clipfast; use torch.distributed")
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        self.rank, self.world_size, self.use_horovod = rank, world_size, use_horovod
        self.mode, self.chunk_size, self.group = _check_mode(mode), chunk_size, group

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        if self.world_size <= 1:
            loss = contrastive_loss(image_features, text_features, logit_scale, chunk_size=self.chunk_size)
        elif self.mode == "ring":
            loss = self._ring(image_features, text_features, logit_scale)
        else:
            loss = self._gather(image_features, text_features, logit_scale)
        if logit_bias is not None and isinstance(logit_bias, torch.Tensor) and logit_bias.requires_grad:
            loss = loss + 0 * logit_bias.sum()  # constant shift of all logits: zero gradient, kept in graph
        return {"contrastive_loss": loss} if output_dict else loss

    def _ring(self, image_features, text_features, logit_scale):
        check_features(image_features, text_features)
        scale = check_scalar(logit_scale, image_features.device)
        engine = RingContrastiveEngine(self.group, self.chunk_size,
                                       _backend.resolve("contrastive_loss", image_features.device))
        return local_contrastive_loss(image_features, text_features, scale, engine)

    def _gather(self, image_features, text_features, logit_scale):
        kw = dict(with_grad=self.gather_with_grad, local_loss=self.local_loss, rank=self.rank, group=self.group)
        all_image = all_gather_features(image_features, **kw)
        all_text = all_gather_features(text_features, **kw)
        if not self.local_loss:
            return contrastive_loss(all_image, all_text, logit_scale, chunk_size=self.chunk_size)
        offset = self.rank * image_features.shape[0]
        ce_image = row_cross_entropy(image_features, all_text, logit_scale, offset, chunk_size=self.chunk_size)
        ce_text = row_cross_entropy(text_features, all_image, logit_scale, offset, chunk_size=self.chunk_size)
        return (ce_image.mean() + ce_text.mean()) / 2


class SigLipLoss(nn.Module):
    """SigLIP's sigmoid loss, OpenCLIP ``SigLipLoss`` compatible, O(N) memory in forward and backward.

    Args:
        cache_labels: accepted for compatibility (no label matrix is ever built).
        rank, world_size: as OpenCLIP.
        dist_impl: OpenCLIP's "bidir" | "shift" | "reduce" | "gather" (default "bidir"). "gather"
            all-gathers the texts with gradient and computes this rank's rows against all of them,
            chunked; the others run clipfast's ring (text blocks and their gradients travel around the
            ring; O(B·d) memory per rank). All give OpenCLIP's loss and gradients.
        chunk_size, group: as ``ClipLoss``.

    forward(image_features, text_features, logit_scale, logit_bias, output_dict=False) → 0-d loss
    ``Σ_{i local, all j} softplus(−z_ij·(s·I_i·T_j + b)) / B`` or ``{"contrastive_loss": loss}``.
    """

    def __init__(self, cache_labels=False, rank=0, world_size=1, dist_impl=None, *, chunk_size=None, group=None):
        super().__init__()
        self.cache_labels, self.rank, self.world_size = cache_labels, rank, world_size
        self.dist_impl = dist_impl or "bidir"
        if self.dist_impl not in ("bidir", "shift", "reduce", "gather"):
            raise ValueError(f"dist_impl: expected 'bidir', 'shift', 'reduce' or 'gather', got {dist_impl!r}")
        self.chunk_size, self.group = chunk_size, group

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict=False):
        if self.world_size <= 1:
            loss = sigmoid_loss(image_features, text_features, logit_scale, logit_bias, chunk_size=self.chunk_size)
        else:
            loss = self._distributed(image_features, text_features, logit_scale, logit_bias)
        return {"contrastive_loss": loss} if output_dict else loss

    def _distributed(self, image_features, text_features, logit_scale, logit_bias):
        check_features(image_features, text_features)
        dev = image_features.device
        scale = check_scalar(logit_scale, dev)
        bias = check_scalar(logit_bias, dev, "logit_bias")
        be = _backend.resolve("sigmoid_loss", dev)
        if self.dist_impl == "gather":
            all_text = all_gather_features(text_features, with_grad=True, group=self.group)
            engine = GatherSigmoidEngine(self.rank, self.chunk_size, be)
            return local_sigmoid_loss(image_features, all_text, scale, bias, engine)
        engine = RingSigmoidEngine(self.group, self.chunk_size, be)
        return local_sigmoid_loss(image_features, text_features, scale, bias, engine)
