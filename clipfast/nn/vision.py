"""Vision Transformer image tower with OpenCLIP's names (``conv1``, ``class_embedding``, ``positional_embedding``,
``ln_pre``, ``transformer.resblocks.*``, ``ln_post``, ``proj``).

Math: ``x = conv1(image)`` (patchify, no bias) -> ``(B, g*g, W)``, prepend ``class_embedding``, add
``positional_embedding``, optional ``PatchDropout`` (training only), ``ln_pre``, the transformer (no mask),
``ln_post`` of the class token, ``@ proj`` -> ``(B, output_dim)``. The last block runs for the class token only.
"""
from collections.abc import Sequence

import torch
from torch import nn

from clipfast.nn.attention import Transformer
from clipfast.nn.layer_norm import LayerNorm

__all__ = ["PatchDropout", "VisionTransformer"]


def _pair(x):
    return tuple(x) if isinstance(x, Sequence) else (x, x)


class PatchDropout(nn.Module):
    """Keep a random ``max(1, int(N * (1 - prob)))`` of the N patch tokens per image, always keeping the class
    token (https://arxiv.org/abs/2212.00794). Identity in eval mode. Same sampling as OpenCLIP's (top-k of
    Gaussian noise), so on CPU it keeps the same tokens for the same seed.
    """

    def __init__(self, prob=0.5):
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"prob: expected 0 <= prob < 1, got {prob}")
        self.prob = prob

    def forward(self, x):
        """x: ``(B, 1 + N, W)`` -> ``(B, 1 + N_keep, W)`` in training, unchanged in eval."""
        if not self.training or self.prob == 0.0:
            return x
        cls_tokens, x = x[:, :1], x[:, 1:]
        batch, num_tokens = x.shape[0], x.shape[1]
        keep = max(1, int(num_tokens * (1 - self.prob)))
        # CPU: the same draw as OpenCLIP (which samples on CPU whatever the device); elsewhere on the device.
        noise = torch.randn(batch, num_tokens, device=x.device if x.device.type != "cpu" else None)
        idx = noise.topk(keep, dim=-1).indices.to(x.device)
        x = x[torch.arange(batch, device=x.device)[:, None], idx]
        return torch.cat((cls_tokens, x), dim=1)


class VisionTransformer(nn.Module):
    """ViT image tower.

    Args:
        image_size, patch_size: int or (h, w); grid = image_size // patch_size.
        width, layers, heads, mlp_ratio: transformer shape.
        output_dim: embedding dim E of ``proj (W, E)``.
        patch_dropout: fraction of patch tokens dropped in training.
        quick_gelu: QuickGELU MLPs instead of exact GELU.

    Shapes:
        forward: image ``(B, 3, H, W_img)`` -> ``(B, output_dim)``.
    """

    def __init__(self, image_size, patch_size, width, layers, heads, mlp_ratio=4.0, output_dim=512,
                 patch_dropout=0.0, quick_gelu=False):
        super().__init__()
        self.image_size = _pair(image_size)
        self.patch_size = _pair(patch_size)
        self.grid_size = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=self.patch_size, stride=self.patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size[0] * self.grid_size[1] + 1, width))
        self.patch_dropout = PatchDropout(patch_dropout) if patch_dropout > 0.0 else nn.Identity()
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, quick_gelu=quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def lock(self, unlocked_groups=0, freeze_bn_stats=False):
        """Freeze all parameters, then unfreeze the last ``unlocked_groups`` of OpenCLIP's groups:
        [conv1, class_embedding, positional_embedding, ln_pre], each block but the last,
        [last block, ln_post], proj."""
        for p in self.parameters():
            p.requires_grad = False
        if unlocked_groups == 0:
            return
        groups = [[self.conv1, self.class_embedding, self.positional_embedding, self.ln_pre],
                  *[[b] for b in self.transformer.resblocks[:-1]],
                  [self.transformer.resblocks[-1], self.ln_post],
                  [self.proj]]
        for group in groups[-unlocked_groups:]:
            for item in group:
                params = [item] if isinstance(item, nn.Parameter) else item.parameters()
                for p in params:
                    p.requires_grad = True

    def set_grad_checkpointing(self, enable=True):
        self.transformer.grad_checkpointing = enable

    def no_weight_decay(self):
        return {"positional_embedding", "class_embedding"}

    def embed(self, x):
        """Patch, class and positional embeddings, patch dropout and ``ln_pre``: image -> ``(B, 1 + N, W)``."""
        x = self.conv1(x)  # (B, W, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, N, W)
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.patch_dropout(x)
        return self.ln_pre(x)

    def forward(self, x):
        x = self.embed(x)
        pooled = self.transformer(x, pool_index=0)  # (B, W): class token after the last block
        return self.ln_post(pooled) @ self.proj
