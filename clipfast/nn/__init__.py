"""Modules that own parameters (OpenCLIP names) and call ``clipfast.ops`` only."""

from clipfast.nn.attention import Attention, ResidualAttentionBlock, Transformer  # noqa: E402
from clipfast.nn.layer_norm import LayerNorm  # noqa: E402
from clipfast.nn.resnet import AttentionPool2d, Bottleneck, ModifiedResNet  # noqa: E402
from clipfast.nn.vision import PatchDropout, VisionTransformer  # noqa: E402
from clipfast.nn.quick_gelu import LinearQuickGELU, QuickGELU  # noqa: E402
