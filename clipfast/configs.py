"""Model configs by OpenCLIP name: the config dataclasses and the JSON registry.

``VisionConfig``/``TextConfig`` accept every field name of OpenCLIP 3.3's ``CLIPVisionCfg``/``CLIPTextCfg``
with the same defaults, so OpenCLIP JSON configs load unchanged. clipfast implements the fields CLIP
models use; a field we do not implement must keep its default, else ``check_supported`` raises an error
naming it (a setting is never silently ignored).

The registry holds one OpenCLIP-style JSON file per model name (``clipfast/model_configs/<name>.json``,
``{"embed_dim", "quick_gelu"?, "vision_cfg", "text_cfg"}``); it is read on first use, not at import.
"""
import copy
import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

logger = logging.getLogger(__name__)

__all__ = [
    "VisionConfig", "TextConfig", "list_models", "get_model_config", "add_model_config", "check_supported",
]


@dataclass
class VisionConfig:
    """Image tower config; field names and defaults are OpenCLIP's ``CLIPVisionCfg``.

    ``layers`` int builds a VisionTransformer (heads = width // head_width); a 4-sequence builds a
    ModifiedResNet (heads = width * 32 // head_width).
    """

    layers: Union[Tuple[int, int, int, int], int] = 12
    width: int = 768
    head_width: int = 64
    mlp_ratio: float = 4.0
    patch_size: Optional[Union[Tuple[int, int], int]] = 16
    image_size: Union[Tuple[int, int], int] = 224
    ls_init_value: Optional[float] = None
    patch_dropout: float = 0.0
    attentional_pool: bool = False
    attn_pooler_queries: int = 256
    attn_pooler_heads: int = 8
    no_ln_pre: bool = False
    pos_embed_type: str = "learnable"
    final_ln_after_pool: bool = False
    pool_type: str = "tok"
    output_tokens: bool = False
    act_kwargs: Optional[dict] = None
    norm_kwargs: Optional[dict] = None
    block_type: Optional[str] = None
    qk_norm: bool = False
    scaled_cosine_attn: bool = False
    scale_heads: bool = False
    scale_attn_inner: bool = False
    scale_attn: bool = False
    scale_fc: bool = False
    timm_model_name: Optional[str] = None
    timm_model_pretrained: bool = False
    timm_pool: str = "avg"
    timm_proj: str = "linear"
    timm_proj_bias: bool = False
    timm_drop: float = 0.0
    timm_drop_path: Optional[float] = None

    @property
    def is_resnet(self):
        return isinstance(self.layers, (tuple, list))


@dataclass
class TextConfig:
    """Text tower config; field names and defaults are OpenCLIP's ``CLIPTextCfg``."""

    context_length: int = 77
    vocab_size: int = 49408
    hf_tokenizer_name: Optional[str] = None
    tokenizer_mode: Optional[str] = None
    tokenizer_kwargs: Optional[dict] = None
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: Optional[float] = None
    embed_cls: bool = False
    pad_id: int = 0
    eos_id: int = 2
    no_causal_mask: bool = False
    final_ln_after_pool: bool = False
    pool_type: str = "argmax"
    proj_bias: bool = False
    proj_type: str = "linear"
    output_tokens: bool = False
    act_kwargs: Optional[dict] = None
    norm_kwargs: Optional[dict] = None
    block_type: Optional[str] = None
    qk_norm: bool = False
    scaled_cosine_attn: bool = False
    scale_heads: bool = False
    scale_attn_inner: bool = False
    scale_attn: bool = False
    scale_fc: bool = False
    hf_model_name: Optional[str] = None
    hf_model_pretrained: bool = True
    hf_proj_type: str = "mlp"
    hf_pooler_type: str = "mean_pooler"


# Fields whose value changes nothing clipfast computes, or that clipfast implements for any value.
_VISION_IMPLEMENTED = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "patch_dropout",
                       "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool",
                       "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"}
_TEXT_IMPLEMENTED = {"context_length", "vocab_size", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs",
                     "width", "heads", "layers", "mlp_ratio", "pad_id", "eos_id", "no_causal_mask",
                     "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
# Fields implemented for some values only.
_VISION_VALUES = {"block_type": (None, "default")}
_TEXT_VALUES = {"block_type": (None, "default"), "pool_type": ("argmax", "eos", "first", "last")}


def _check(cfg, implemented, values, prefix):
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name in implemented:
            continue
        allowed = values.get(field.name, (field.default,))
        if value not in allowed:
            raise NotImplementedError(
                f"{prefix}.{field.name}={value!r} is not implemented by clipfast "
                f"(supported: {', '.join(repr(a) for a in allowed)}); use open_clip for this model")


def check_supported(vision_cfg, text_cfg):
    """Raise ``NotImplementedError`` naming the first field clipfast does not implement at its value."""
    _check(vision_cfg, _VISION_IMPLEMENTED, _VISION_VALUES, "vision_cfg")
    _check(text_cfg, _TEXT_IMPLEMENTED, _TEXT_VALUES, "text_cfg")
    if vision_cfg.is_resnet and len(vision_cfg.layers) != 4:
        raise ValueError("vision_cfg.layers: expected an int (ViT) or 4 stage depths (ResNet), "
                         f"got {vision_cfg.layers!r}")
    if not vision_cfg.is_resnet and vision_cfg.width % vision_cfg.head_width:
        raise ValueError(f"vision_cfg.width={vision_cfg.width} must be a multiple of "
                         f"head_width={vision_cfg.head_width}")
    if text_cfg.width % text_cfg.heads:
        raise ValueError(f"text_cfg.width={text_cfg.width} must be a multiple of heads={text_cfg.heads}")
    if not 0.0 <= vision_cfg.patch_dropout < 1.0:
        raise ValueError(f"vision_cfg.patch_dropout: expected 0 <= p < 1, got {vision_cfg.patch_dropout}")


def to_config(cfg, cls):
    """``cfg`` (a dict, a clipfast config, or any dataclass such as OpenCLIP's) as a ``cls`` instance."""
    if isinstance(cfg, cls):
        return cfg
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    if not isinstance(cfg, dict):
        raise TypeError(f"expected a dict or {cls.__name__}, got {type(cfg).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown field(s) {unknown}; OpenCLIP has no such config field")
    return cls(**cfg)


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------
_CONFIG_PATHS = [Path(__file__).parent / "model_configs"]
_MODEL_CONFIGS = {}
_LOADED = False


def _natural_key(name):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name.lower())]


def _rescan():
    global _LOADED
    files = []
    for path in _CONFIG_PATHS:
        if path.is_file() and path.suffix == ".json":
            files.append(path)
        elif path.is_dir():
            files.extend(path.glob("*.json"))
    for f in files:
        with open(f, encoding="utf-8") as fh:
            cfg = json.load(fh)
        if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            _MODEL_CONFIGS[f.stem] = cfg
        else:
            logger.warning("skipping model config %s: needs embed_dim, vision_cfg and text_cfg", f)
    _LOADED = True


def _registry():
    if not _LOADED:
        _rescan()
    return _MODEL_CONFIGS


def list_models():
    """Names of all registered model configs, in natural sort order (as ``open_clip.list_models``)."""
    return sorted(_registry(), key=_natural_key)


def add_model_config(path):
    """Register the JSON config file ``path``, or every ``*.json`` in the folder ``path``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: no such model config file or folder: {path}")
    _CONFIG_PATHS.append(path)
    _rescan()


def get_model_config(model_name):
    """A deep copy of the registered config dict for ``model_name``, or None if there is none."""
    cfg = _registry().get(model_name)
    return copy.deepcopy(cfg) if cfg is not None else None
