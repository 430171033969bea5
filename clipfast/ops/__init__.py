"""Ops: one file per op, each with a PyTorch reference (``<op>_ref``) and a public ``<op>()`` that
dispatches to the fastest backend available (see ``clipfast.backend``)."""

from clipfast.ops.attention import attention, attention_ref  # noqa: E402
from clipfast.ops.attention_pool import attention_pool, attention_pool_ref  # noqa: E402
from clipfast.ops.layer_norm import layer_norm, layer_norm_ref  # noqa: E402
from clipfast.ops.contrastive_loss import contrastive_loss, contrastive_loss_ref  # noqa: E402
from clipfast.ops.quick_gelu import quick_gelu, quick_gelu_ref  # noqa: E402
