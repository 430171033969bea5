"""LayerNorm module: ``nn.LayerNorm``'s parameters and names, fp32 math through ``clipfast.ops.layer_norm``."""
from torch import nn

from clipfast.ops.layer_norm import layer_norm

__all__ = ["LayerNorm"]


class LayerNorm(nn.LayerNorm):
    """Layer norm over the last dim in fp32, cast back to the input dtype (OpenCLIP's ``LayerNormFp32``).

    Parameters ``weight``/``bias`` of shape ``(normalized_shape,)``; ``eps`` default 1e-5.
    """

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)
