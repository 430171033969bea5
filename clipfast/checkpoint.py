"""Checkpoint formats: plain / OpenCLIP-train / OpenAI / HF ``CLIPModel`` state dicts, safetensors, pos-emb resize.

- ``load_state_dict(path)``: ``.safetensors`` via safetensors, anything else via ``torch.load(weights_only=True)``;
  unwraps ``{"state_dict": ...}`` (OpenCLIP train checkpoints) and strips ``module.`` (DDP) / ``_orig_mod.``
  (``torch.compile``) prefixes. TorchScript archives (OpenAI's release files) need ``weights_only=False``.
- ``load_checkpoint(model, path)``: OpenCLIP's ``load_checkpoint``: converts HF layouts, drops OpenAI's int
  entries, reshapes ``logit_scale``/``logit_bias`` 0-D <-> ``(1,)``, inserts a zero ``logit_bias``, resizes
  positional embeddings (bicubic 2-D for the image grid, linear 1-D for text), then ``load_state_dict``.
- ``build_model(state_dict)``: OpenAI's ``build_model``: infers the hyper-parameters from shapes
  (``infer_config``) and returns an eval-mode ``clipfast.CLIP``. Heads cannot be inferred from weights: the
  64-dim-head rule of OpenAI's releases is assumed and a warning is raised for other widths (e.g. ViT-H's 80-dim
  heads) unless ``config`` gives them.
- ``to_hf_state_dict`` / ``from_hf_state_dict``: the key map to and from ``transformers.CLIPModel`` (ViT only).
"""
import copy
import logging
import math
import os
import re
import warnings
import zipfile

import torch
import torch.nn.functional as F

from clipfast.model import CLIP
from clipfast.precision import convert_weights_to_lp

__all__ = ["load_state_dict", "load_checkpoint", "resize_pos_embed", "resize_text_pos_embed", "infer_config",
           "build_model", "to_hf_state_dict", "from_hf_state_dict", "to_hf_config"]

logger = logging.getLogger(__name__)

OPENAI_INT_KEYS = ("input_resolution", "context_length", "vocab_size")
# Widths OpenAI released (all with 64-dim heads); other widths make the head count a guess.
_OPENAI_VIT_WIDTHS = (768, 1024)
_OPENAI_TEXT_WIDTHS = (512, 640, 768, 1024)


def _is_torchscript(path):
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, IsADirectoryError, OSError):
        return False


def _strip_prefix(state_dict, prefix):
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_state_dict(path, device="cpu", weights_only=True):
    """Read a state dict from ``path`` (``.safetensors``, ``.pt``, ``.pth``, ``.bin``, ...).

    Args:
        path: checkpoint file: a state dict, an OpenCLIP train checkpoint ``{"state_dict", "epoch", ...}``, a
            safetensors file, or (with ``weights_only=False``) a TorchScript archive such as OpenAI's releases.
        device: ``map_location`` of the tensors.
        weights_only: passed to ``torch.load``; True never runs pickled code.

    Returns:
        ``dict[str, Tensor]`` without ``module.`` / ``_orig_mod.`` prefixes (OpenAI int entries, if any, kept).

    Raises:
        ValueError: naming ``path`` for an empty file, one ``torch.load`` cannot read (truncated, not a PyTorch
            file), a TorchScript archive with ``weights_only=True``, or one without a state dict.
    """
    path = str(path)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ValueError(f"path={path!r}: the checkpoint file is empty (0 bytes): an interrupted copy or write?")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        checkpoint = load_file(path, device=str(device))
    elif _is_torchscript(path):
        if weights_only:
            raise ValueError(f"path={path!r} is a TorchScript archive (e.g. an OpenAI CLIP release), which "
                             "torch.load(weights_only=True) cannot read; if you trust the file pass "
                             "weights_only=False, or convert it once: torch.save(torch.jit.load(p).state_dict(), q)")
        checkpoint = torch.jit.load(path, map_location=device).state_dict()
    else:
        try:
            checkpoint = torch.load(path, map_location=device, weights_only=weights_only)
        except (EOFError, RuntimeError, zipfile.BadZipFile) as e:  # truncated file, not a torch file
            raise ValueError(f"path={path!r}: cannot read the checkpoint (truncated or not a PyTorch file): "
                             f"{type(e).__name__}: {e}") from e
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"path={path!r}: expected a non-empty state dict, got {type(checkpoint).__name__}")
    state_dict = _strip_prefix(_strip_prefix(dict(checkpoint), "module."), "_orig_mod.")
    return state_dict


