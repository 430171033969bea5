"""Optimizer parameter groups with OpenCLIP's weight-decay rule.

OpenCLIP (open_clip_train/main.py) puts a parameter in the no-decay group when
``p.ndim < 2`` or its name contains ``bn``, ``ln``, ``bias`` or ``logit_scale``: norm gains and
biases, ``class_embedding``, ``logit_scale``/``logit_bias``. 2-D embeddings
(``positional_embedding``, ``token_embedding.weight``) are decayed by that rule; pass
``exclude_embeddings=True`` to also exempt every parameter whose name contains ``embedding``.
This is the one rule clipfast's trainer applies. (``CLIP.no_weight_decay()`` is OpenCLIP's model API for
timm-style optimizer factories; open_clip_train does not use it, and neither does clipfast's trainer.)
"""
import torch


def exclude_from_weight_decay(name: str, param: torch.Tensor, exclude_embeddings: bool = False) -> bool:
    """True when ``param`` (named ``name``) belongs to the no-weight-decay group."""
    if param.ndim < 2 or any(key in name for key in ("bn", "ln", "bias", "logit_scale")):
        return True
    return exclude_embeddings and "embedding" in name


def param_groups(model: torch.nn.Module, weight_decay: float, exclude_embeddings: bool = False) -> list:
    """Two AdamW groups: ``[{params: no-decay, weight_decay: 0}, {params: rest, weight_decay}]``.

    Frozen parameters (``requires_grad=False``) are left out. Each group carries ``names`` (for
    logging and tests; torch optimizers ignore unknown keys but keep them in state_dict).
    """
    no_decay, decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if exclude_from_weight_decay(name, p, exclude_embeddings) else decay).append((name, p))
    return [
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
    ]
