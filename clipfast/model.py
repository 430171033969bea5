"""``clipfast.CLIP``: OpenCLIP's ``CLIP`` (same constructor, state-dict keys, outputs and methods), composed
from clipfast's towers.

Image tower: ``VisionTransformer`` (``vision_cfg.layers`` an int) or ``ModifiedResNet`` (4 stage depths).
Text tower (attributes of the model itself, as in OpenCLIP): ``token_embedding``, ``positional_embedding``,
``transformer``, ``ln_final``, ``text_projection (W_t, E)`` used as ``x @ P``. Text attention is causal through
``is_causal`` (no mask tensor); the pooled token is the argmax of the ids (EOT), and only that token runs the
last block. With ``text_varlen`` (default) a causal tower pooled at EOT computes only tokens ``0 .. eot`` of each
caption, packed (``clipfast.nn.varlen``): the tokens after EOT cannot reach the output. Logits:
``logit_scale.exp() * img @ txt.T (+ logit_bias)``.
"""
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from clipfast import backend
from clipfast.configs import TextConfig, VisionConfig, check_supported, to_config
from clipfast.nn.attention import Transformer
from clipfast.nn.layer_norm import LayerNorm
from clipfast.nn.resnet import ModifiedResNet
from clipfast.nn.varlen import VarlenLayout
from clipfast.nn.vision import VisionTransformer
from clipfast.precision import convert_weights_to_lp, get_cast_dtype, get_input_dtype  # noqa: F401 (open_clip.model)

__all__ = ["CLIP", "CustomTextCLIP", "CLIPVisionCfg", "CLIPTextCfg", "trace_model", "convert_weights_to_fp16",
           "get_model_preprocess_cfg", "set_model_preprocess_cfg", "get_model_tokenize_cfg"]

# OpenCLIP's names for the config dataclasses (same fields and defaults).
CLIPVisionCfg, CLIPTextCfg = VisionConfig, TextConfig
convert_weights_to_fp16 = convert_weights_to_lp  # OpenCLIP's backwards-compatible alias
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature: logit_scale.exp() = 1 / 0.07


def _build_vision_tower(embed_dim, cfg, quick_gelu):
    if cfg.is_resnet:
        return ModifiedResNet(layers=cfg.layers, output_dim=embed_dim, heads=cfg.width * 32 // cfg.head_width,
                              image_size=cfg.image_size, width=cfg.width)
    return VisionTransformer(image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.width,
                             layers=cfg.layers, heads=cfg.width // cfg.head_width, mlp_ratio=cfg.mlp_ratio,
                             output_dim=embed_dim, patch_dropout=cfg.patch_dropout, quick_gelu=quick_gelu)


