"""Precision modes, as OpenCLIP's: ``fp32``, ``fp16``/``bf16`` (OpenAI-style mixed precision: matmul weights in
low precision, LayerNorm/BatchNorm/embeddings/logit_scale in fp32), ``pure_fp16``/``pure_bf16`` (the whole model
cast), and the autocast modes ``amp``/``amp_bf16``/``amp_bfloat16`` (fp32 weights; the trainer autocasts).
"""
import torch
from torch import nn

__all__ = ["PRECISIONS", "get_cast_dtype", "get_input_dtype", "convert_weights_to_lp", "set_model_precision"]

PRECISIONS = ("fp32", "fp16", "bf16", "pure_fp16", "pure_bf16", "amp", "amp_bf16", "amp_bfloat16")

# Parameters cast by convert_weights_to_lp besides Conv/Linear weights and biases: attention packed/separate
# projections (nn.MultiheadAttention / clipfast Attention) and the towers' output projections.
_LP_PARAM_NAMES = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                   "bias_k", "bias_v", "text_projection", "proj")


def _check(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")


def get_cast_dtype(precision):
    """The dtype matmul weights are cast to in ``fp16``/``bf16`` modes (passed to ``CLIP(cast_dtype=)``), else None."""
    _check(precision)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def get_input_dtype(precision):
    """The dtype images must be cast to before the model in this mode, or None (fp32 / autocast modes)."""
    _check(precision)
    if precision in ("bf16", "pure_bf16"):
        return torch.bfloat16
    if precision in ("fp16", "pure_fp16"):
        return torch.float16
    return None


def convert_weights_to_lp(model, dtype=torch.float16):
    """Cast matmul weights to ``dtype`` in place, keeping norms, embeddings and ``logit_scale`` in fp32.

    Casts: weight and bias of every ``nn.Conv1d/Conv2d/Linear`` (and subclasses), attention projection parameters
    (``in_proj_weight/bias``, ``{q,k,v}_proj_weight``, ``bias_k/v``) and the ``text_projection``/``proj`` output
    projections. Works by parameter name, so it handles clipfast, OpenCLIP and OpenAI CLIP modules alike.

    Args:
        model: any ``nn.Module``.
        dtype: torch.float16 or torch.bfloat16.
    """
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: expected torch.float16 or torch.bfloat16, got {dtype}")

    def convert(module):
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
        for name in _LP_PARAM_NAMES:
            param = module._parameters.get(name)
            if param is not None:
                param.data = param.data.to(dtype)

    model.apply(convert)
    return model


def set_model_precision(model, precision="fp32", device="cpu"):
    """Move ``model`` to ``device`` and apply ``precision`` (OpenCLIP's factory semantics); returns it."""
    _check(precision)
    if precision in ("fp16", "bf16"):
        model.to(device=device)
        convert_weights_to_lp(model, get_cast_dtype(precision))
    elif precision in ("pure_fp16", "pure_bf16"):
        model.to(device=device, dtype=get_input_dtype(precision))
    else:
        model.to(device=device)
    return model
