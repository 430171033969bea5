"""clipfast: the fastest, leanest way to train CLIP models.

Public API mirrors OpenCLIP's (``create_model``, ``CLIP``, ``ClipLoss``, ``get_tokenizer``, ...);
fused kernels live behind ``clipfast.ops`` and are chosen per device by ``clipfast.backend``.
"""

__version__ = "0.1.0"
