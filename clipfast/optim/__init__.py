"""Optimizers: ``Adam`` / ``AdamW`` with fused steps, bf16/fp16 statistics and stochastically rounded bf16
weights (``clipfast.optim.adamw``)."""
from clipfast.optim.adamw import PER_TENSOR_STATE, STATE_DTYPES, Adam, AdamW

__all__ = ["Adam", "AdamW", "STATE_DTYPES", "PER_TENSOR_STATE"]
