"""OpenCLIP's factory functions with the same signatures: ``create_model``, ``create_model_and_transforms``,
``create_model_from_pretrained``, ``get_tokenizer``.

Offline by design: ``pretrained`` is a local checkpoint file (OpenCLIP train checkpoint, plain state dict, or
whatever ``clipfast.checkpoint.load_checkpoint`` accepts); ``model_name`` is a registered config name
(``clipfast.list_models()``) or ``local-dir:/path`` holding ``open_clip_config.json`` and weights. Pretrained
tags (``'openai'``, ``'laion2b_s34b_b79k'``) and ``hf-hub:`` names need downloads and raise an error.
"""
import copy
import json
import logging
import os
from pathlib import Path

import torch

from clipfast.checkpoint import load_checkpoint, load_state_dict
from clipfast.configs import get_model_config, list_models
from clipfast.loss import ClipLoss, SigLipLoss
from clipfast.model import CLIP
from clipfast.precision import get_cast_dtype, set_model_precision
from clipfast.tokenizer import SimpleTokenizer
from clipfast.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, image_transform
from clipfast.unsupported_configs import unsupported_reason
logger = logging.getLogger(__name__)

__all__ = ["create_model", "create_model_and_transforms", "create_model_from_pretrained", "get_tokenizer",
           "create_loss"]

_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.bin",
                 "model.safetensors", "pytorch_model.bin")


def _default_preprocess_cfg():

    return {"size": 224, "mode": "RGB", "mean": tuple(OPENAI_DATASET_MEAN), "std": tuple(OPENAI_DATASET_STD),
            "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}


def _merge_preprocess(base, overlay):
    out = dict(base)
    out.update({k: v for k, v in (overlay or {}).items() if k in base and v is not None})
    return out


def _resolve(model_name, pretrained):
    """-> (model config dict, checkpoint path or None, preprocess overlay dict)."""
    if model_name.startswith("hf-hub:"):
        raise RuntimeError(f"model_name={model_name!r}: hf-hub models need a download; clipfast is offline. "
                           "Use a registered name with pretrained=<local file>, or 'local-dir:<folder>'.")
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):])
        cfg_path = folder / "open_clip_config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"model_name={model_name!r}: no open_clip_config.json in {folder}")
        with open(cfg_path, encoding="utf-8") as f:
            local = json.load(f)
        if "model_cfg" not in local:
            raise ValueError(f"model_name={model_name!r}: {cfg_path} has no 'model_cfg'")
        if pretrained:
            logger.warning("ignoring pretrained=%r because model_name uses the local-dir: schema", pretrained)
        weights = next((folder / n for n in _WEIGHT_FILES if (folder / n).is_file()), None)
        return local["model_cfg"], (str(weights) if weights else None), local.get("preprocess_cfg", {})
    cfg = get_model_config(model_name.replace("/", "-"))
    if cfg is None:

        reason = unsupported_reason(model_name.replace("/", "-"))
        if reason is not None:
            raise NotImplementedError(f"model_name={model_name!r} is an OpenCLIP config clipfast does not build "
                                      f"yet: it needs {reason}; use open_clip for this model")
        raise RuntimeError(f"model_name={model_name!r}: unknown model. Available: {list_models()}")
    if pretrained and not os.path.isfile(pretrained):
        raise RuntimeError(f"pretrained={pretrained!r} is not a file; clipfast loads local checkpoints only "
                           "(pretrained tags need downloads)")
    return cfg, pretrained or None, {}