def _resize_grid(pos_embed, new_grid, extra_tokens=1, interpolation="bicubic", antialias=True):
    """``(extra + g_h*g_w, C)`` -> ``(extra + new_h*new_w, C)``: 2-D interpolation of the grid part (square old grid)."""
    tok, grid = pos_embed[:extra_tokens], pos_embed[extra_tokens:]
    old = int(math.sqrt(grid.shape[0]))
    if old * old != grid.shape[0]:
        raise ValueError(f"positional embedding of {grid.shape[0]} grid tokens is not a square grid")
    logger.info("resizing position embedding grid from %s to %s", (old, old), tuple(new_grid))
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, C, g, g)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode=interpolation, antialias=antialias,
                         align_corners=False).to(pos_embed.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1)  # (new_h*new_w, C)
    return torch.cat([tok, grid], dim=0)


def resize_pos_embed(state_dict, model, interpolation="bicubic", antialias=True):
    """Resize ``visual.positional_embedding`` in place to ``model.visual.grid_size`` (OpenCLIP's function); also
    ``visual.attnpool.positional_embedding`` for ResNets (which OpenCLIP does not). No-op when sizes agree."""
    visual = getattr(model, "visual", None)
    pe = state_dict.get("visual.positional_embedding")
    if pe is not None and hasattr(visual, "grid_size"):
        grid = visual.grid_size if isinstance(visual.grid_size, (tuple, list)) else (visual.grid_size,) * 2
        if pe.shape[0] != grid[0] * grid[1] + 1:
            state_dict["visual.positional_embedding"] = _resize_grid(pe, grid, 1, interpolation, antialias)
    pe = state_dict.get("visual.attnpool.positional_embedding")
    attnpool = getattr(visual, "attnpool", None)
    if pe is not None and attnpool is not None and hasattr(attnpool, "positional_embedding"):
        n = attnpool.positional_embedding.shape[0] - 1
        side = int(math.sqrt(n))
        if pe.shape[0] != n + 1:
            state_dict["visual.attnpool.positional_embedding"] = _resize_grid(pe, (side, side), 1, interpolation,
                                                                              antialias)


def resize_text_pos_embed(state_dict, model, interpolation="linear", antialias=False):
    """Resize ``positional_embedding`` ``(L_old, W)`` in place to the model's context length (1-D interpolation)."""
    pe = state_dict.get("positional_embedding")
    target = getattr(model, "positional_embedding", None)
    if pe is None or target is None or pe.shape[0] == target.shape[0]:
        return
    if pe.shape[1] != target.shape[1]:
        raise ValueError(f"positional_embedding: width {pe.shape[1]} in the checkpoint, {target.shape[1]} in the model")
    logger.info("resizing text position embedding from %d to %d", pe.shape[0], target.shape[0])
    x = pe.float().t().unsqueeze(0)  # (1, W, L_old)
    x = F.interpolate(x, size=target.shape[0], mode=interpolation, antialias=antialias, align_corners=False)
    state_dict["positional_embedding"] = x[0].t().to(pe.dtype).contiguous()


def _is_hf(state_dict):
    return any(k.startswith(("vision_model.", "text_model.")) for k in state_dict)


def load_checkpoint(model, checkpoint_path, strict=True, weights_only=True, device="cpu"):
    """Load the checkpoint at ``checkpoint_path`` into ``model`` (OpenCLIP's ``load_checkpoint``, same signature).

    Accepts everything ``load_state_dict`` reads, in OpenCLIP/OpenAI or HF ``CLIPModel`` key layout.

    Returns:
        ``model.load_state_dict``'s result (missing / unexpected keys; empty when ``strict``).
    """
    state_dict = load_state_dict(checkpoint_path, device=device, weights_only=weights_only)
    if _is_hf(state_dict):
        state_dict = from_hf_state_dict(state_dict)
    for key in OPENAI_INT_KEYS:
        state_dict.pop(key, None)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state_dict and target is not None and state_dict[key].ndim != target.ndim:
            state_dict[key] = state_dict[key].reshape(target.shape)
    if "logit_bias" not in state_dict and getattr(model, "logit_bias", None) is not None:
        # a contrastive (softmax) checkpoint loaded for SigLIP training (open_clip #712)
        state_dict["logit_bias"] = torch.zeros(model.logit_bias.shape, dtype=model.logit_bias.dtype)
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    return model.load_state_dict(state_dict, strict=strict)


def _mlp_ratio(hidden, width):
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def _count(state_dict, pattern):
    rx = re.compile(pattern)
    return len({m.group(1) for m in (rx.match(k) for k in state_dict) if m})


