"""The rest of OpenCLIP 3.3's top-level names, and ``install_as_open_clip()``.

``import clipfast as open_clip`` covers code that only uses top-level names. Code that imports OpenCLIP's submodules
(``from open_clip.utils import replace_linear`` inside ``open_clip_train``, ``open_clip.model.CLIP`` in tests) needs
``sys.modules`` entries for them: ``install_as_open_clip()`` makes ``open_clip`` and ``open_clip.<sub>`` resolve to
clipfast and its modules of the same role (``SUBMODULES``), before ``open_clip_train`` or user code is imported.

Names here that clipfast cannot provide raise ``NotImplementedError`` naming the feature when used: ``CoCa``,
``CoCaLoss``, ``DistillClipLoss``, Hub uploads; ``load_openai_model`` loads local files only.
"""
import importlib
import math
import os
import sys
from typing import Optional, Tuple, Union

import torch
from torch import nn

from clipfast.checkpoint import build_model, load_state_dict
from clipfast.precision import get_cast_dtype, set_model_precision
from clipfast.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

__all__ = ["CoCa", "CoCaLoss", "DistillClipLoss", "load_openai_model", "list_openai_models", "push_to_hf_hub",
           "push_pretrained_to_hf_hub", "install_as_open_clip", "SUBMODULES"]

# open_clip.<name> -> the clipfast module playing that role.
SUBMODULES = {
    "constants": "clipfast.constants", "factory": "clipfast.factory", "hf_model": "clipfast.hf_model",
    "loss": "clipfast.loss", "model": "clipfast.model", "pretrained": "clipfast.pretrained",
    "tokenizer": "clipfast.tokenizer", "transform": "clipfast.transforms", "utils": "clipfast.utils",
    "zero_shot_classifier": "clipfast.zero_shot_classifier", "zero_shot_metadata": "clipfast.zero_shot_metadata",
}


def install_as_open_clip():
    """Make ``import open_clip`` / ``import open_clip.<sub>`` return clipfast (for every name in ``SUBMODULES``).

    Call it before anything imports ``open_clip`` (an already imported real ``open_clip`` is replaced in
    ``sys.modules``, but references other modules already hold stay). Returns the installed module names.
    """
    import clipfast  # here, not at the top: clipfast/__init__.py imports this module

    sys.modules["open_clip"] = clipfast
    names = ["open_clip"]
    for sub, target in SUBMODULES.items():
        sys.modules[f"open_clip.{sub}"] = importlib.import_module(target)
        names.append(f"open_clip.{sub}")
    return names


class CoCa(nn.Module):
    """OpenCLIP's CoCa (contrastive captioner); not implemented by clipfast."""

    def __init__(self, embed_dim, multimodal_cfg, text_cfg, vision_cfg, quick_gelu: bool = False,
                 init_logit_scale: float = math.log(1 / 0.07), init_logit_bias: Optional[float] = None,
                 nonscalar_logit_scale: bool = False, cast_dtype: Optional[torch.dtype] = None, pad_id: int = 0):
        raise NotImplementedError("CoCa (multimodal text decoder) is not implemented by clipfast; use open_clip")


class CoCaLoss(nn.Module):
    """OpenCLIP's CoCa loss (contrastive + captioning); not implemented by clipfast."""

    def __init__(self, caption_loss_weight, clip_loss_weight, pad_id=0, local_loss=False, gather_with_grad=False,
                 cache_labels=False, rank=0, world_size=1, use_horovod=False):
        raise NotImplementedError("CoCaLoss (CoCa captioning loss) is not implemented by clipfast; use open_clip")


class DistillClipLoss(nn.Module):
    """OpenCLIP's distillation loss (``--distill-model``); not implemented by clipfast."""

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
                 use_horovod=False):
        raise NotImplementedError("DistillClipLoss (distillation, --distill-model) is not implemented by clipfast")


def list_openai_models():
    """Model names clipfast can fetch OpenAI weights for: none (clipfast downloads nothing; see
    ``load_openai_model`` for local files)."""
    return []


def load_openai_model(name, precision=None, device=None, cache_dir=None):
    """An OpenAI CLIP release file (TorchScript archive or state dict) at the local path ``name`` as a
    ``clipfast.CLIP`` (QuickGELU, hyper-parameters inferred from the weights, eval mode).

    ``precision`` defaults to ``fp32`` on CPU and ``fp16`` otherwise (as OpenCLIP); ``device`` to CUDA when
    available. The archive is read with ``weights_only=False`` (it is TorchScript): load only files you trust.
    A model name (a download) raises ``NotImplementedError``.
    """
    if not os.path.isfile(name):
        raise NotImplementedError(f"load_openai_model({name!r}): not a local file, and clipfast does not download "
                                  "weights; pass the path of the OpenAI release file")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if precision is None:
        precision = "fp32" if str(device) == "cpu" else "fp16"
    model = build_model(load_state_dict(name, weights_only=False), quick_gelu=True,
                        cast_dtype=get_cast_dtype(precision))
    set_model_precision(model, precision, torch.device(device))
    model.visual.image_mean, model.visual.image_std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    return model.eval()


def push_to_hf_hub(model, tokenizer, model_config: Optional[dict], repo_id: str, commit_message: str = "Add model",
                   token: Optional[str] = None, revision: Optional[str] = None, private: bool = False,
                   create_pr: bool = False, model_card: Optional[dict] = None,
                   safe_serialization: Union[bool, str] = "both"):
    raise NotImplementedError("push_to_hf_hub: clipfast does not upload to the Hugging Face Hub; use open_clip")


def push_pretrained_to_hf_hub(model_name, pretrained: str, repo_id: str, precision: str = "fp32",
                              image_mean: Optional[Tuple[float, ...]] = None,
                              image_std: Optional[Tuple[float, ...]] = None, image_interpolation: Optional[str] = None,
                              image_resize_mode: Optional[str] = None, commit_message: str = "Add model",
                              token: Optional[str] = None, revision: Optional[str] = None, private: bool = False,
                              create_pr: bool = False, model_card: Optional[dict] = None,
                              hf_tokenizer_self: bool = False, **kwargs):
    raise NotImplementedError("push_pretrained_to_hf_hub: clipfast does not upload to the Hugging Face Hub; "
                              "use open_clip")