def create_model(model_name, pretrained=None, load_weights=True, precision="fp32", device="cpu", jit=False,
                 force_quick_gelu=False, force_custom_text=False, force_patch_dropout=None, force_image_size=None,
                 force_preprocess_cfg=None, force_context_length=None, pretrained_image=False, pretrained_text=True,
                 pretrained_image_path=None, pretrained_text_path=None, cache_dir=None, output_dict=None,
                 require_pretrained=False, weights_only=True, **model_kwargs):
    """Build a ``clipfast.CLIP`` by config name, optionally loading a local checkpoint; OpenCLIP's signature.

    Args:
        model_name: registered config name (``list_models()``) or ``'local-dir:<folder>'``.
        pretrained: path of a checkpoint file to load strictly (None: random init).
        load_weights: False skips loading ``pretrained``.
        precision: ``fp32``, ``fp16``, ``bf16``, ``pure_fp16``, ``pure_bf16``, ``amp``, ``amp_bf16``, ``amp_bfloat16``.
        device: where the model goes.
        force_quick_gelu, force_patch_dropout, force_image_size, force_context_length: config overrides.
        force_preprocess_cfg: overrides of the preprocess config attached as ``model.visual.preprocess_cfg``.
        pretrained_image_path, pretrained_text_path: state dicts loaded non-strictly into the image tower / model.
        output_dict: True makes ``forward`` return a dict.
        require_pretrained: raise if no full checkpoint was loaded.
        weights_only: passed to ``torch.load``.
        model_kwargs: overrides of the config's top-level keys (``init_logit_bias``, ``nonscalar_logit_scale``, ...).
        jit, force_custom_text, pretrained_image: not supported (True raises); pretrained_text, cache_dir: no
            effect (no HF text towers, no downloads).

    Returns:
        The ``CLIP`` model, in train mode, with ``visual.preprocess_cfg``, ``visual.image_mean/std`` set.
    """
    if jit:
        raise NotImplementedError("jit=True: TorchScript is not supported by clipfast; use torch.compile(model)")
    if force_custom_text:
        raise NotImplementedError("force_custom_text=True: clipfast implements the standard CLIP text tower only")
    if pretrained_image:
        raise NotImplementedError("pretrained_image=True: timm image towers are not supported by clipfast")
    if "pretrained_hf" in model_kwargs:
        model_kwargs.pop("pretrained_hf")
    model_cfg, checkpoint_path, pp_overlay = _resolve(model_name, pretrained)
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.pop("custom_text", None)
    if model_cfg["vision_cfg"].get("timm_model_name") or model_cfg["text_cfg"].get("hf_model_name"):
        raise NotImplementedError(f"model_name={model_name!r}: timm / HF towers are not supported by clipfast")
    if force_quick_gelu:
        model_cfg["quick_gelu"] = True
    if force_patch_dropout is not None:
        model_cfg["vision_cfg"]["patch_dropout"] = force_patch_dropout
    if force_image_size is not None:
        model_cfg["vision_cfg"]["image_size"] = force_image_size
    if force_context_length is not None:
        model_cfg["text_cfg"]["context_length"] = force_context_length
    model_cfg.update(model_kwargs)

    model = CLIP(**model_cfg, cast_dtype=get_cast_dtype(precision))
    set_model_precision(model, precision, torch.device(device) if isinstance(device, str) else device)

    loaded = False
    if checkpoint_path and load_weights:

        logger.info("loading pretrained weights from %s", checkpoint_path)
        load_checkpoint(model, checkpoint_path, strict=True, weights_only=weights_only, device="cpu")
        loaded = True
    for path, target in ((pretrained_image_path, model.visual), (pretrained_text_path, model)):
        if path:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such checkpoint file: {path}")
            state_dict = load_state_dict(path, device="cpu", weights_only=weights_only)
            result = target.load_state_dict(state_dict, strict=False)
            logger.info("loaded tower weights from %s: %s", path, result)
    if require_pretrained and not loaded:
        raise RuntimeError(f"required pretrained weights (model_name={model_name!r}, pretrained={pretrained!r}) "
                           "were not loaded")
    if not loaded:
        logger.info("no pretrained weights loaded for %r: random init", model_name)

    if output_dict:
        model.output_dict = True
    pp = _merge_preprocess(_default_preprocess_cfg(), pp_overlay)
    pp["size"] = model.visual.image_size
    pp = _merge_preprocess(pp, force_preprocess_cfg)
    model.visual.image_mean, model.visual.image_std = pp["mean"], pp["std"]
    model.visual.preprocess_cfg = copy.deepcopy(pp)
    return model


def _transform(model, is_train, aug_cfg=None):

    pp = model.visual.preprocess_cfg
    kwargs = {"aug_cfg": aug_cfg} if is_train else {}
    return image_transform(pp["size"], is_train=is_train, mean=pp["mean"], std=pp["std"],
                           interpolation=pp["interpolation"], resize_mode=pp["resize_mode"],
                           fill_color=pp["fill_color"], **kwargs)


def _pp_overrides(image_mean, image_std, image_interpolation, image_resize_mode):
    return {k: v for k, v in (("mean", image_mean), ("std", image_std), ("interpolation", image_interpolation),
                              ("resize_mode", image_resize_mode)) if v is not None}


