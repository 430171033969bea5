"""QuickGELU modules: the activation alone, and a Linear with bias + QuickGELU fused (CLIP's ``mlp.c_fc``)."""
import torch.nn.functional as F
from torch import nn

from clipfast.ops.quick_gelu import quick_gelu

__all__ = ["QuickGELU", "LinearQuickGELU"]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 * x)``, as open_clip's ``QuickGELU``; no parameters."""

    def forward(self, x):
        return quick_gelu(x)


class LinearQuickGELU(nn.Linear):
    """``quick_gelu(x @ weight.T + bias)`` with the bias add fused into the activation.

    Parameters keep ``nn.Linear``'s names and shapes (``weight (out_features, in_features)``,
    ``bias (out_features,)``), so it replaces CLIP's ``mlp.c_fc`` and loads its state dict strictly;
    the following ``mlp.gelu`` then becomes ``nn.Identity`` (it has no parameters).

    Shapes:
        x: ``(..., in_features)``; returns ``(..., out_features)``.
    """

    def forward(self, x):
        h = F.linear(x, self.weight)
        # Under autocast the matmul output is low precision while the bias parameter stays fp32.
        bias = None if self.bias is None else self.bias.to(h.dtype)
        return quick_gelu(h, bias)
