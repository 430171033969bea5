"""OpenCLIP's ``open_clip.pretrained`` API, for an offline library.

OpenCLIP's module is a registry of downloadable weights (``(model, tag) -> url / hf_hub``) plus downloaders.
clipfast downloads nothing: ``pretrained=`` is a local file (see ``clipfast.factory``). So the registry here is
empty (``list_pretrained() == []``, ``is_pretrained_cfg(...) is False``, ``get_pretrained_cfg(...) == {}``,
``get_pretrained_url(...) == ''``), and every download function raises ``NotImplementedError`` saying so.
The signatures are OpenCLIP 3.3's.
"""
from typing import Optional

__all__ = ["list_pretrained", "list_pretrained_models_by_tag", "list_pretrained_tags_by_model", "is_pretrained_cfg",
           "get_pretrained_cfg", "get_pretrained_url", "download_pretrained_from_url", "has_hf_hub",
           "download_pretrained_from_hf", "download_pretrained"]

_PRETRAINED = {}  # model name -> {tag: cfg}; empty: clipfast knows no download locations


def _clean_tag(tag: str):
    return tag.lower().replace("-", "_")


def _offline(what):
    return NotImplementedError(f"{what}: clipfast does not download weights; download them with open_clip or "
                               "huggingface_hub, then pass the local file as pretrained=<path>")


def list_pretrained(as_str: bool = False):
    """(model, tag) pairs (or ``'model:tag'``) clipfast can download: none."""
    return [f"{k}:{t}" if as_str else (k, t) for k, tags in _PRETRAINED.items() for t in tags]


def list_pretrained_models_by_tag(tag: str):
    return [k for k, tags in _PRETRAINED.items() if _clean_tag(tag) in tags]


def list_pretrained_tags_by_model(model: str):
    return list(_PRETRAINED.get(model, {}))


def is_pretrained_cfg(model: str, tag: str):
    return _clean_tag(tag) in _PRETRAINED.get(model, {})


def get_pretrained_cfg(model: str, tag: str):
    return dict(_PRETRAINED.get(model, {}).get(_clean_tag(tag), {}))


def get_pretrained_url(model: str, tag: str):
    return get_pretrained_cfg(model, tag).get("url", "")


def download_pretrained_from_url(url: str, cache_dir: Optional[str] = None):
    raise _offline(f"download_pretrained_from_url({url!r})")


def has_hf_hub(necessary=False):
    """False: clipfast does not use the Hugging Face Hub; ``necessary=True`` raises."""
    if necessary:
        raise _offline("the Hugging Face Hub")
    return False


def download_pretrained_from_hf(model_id: str, filename: Optional[str] = None, revision: Optional[str] = None,
                                cache_dir: Optional[str] = None):
    raise _offline(f"download_pretrained_from_hf({model_id!r})")


def download_pretrained(cfg: dict, prefer_hf_hub: bool = True, cache_dir: Optional[str] = None):
    raise _offline("download_pretrained")