def infer_config(state_dict):
    """OpenCLIP-style model config inferred from an OpenAI/OpenCLIP ``CLIP`` state dict's shapes (OpenAI's
    ``build_model`` rules, plus ``mlp_ratio`` from the MLP width). Heads assume 64-dim heads.

    Returns:
        ``{"embed_dim", "vision_cfg", "text_cfg"}`` (dicts with OpenCLIP field names).
    """
    sd = state_dict
    for key in ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight"):
        if key not in sd:
            raise KeyError(f"state_dict: missing {key!r}; not a CLIP state dict in OpenAI/OpenCLIP layout")
    if "visual.proj" in sd:
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_cfg = {"image_size": patch * grid, "layers": _count(sd, r"visual\.transformer\.resblocks\.(\d+)\."),
                      "width": width, "patch_size": patch, "head_width": 64,
                      "mlp_ratio": _mlp_ratio(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0], width)}
    else:
        n_pos = sd["visual.attnpool.positional_embedding"].shape[0]
        side = round((n_pos - 1) ** 0.5)
        if side * side + 1 != n_pos:
            raise ValueError(f"visual.attnpool.positional_embedding: {n_pos} positions is not a square grid + 1")
        vision_cfg = {"image_size": side * 32,
                      "layers": [_count(sd, rf"visual\.layer{b}\.(\d+)\.") for b in (1, 2, 3, 4)],
                      "width": sd["visual.layer1.0.conv1.weight"].shape[0], "patch_size": None, "head_width": 64}
    text_width = sd["ln_final.weight"].shape[0]
    text_cfg = {"context_length": sd["positional_embedding"].shape[0],
                "vocab_size": sd["token_embedding.weight"].shape[0], "width": text_width,
                "heads": max(text_width // 64, 1), "layers": _count(sd, r"transformer\.resblocks\.(\d+)\."),
                "mlp_ratio": _mlp_ratio(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], text_width)}
    return {"embed_dim": sd["text_projection"].shape[1], "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def _merge(base, overlay):
    out = copy.deepcopy(base)
    for k, v in (overlay or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def build_model(state_dict, quick_gelu=True, cast_dtype=None, config=None):
    """OpenAI's ``build_model``: a ``clipfast.CLIP`` with hyper-parameters inferred from ``state_dict``.

    Args:
        state_dict: OpenAI-format (mixed fp16/fp32, with the int entries ``input_resolution``, ``context_length``,
            ``vocab_size``, which are dropped) or OpenCLIP-format ``CLIP`` state dict; not modified.
        quick_gelu: QuickGELU MLPs (True for OpenAI weights).
        cast_dtype: None: an fp32 model (what ``clip.load`` gives on CPU); ``torch.float16``/``torch.bfloat16``:
            OpenAI's mixed precision (matmul weights in that dtype, norms/embeddings fp32).
        config: OpenCLIP model config, full or partial (e.g. ``{"vision_cfg": {"head_width": 80}}``), merged over
            the inferred one; needed for head counts that are not ``width // 64``.

    Returns:
        The model in eval mode.
    """

    sd = {k: v for k, v in state_dict.items() if k not in OPENAI_INT_KEYS and isinstance(v, torch.Tensor)}
    inferred = infer_config(sd)
    cfg = _merge(inferred, config)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    vit = not isinstance(vision["layers"], (list, tuple))
    guessed = []
    # ResNets: attnpool heads = width * 32 // 64 in OpenAI's and every OpenCLIP config, so only ViTs are guesses
    if vit and "head_width" not in (config or {}).get("vision_cfg", {}) and vision["width"] not in _OPENAI_VIT_WIDTHS:
        guessed.append(f"vision (width {vision['width']}, assumed head_width 64)")
    if "heads" not in (config or {}).get("text_cfg", {}) and text["width"] not in _OPENAI_TEXT_WIDTHS:
        guessed.append(f"text (width {text['width']}, assumed {text['heads']} heads)")
    if guessed:
        warnings.warn("build_model: attention heads cannot be inferred from weights; guessed for "
                      + " and ".join(guessed) + ". Pass config= with vision_cfg.head_width / text_cfg.heads "
                      "(e.g. ViT-H/g/bigG use head_width 80/88/104)", UserWarning, stacklevel=2)
    quick_gelu = cfg.pop("quick_gelu", quick_gelu)
    model = CLIP(cfg["embed_dim"], vision, text, quick_gelu=quick_gelu, cast_dtype=cast_dtype,
                 **{k: v for k, v in cfg.items() if k not in ("embed_dim", "vision_cfg", "text_cfg")})
    if cast_dtype is not None:
        convert_weights_to_lp(model, cast_dtype)
    if model.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    model.load_state_dict(sd, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# HF transformers CLIPModel layout (ViT towers only)
# --------------------------------------------------------------------------------------------------------------
_HF_LAYER = [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]
_HF_GLOBAL = [("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
              ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
              ("ln_final.weight", "text_model.final_layer_norm.weight"),
              ("ln_final.bias", "text_model.final_layer_norm.bias"),
              ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
              ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
              ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
              ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),
              ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
              ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
              ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
              ("logit_scale", "logit_scale")]
_HF_TRANSPOSED = [("visual.proj", "visual_projection.weight"), ("text_projection", "text_projection.weight")]
_TOWERS = [("visual.transformer.resblocks", "vision_model.encoder.layers"),
           ("transformer.resblocks", "text_model.encoder.layers")]


def to_hf_state_dict(state_dict):
    """OpenCLIP/OpenAI ViT ``CLIP`` state dict -> ``transformers.CLIPModel`` state dict (tensors shared or copied,
    dtypes kept; ``in_proj`` split into q/k/v, projections transposed, ``logit_scale`` 0-D)."""
    if "visual.proj" not in state_dict:
        raise ValueError("state_dict: HF CLIPModel has no ResNet image tower; only ViT models convert")
    sd = {k: v for k, v in state_dict.items() if k not in OPENAI_INT_KEYS}
    out = {hf: sd[ours] for ours, hf in _HF_GLOBAL}
    out["logit_scale"] = out["logit_scale"].reshape(())
    for ours, hf in _HF_TRANSPOSED:
        out[hf] = sd[ours].t().contiguous()
    for ours_prefix, hf_prefix in _TOWERS:
        for i in range(_count(sd, rf"{re.escape(ours_prefix)}\.(\d+)\.")):
            src, dst = f"{ours_prefix}.{i}.", f"{hf_prefix}.{i}."
            for suffix in ("weight", "bias"):
                for name, chunk in zip("qkv", sd[src + f"attn.in_proj_{suffix}"].chunk(3, dim=0)):
                    out[dst + f"self_attn.{name}_proj.{suffix}"] = chunk.contiguous()
                for a, b in _HF_LAYER:
                    out[dst + f"{b}.{suffix}"] = sd[src + f"{a}.{suffix}"]
    return out


def from_hf_state_dict(state_dict):
    """``transformers.CLIPModel`` state dict -> OpenCLIP ``CLIP`` state dict (inverse of ``to_hf_state_dict``;
    ``position_ids`` buffers of older transformers are dropped)."""
    sd = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
    missing = [hf for _, hf in _HF_GLOBAL + _HF_TRANSPOSED if hf not in sd]
    if missing:
        raise KeyError(f"state_dict: not an HF CLIPModel state dict, missing {missing[:3]}")
    out = {ours: sd[hf] for ours, hf in _HF_GLOBAL}
    for ours, hf in _HF_TRANSPOSED:
        out[ours] = sd[hf].t().contiguous()
    for ours_prefix, hf_prefix in _TOWERS:
        for i in range(_count(sd, rf"{re.escape(hf_prefix)}\.(\d+)\.")):
            src, dst = f"{hf_prefix}.{i}.", f"{ours_prefix}.{i}."
            for suffix in ("weight", "bias"):
                out[dst + f"attn.in_proj_{suffix}"] = torch.cat(
                    [sd[src + f"self_attn.{n}_proj.{suffix}"] for n in "qkv"], dim=0)
                for a, b in _HF_LAYER:
                    out[dst + f"{a}.{suffix}"] = sd[src + f"{b}.{suffix}"]
    return out


def to_hf_config(model_cfg, quick_gelu=None):
    """OpenCLIP ViT model config -> keyword arguments of ``transformers.CLIPConfig``
    (``CLIPConfig(**to_hf_config(cfg))``). Exact GELU maps to ``hidden_act='gelu'``, QuickGELU to ``'quick_gelu'``."""
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    if isinstance(vision.get("layers", 12), (list, tuple)):
        raise ValueError("model_cfg: HF CLIPModel has no ResNet image tower; only ViT models convert")
    quick = model_cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu
    act = "quick_gelu" if quick else "gelu"
    v_width, t_width = vision.get("width", 768), text.get("width", 512)
    return {
        "projection_dim": model_cfg["embed_dim"],
        "text_config": {"vocab_size": text.get("vocab_size", 49408), "hidden_size": t_width,
                        "intermediate_size": int(t_width * text.get("mlp_ratio", 4.0)),
                        "num_hidden_layers": text.get("layers", 12), "num_attention_heads": text.get("heads", 8),
                        "max_position_embeddings": text.get("context_length", 77), "hidden_act": act,
                        "layer_norm_eps": 1e-5, "projection_dim": model_cfg["embed_dim"],
                        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1},
        "vision_config": {"hidden_size": v_width, "intermediate_size": int(v_width * vision.get("mlp_ratio", 4.0)),
                          "num_hidden_layers": vision.get("layers", 12),
                          "num_attention_heads": v_width // vision.get("head_width", 64),
                          "image_size": vision.get("image_size", 224), "patch_size": vision.get("patch_size", 16),
                          "num_channels": 3, "hidden_act": act, "layer_norm_eps": 1e-5,
                          "projection_dim": model_cfg["embed_dim"]},
    }
