"""ModifiedResNet image tower (OpenAI CLIP RN50/RN101/RN50x*), with OpenAI/OpenCLIP's parameter names.

- Stem: three 3x3 convs (first stride 2) with BN + ReLU, then AvgPool2d(2).
- ``Bottleneck``: 1x1-BN-ReLU, 3x3-BN-ReLU, AvgPool(stride) when stride > 1 (anti-aliased), 1x1-BN, + identity
  (``downsample`` = AvgPool(stride) -> 1x1 conv -> BN), ReLU. Stages ``layer1..4`` with strides 1, 2, 2, 2.
- ``AttentionPool2d``: tokens = [spatial mean, HW positions] + ``positional_embedding``; multi-head attention with
  separate ``q_proj/k_proj/v_proj``, output ``c_proj`` — computed for the one query it returns (the mean token),
  through ``clipfast.ops.attention_pool``. The k and v projections are separate layers (OpenAI/OpenCLIP keys), so
  the kernels read each ``(B, L, C)`` output in place as ``(B, L, H, D)`` (the ``(B, H, L, D)`` arguments are
  transposed views) and return dk, dv in that layout: no copies; packing them into one ``(B, L, 2C)`` kv would
  need a weight concatenation every step.

BatchNorm stays ``nn.BatchNorm2d`` (so ``SyncBatchNorm.convert_sync_batchnorm`` works). Gradient checkpointing
works per stage; running statistics are updated once per step (not again by the recomputation).
"""
import contextlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipfast.ops.attention_pool import attention_pool

__all__ = ["Bottleneck", "AttentionPool2d", "ModifiedResNet"]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        self.stride = stride
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x):
        """x: ``(B, inplanes, H, W)`` -> ``(B, 4 * planes, H / stride, W / stride)``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        out += identity
        return self.act3(out)


class AttentionPool2d(nn.Module):
    """QKV attention pooling of a feature map, returning the spatial-mean query's output only.

    Args:
        spacial_dim: feature-map side S (HW = S*S); embed_dim: channels C; num_heads: heads;
        output_dim: ``c_proj`` output size (default C).

    Shapes:
        forward: ``(B, C, S, S)`` -> ``(B, output_dim)``.
    """

    def __init__(self, spacial_dim, embed_dim, num_heads, output_dim=None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x):
        B, C = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+HW, C)
        L, H = x.shape[1], self.num_heads
        q = F.linear(x[:, 0], self.q_proj.weight, self.q_proj.bias).view(B, H, C // H)
        # (B, H, L, D) views of the (B, L, C) projections: read in place by the kernels
        k = F.linear(x, self.k_proj.weight, self.k_proj.bias).view(B, L, H, C // H).transpose(1, 2)
        v = F.linear(x, self.v_proj.weight, self.v_proj.bias).view(B, L, H, C // H).transpose(1, 2)
        out = attention_pool(q, k, v).reshape(B, C)
        return self.c_proj(out)


@contextlib.contextmanager
def _no_running_stats(module):
    """During a checkpoint recomputation: BatchNorm layers of ``module`` leave their running stats unchanged
    (momentum 0 keeps them exactly; the batch counter is restored), so a step updates them once."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem, anti-aliased strided Bottlenecks, attention pooling.

    Args:
        layers: blocks per stage (4 ints); output_dim: embedding dim; heads: attention-pool heads;
        image_size: input side (int); width: stem width (stage widths 4w, 8w, 16w, 32w).

    Shapes:
        forward: ``(B, 3, image_size, image_size)`` -> ``(B, output_dim)``.
    """

    def __init__(self, layers, output_dim, heads, image_size=224, width=64):
        super().__init__()
        self.output_dim = output_dim
        self.image_size = image_size
        self.grad_checkpointing = False
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)
        self.init_parameters()

    def _make_layer(self, planes, blocks, stride=1):
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def init_parameters(self):
        std = self.attnpool.c_proj.in_features ** -0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for name, param in stage.named_parameters():
                if name.endswith("bn3.weight"):
                    nn.init.zeros_(param)

    def lock(self, unlocked_groups=0, freeze_bn_stats=False):
        """Freeze every parameter (OpenCLIP supports no partial unlocking here); optionally freeze BN stats by
        swapping BatchNorm for torchvision's ``FrozenBatchNorm2d``, as OpenCLIP does."""
        if unlocked_groups != 0:
            raise ValueError("unlocked_groups: partial locking is not supported for ModifiedResNet, "
                             f"got {unlocked_groups}")
        for p in self.parameters():
            p.requires_grad = False
        if freeze_bn_stats:
            _freeze_batch_norm_2d(self)

    def set_grad_checkpointing(self, enable=True):
        """Checkpoint each of the 4 stages (``use_reentrant=False``); OpenCLIP's ResNet ignores this call."""
        self.grad_checkpointing = enable

    def stem(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, x):
        x = self.stem(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            if self.grad_checkpointing and torch.is_grad_enabled():
                def contexts(stage=stage):
                    return contextlib.nullcontext(), _no_running_stats(stage)
                x = checkpoint(stage, x, use_reentrant=False, context_fn=contexts)
            else:
                x = stage(x)
        return self.attnpool(x)


def _freeze_batch_norm_2d(module):
    """Replace every BatchNorm2d/SyncBatchNorm child with a ``FrozenBatchNorm2d`` holding the same values."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.data = child.weight.data.clone().detach()
            frozen.bias.data = child.bias.data.clone().detach()
            frozen.running_mean.data = child.running_mean.data
            frozen.running_var.data = child.running_var.data
            setattr(module, name, frozen)
        else:
            _freeze_batch_norm_2d(child)
