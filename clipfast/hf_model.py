"""OpenCLIP's ``open_clip.hf_model``: the poolers (real) and ``HFTextEncoder`` (not implemented).

Poolers map a Hugging Face encoder output ``x`` (with ``last_hidden_state (B, L, W)``, optionally
``pooler_output (B, W)``) and an ``attention_mask (B, L)`` to ``(B, W)``:

- ``MeanPooler``: ``sum_l mask * h / sum_l mask``.
- ``MaxPooler``: ``max_l`` of ``h`` with the positions where ``mask`` is nonzero set to ``-inf`` (OpenCLIP's
  semantics, kept as is).
- ``ClsPooler(use_pooler_output=True)``: ``x.pooler_output`` when present, else ``h[:, 0]``.
- ``ClsLastHiddenStatePooler``: ``h[:, 0]``.

``HFTextEncoder`` (HF text towers: roberta, xlm-roberta, mt5, nllb configs) raises ``NotImplementedError``:
clipfast builds only the CLIP text transformer so far.
"""
import re

import torch
from torch import nn

__all__ = ["register_pooler", "MeanPooler", "MaxPooler", "ClsPooler", "ClsLastHiddenStatePooler", "HFTextEncoder"]

_POOLERS = {}


def _camel2snake(s):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", s).lower()


def register_pooler(cls):
    """Class decorator: register ``cls`` under its snake-case name (``MeanPooler`` -> ``mean_pooler``)."""
    _POOLERS[_camel2snake(cls.__name__)] = cls
    return cls


@register_pooler
class MeanPooler(nn.Module):
    def forward(self, x, attention_mask):
        masked = x.last_hidden_state * attention_mask.unsqueeze(-1)
        return masked.sum(dim=1) / attention_mask.sum(-1, keepdim=True)


@register_pooler
class MaxPooler(nn.Module):
    def forward(self, x, attention_mask):
        masked = x.last_hidden_state.masked_fill(attention_mask.unsqueeze(-1).bool(), -torch.inf)
        return masked.max(1).values


@register_pooler
class ClsPooler(nn.Module):
    def __init__(self, use_pooler_output=True):
        super().__init__()
        self.cls_token_position = 0
        self.use_pooler_output = use_pooler_output

    def forward(self, x, attention_mask):
        pooled = getattr(x, "pooler_output", None)
        if self.use_pooler_output and pooled is not None:
            return pooled
        return x.last_hidden_state[:, self.cls_token_position, :]


@register_pooler
class ClsLastHiddenStatePooler(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token_position = 0

    def forward(self, x, attention_mask):
        return x.last_hidden_state[:, self.cls_token_position, :]


class HFTextEncoder(nn.Module):
    """OpenCLIP's Hugging Face text tower adapter; not implemented by clipfast (same signature)."""

    def __init__(self, model_name_or_path, output_dim, config=None, pooler_type=None, proj_type=None,
                 pretrained=True, output_tokens=False):
        raise NotImplementedError(f"HFTextEncoder({model_name_or_path!r}): Hugging Face text towers are not "
                                  "implemented by clipfast yet; use open_clip for HF-text-tower models")