class CLIP(nn.Module):
    """Contrastive image-text model; a drop-in for ``open_clip.CLIP``.

    Args:
        embed_dim: joint embedding size E.
        vision_cfg, text_cfg: ``VisionConfig``/``TextConfig``, OpenCLIP config dataclasses, or dicts with
            OpenCLIP's field names. Fields clipfast does not implement must keep their defaults.
        quick_gelu: QuickGELU MLPs (OpenAI weights) instead of exact GELU.
        init_logit_scale: initial ``logit_scale`` (log of the inverse temperature), default ``ln(1/0.07)``.
        init_logit_bias: initial ``logit_bias`` (SigLIP-style), or None for no bias.
        nonscalar_logit_scale: ``logit_scale``/``logit_bias`` of shape ``(1,)`` instead of ``()``.
        cast_dtype: the low-precision dtype of ``fp16``/``bf16`` precision modes; clipfast's LayerNorm always
            computes in fp32, so it only needs to be a valid dtype or None.
        output_dict: ``forward`` returns a dict instead of a tuple.
        text_varlen: padding-free text tower (default True). When the text tower is causal and pools one token
            per caption (``pool_type`` ``argmax``/``eos``/``first``), ``encode_text`` runs only tokens
            ``0 .. pooled`` of each caption, packed without padding (length buckets on CPU, the varlen attention
            kernel on CUDA): the same outputs and gradients as the padded path up to rounding order, at a
            fraction of the cost for short captions (it reads the lengths on the host once per call; a batch
            whose captions all fill L runs the padded path, the same work without the gathers).
            ``False`` computes all L tokens (the padded path, for comparison). Non-causal towers and
            ``pool_type="last"`` always take the padded path.

    Shapes:
        image ``(B, 3, S, S)``, text ``(B, L)`` integer ids with ``L <= context_length``; features ``(B, E)``.
    """

    def __init__(self, embed_dim, vision_cfg, text_cfg, quick_gelu=False, init_logit_scale=INIT_LOGIT_SCALE,
                 init_logit_bias=None, nonscalar_logit_scale=False, cast_dtype=None, output_dict=False, *,
                 text_varlen=True):
        super().__init__()
        vision_cfg, text_cfg = to_config(vision_cfg, VisionConfig), to_config(text_cfg, TextConfig)
        check_supported(vision_cfg, text_cfg)
        if cast_dtype is not None and not isinstance(cast_dtype, torch.dtype):
            raise TypeError(f"cast_dtype: expected a torch.dtype or None, got {cast_dtype!r}")
        self.output_dict = output_dict
        self.visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu)

        width = text_cfg.width
        self.context_length = text_cfg.context_length
        self.vocab_size = text_cfg.vocab_size
        self.text_pool_type = text_cfg.pool_type
        self.text_eos_id = text_cfg.eos_id
        self.text_causal = not text_cfg.no_causal_mask
        self.text_varlen = bool(text_varlen)
        # Created in this order (the seeded init draws stay the same), registered in OpenCLIP's order:
        # ``named_parameters()`` (so optimizer state indices) lists transformer before token_embedding.
        token_embedding = nn.Embedding(text_cfg.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(text_cfg.context_length, width))
        self.transformer = Transformer(width, text_cfg.layers, text_cfg.heads, text_cfg.mlp_ratio,
                                       quick_gelu=quick_gelu)
        self.token_embedding = token_embedding
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))

        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_text_parameters()
        nn.init.normal_(self.text_projection, std=width ** -0.5)

        lshape = [1] if nonscalar_logit_scale else []
        self.logit_scale = nn.Parameter(torch.ones(lshape) * init_logit_scale)
        self.logit_bias = nn.Parameter(torch.ones(lshape) * init_logit_bias) if init_logit_bias is not None else None

    @property
    def attn_mask(self):
        """OpenCLIP's additive causal mask ``(context_length, context_length)`` (-inf above the diagonal), built on
        demand for code that reads it; clipfast itself uses ``is_causal``. Not a buffer, never in the state dict."""
        if not self.text_causal:
            return None
        device = self.positional_embedding.device
        return torch.full((self.context_length, self.context_length), float("-inf"), device=device).triu_(1)

    def lock_image_tower(self, unlocked_groups=0, freeze_bn_stats=False):
        """Freeze the image tower except its last ``unlocked_groups`` groups (LiT, https://arxiv.org/abs/2111.07991)."""
        self.visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers=0, freeze_layer_norm=True):
        """Freeze the text tower except its last ``unlocked_layers`` groups: [token_embedding,
        positional_embedding], each block but the last, [last block, ln_final], [text_projection]."""
        if not freeze_layer_norm:
            raise ValueError("freeze_layer_norm=False is not supported (as in OpenCLIP): "
                             "LayerNorm is locked like other weights")
        blocks = list(self.transformer.resblocks)
        groups = [[self.token_embedding, self.positional_embedding], *[[b] for b in blocks[:-1]],
                  [blocks[-1], self.ln_final], [self.text_projection]]
        for i, group in enumerate(groups):
            unlock = unlocked_layers > 0 and i >= len(groups) - min(unlocked_layers, len(groups))
            for item in group:
                for p in ([item] if isinstance(item, nn.Parameter) else item.parameters()):
                    p.requires_grad = unlock

    def set_grad_checkpointing(self, enable=True):
        """Activation checkpointing (``use_reentrant=False``) per ViT/text block and per ResNet stage."""
        self.visual.set_grad_checkpointing(enable)
        self.transformer.grad_checkpointing = enable

    def no_weight_decay(self):
        """OpenCLIP's set of parameter names to exempt from weight decay, for timm-style optimizer factories.
        clipfast's trainer (like open_clip_train) applies ``clipfast.train.params``' rule instead."""
        no_wd = {"positional_embedding"}
        if hasattr(self.visual, "no_weight_decay"):
            no_wd |= {"visual." + n for n in self.visual.no_weight_decay()}
        return no_wd

    def encode_image(self, image, normalize=False):
        """image ``(B, 3, S, S)`` -> ``(B, E)``; L2-normalized when ``normalize``."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def _text_pool_index(self, text):
        """Position pooled per sequence (``(B,)`` tensor or int) and the keys its last-block query sees."""
        if self.text_pool_type == "argmax":
            index = text.argmax(dim=-1)
        elif self.text_pool_type == "eos":
            index = (text == self.text_eos_id).int().argmax(dim=-1)
        elif self.text_pool_type == "first":
            index = torch.zeros(text.shape[0], dtype=torch.long, device=text.device)
        else:  # "last"
            index = torch.full((text.shape[0],), text.shape[1] - 1, dtype=torch.long, device=text.device)
        return index, (index + 1 if self.text_causal else None)

    def encode_text(self, text, normalize=False):
        """text ``(B, L)`` integer ids, ``L <= context_length`` -> ``(B, E)``; L2-normalized when ``normalize``."""
        if text.dim() != 2 or text.shape[1] > self.context_length:
            raise ValueError(f"text: expected (B, L) token ids with L <= {self.context_length}, "
                             f"got {tuple(text.shape)}")
        cast_dtype = self.transformer.get_cast_dtype()
        index, kv_len = self._text_pool_index(text)
        layout = None
        if (self.text_varlen and self.text_causal and self.text_pool_type != "last"
                and not torch.compiler.is_compiling()):
            # Causal and pooled at `index`: tokens after it never reach the output; pack tokens 0 .. index
            # (unless every caption is full: then the padded path is the same work without the gathers).
            # torch.compile traces the padded path: the layout reads the lengths on the host (a graph break,
            # and a recompile per new length mix), so a compiled model stays one graph (fullgraph=True works).
            kernel = backend.resolve("attention", text.device) == "triton"
            layout = VarlenLayout(index + 1, text.shape[1], kernel=kernel)
        if layout is not None and layout.num_tokens < text.numel():
            x = self.token_embedding(text.reshape(-1)[layout.token_index]).to(cast_dtype)  # (T, W)
            x = x + self.positional_embedding[layout.positions].to(cast_dtype)
            x = self.transformer.forward_varlen(x, layout)  # (B, W)
        else:
            x = self.token_embedding(text).to(cast_dtype)  # (B, L, W)
            x = x + self.positional_embedding[: text.shape[1]].to(cast_dtype)
            x = self.transformer(x, causal=self.text_causal, pool_index=index, kv_len=kv_len)  # (B, W)
        x = self.ln_final(x) @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def get_logits(self, image, text):
        """-> ``(image_logits (B_i, B_t), text_logits (B_t, B_i))`` = scaled cosine similarities (+ bias)."""
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        image_logits = self.logit_scale.exp() * image_features @ text_features.T
        if self.logit_bias is not None:
            image_logits = image_logits + self.logit_bias
        return image_logits, image_logits.T

    def forward(self, image=None, text=None):
        """Normalized features of either or both modalities.

        Returns:
            ``(image_features, text_features, logit_scale.exp()[, logit_bias])``, or with ``output_dict`` a
            dict with keys ``image_features``, ``text_features``, ``logit_scale`` (exp'd) [, ``logit_bias``].
            A modality not given is None.
        """
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features,
                   "logit_scale": self.logit_scale.exp()}
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()


class CustomTextCLIP(nn.Module):
    """OpenCLIP's CLIP variant whose text tower is a separate ``text`` module (HF text towers, ``force_custom_text``,
    state-dict keys ``text.*``). Not implemented by clipfast: constructing one raises ``NotImplementedError``; it
    exists so ``isinstance(model, (CLIP, CustomTextCLIP))`` checks (``open_clip_train``) work."""

    def __init__(self, embed_dim, vision_cfg, text_cfg, quick_gelu=False, init_logit_scale=INIT_LOGIT_SCALE,
                 init_logit_bias=None, nonscalar_logit_scale=False, cast_dtype=None, output_dict=False, *,
                 text_varlen=True):
        raise NotImplementedError("CustomTextCLIP (a separate `text` tower: HF text towers, force_custom_text) is "
                                  "not implemented by clipfast; use clipfast.CLIP or open_clip")


def trace_model(model, batch_size=256, device="cpu"):
    """OpenCLIP's TorchScript tracing (``--trace``); not supported: clipfast's fused kernels are custom ops that
    TorchScript cannot trace. Raises ``NotImplementedError``; use ``torch.compile(model)``."""
    raise NotImplementedError("trace_model: TorchScript tracing (jit / --trace) is not supported by clipfast; "
                              "use torch.compile(model) instead")


def get_model_preprocess_cfg(model):
    """``model.visual.preprocess_cfg`` (set by the factory), else a dict from ``image_size``/``image_mean``/
    ``image_std`` attributes, as OpenCLIP."""
    module = getattr(model, "visual", model)
    cfg = getattr(module, "preprocess_cfg", {})
    if not cfg:
        size = module.image_size
        if size is not None:
            cfg["size"] = size
        for key in ("mean", "std"):
            value = getattr(module, f"image_{key}", None)
            if value is not None:
                cfg[key] = value
    return cfg


def set_model_preprocess_cfg(model, preprocess_cfg):
    """Attach ``preprocess_cfg`` (with ``mean``/``std``) to ``model.visual`` (also as ``image_mean``/``image_std``)."""
    module = getattr(model, "visual", model)
    module.image_mean = preprocess_cfg["mean"]
    module.image_std = preprocess_cfg["std"]
    module.preprocess_cfg = copy.deepcopy(preprocess_cfg)


def get_model_tokenize_cfg(model):
    """``{"context_length", "vocab_size"}`` of the text tower, as OpenCLIP."""
    module = getattr(model, "text", model)
    return {k: getattr(module, k) for k in ("context_length", "vocab_size") if getattr(module, k, None) is not None}
