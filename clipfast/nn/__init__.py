"""Modules that own parameters (OpenCLIP names) and call ``clipfast.ops`` only."""

from clipfast.nn.attention import Attention, ResidualAttentionBlock, Transformer
from clipfast.nn.layer_norm import LayerNorm
from clipfast.nn.resnet import AttentionPool2d, Bottleneck, ModifiedResNet
from clipfast.nn.vision import PatchDropout, VisionTransformer
from clipfast.nn.quick_gelu import LinearQuickGELU, QuickGELU
