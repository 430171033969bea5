"""Ops: one file per op, each with a PyTorch reference (``<op>_ref``) and a public ``<op>()`` that
dispatches to the fastest backend available (see ``clipfast.backend``)."""

from clipfast.ops.attention import (attention, attention_qkvpacked, attention_qkvpacked_ref, attention_ref,
                                    attention_varlen_qkvpacked, attention_varlen_qkvpacked_ref)
from clipfast.ops.attention_pool import (attention_pool, attention_pool_kvpacked, attention_pool_kvpacked_ref,
                                         attention_pool_ref)
from clipfast.ops.contrastive_loss import contrastive_loss, contrastive_loss_ref
from clipfast.ops.fused_adam import fused_adam, fused_adam_ref
from clipfast.ops.layer_norm import layer_norm, layer_norm_ref
from clipfast.ops.quick_gelu import quick_gelu, quick_gelu_ref
from clipfast.ops.sigmoid_loss import sigmoid_loss, sigmoid_loss_ref