def create_model_and_transforms(model_name, pretrained=None, load_weights=True, precision="fp32", device="cpu",
                                jit=False, force_quick_gelu=False, force_custom_text=False, force_patch_dropout=None,
                                force_image_size=None, force_context_length=None, image_mean=None, image_std=None,
                                image_interpolation=None, image_resize_mode=None, aug_cfg=None,
                                pretrained_image=False, pretrained_text=True, pretrained_image_path=None,
                                pretrained_text_path=None, cache_dir=None, output_dict=None, weights_only=True,
                                **model_kwargs):
    """``create_model`` plus the train and eval image transforms -> ``(model, preprocess_train, preprocess_val)``.

    ``image_mean/std/interpolation/resize_mode`` override the preprocess config; ``aug_cfg`` configures the
    training augmentation. Other arguments as ``create_model``.
    """
    model = create_model(
        model_name, pretrained, load_weights=load_weights, precision=precision, device=device, jit=jit,
        force_quick_gelu=force_quick_gelu, force_custom_text=force_custom_text,
        force_patch_dropout=force_patch_dropout, force_image_size=force_image_size,
        force_preprocess_cfg=_pp_overrides(image_mean, image_std, image_interpolation, image_resize_mode),
        force_context_length=force_context_length, pretrained_image=pretrained_image,
        pretrained_text=pretrained_text, pretrained_image_path=pretrained_image_path,
        pretrained_text_path=pretrained_text_path, cache_dir=cache_dir, output_dict=output_dict,
        weights_only=weights_only, **model_kwargs)
    return model, _transform(model, True, aug_cfg), _transform(model, False)


def create_model_from_pretrained(model_name, pretrained=None, precision="fp32", device="cpu", jit=False,
                                 force_quick_gelu=False, force_custom_text=False, force_image_size=None,
                                 force_context_length=None, image_mean=None, image_std=None, image_interpolation=None,
                                 image_resize_mode=None, return_transform=True, cache_dir=None, weights_only=True,
                                 **model_kwargs):
    """``create_model`` that requires the checkpoint to load -> ``(model, preprocess_val)`` or ``model``."""
    model = create_model(
        model_name, pretrained, precision=precision, device=device, jit=jit, force_quick_gelu=force_quick_gelu,
        force_custom_text=force_custom_text, force_image_size=force_image_size,
        force_preprocess_cfg=_pp_overrides(image_mean, image_std, image_interpolation, image_resize_mode),
        force_context_length=force_context_length, cache_dir=cache_dir, require_pretrained=True,
        weights_only=weights_only, **model_kwargs)
    if not return_transform:
        return model
    return model, _transform(model, False)


def get_tokenizer(model_name="", context_length=None, cache_dir=None, **kwargs):
    """The ``SimpleTokenizer`` for ``model_name`` (context length: argument, else the config's, else 77).

    Models whose config names an HF tokenizer raise ``NotImplementedError`` (HF tokenizers need downloads).
    """

    cfg = {}
    if model_name.startswith("local-dir:"):
        cfg = _resolve(model_name, None)[0]
    elif model_name:
        cfg = get_model_config(model_name.replace("/", "-")) or {}
    text_cfg = cfg.get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        raise NotImplementedError(f"model_name={model_name!r} uses the HF tokenizer "
                                  f"{text_cfg['hf_tokenizer_name']!r}, which clipfast does not provide")
    if context_length is None:
        context_length = text_cfg.get("context_length", 77)
    tokenizer_kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    tokenizer_kwargs.update(kwargs)
    return SimpleTokenizer(context_length=context_length, **tokenizer_kwargs)


def create_loss(args):
    """The training loss for OpenCLIP's trainer ``args`` (``open_clip_train.params``), as ``open_clip.create_loss``.

    ``args.siglip`` -> ``SigLipLoss(rank, world_size, dist_impl=args.loss_dist_impl)``; otherwise
    ``ClipLoss(local_loss, gather_with_grad, cache_labels=True, rank, world_size, use_horovod)``. Distillation
    (``args.distill``) and CoCa models raise ``NotImplementedError``; ``use_horovod=True`` raises ``ValueError``.
    """

    if getattr(args, "distill", False):
        raise NotImplementedError("create_loss: distillation (DistillClipLoss, --distill-model) is not implemented "
                                  "by clipfast")
    if "coca" in args.model.lower():
        raise NotImplementedError(f"create_loss: CoCa (CoCaLoss, model {args.model!r}) is not implemented by clipfast")
    rank, world_size = getattr(args, "rank", 0), getattr(args, "world_size", 1)
    if getattr(args, "siglip", False):
        if getattr(args, "horovod", False):
            raise ValueError("create_loss: horovod is not supported for SigLIP (as in OpenCLIP)")
        return SigLipLoss(rank=rank, world_size=world_size, dist_impl=getattr(args, "loss_dist_impl", None))
    return ClipLoss(local_loss=getattr(args, "local_loss", False), gather_with_grad=getattr(args, "gather_with_grad", False),
                    cache_labels=True, rank=rank, world_size=world_size, use_horovod=getattr(args, "horovod", False))
