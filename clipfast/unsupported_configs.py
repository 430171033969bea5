"""OpenCLIP 3.3 model configs that clipfast does not build yet, with what each one needs.

The 48 OpenCLIP configs made of built-in towers (ViT/ModifiedResNet image tower, CLIP text transformer) ship
as JSON in ``clipfast/model_configs`` (byte-identical copies of OpenCLIP's). The rest are listed here so that
``create_model(name)`` raises ``NotImplementedError`` naming the missing tower or config field instead of
"unknown model" (timm / HF towers and CoCa are planned; the CLIPA and layer-scale fields are not implemented).
Generated from ``open_clip/model_configs/*.json`` of open-clip-torch 3.3.0.
"""

__all__ = ["UNSUPPORTED_OPEN_CLIP_CONFIGS", "unsupported_reason"]

UNSUPPORTED_OPEN_CLIP_CONFIGS = {
    'coca_base': 'CoCa multimodal text decoder',
    'coca_roberta-ViT-B-32': "CoCa multimodal text decoder; HF text tower 'roberta-base'",
    'coca_ViT-B-32': 'CoCa multimodal text decoder',
    'coca_ViT-L-14': 'CoCa multimodal text decoder',
    'convnext_base': "timm image tower 'convnext_base'",
    'convnext_base_w': "timm image tower 'convnext_base'",
    'convnext_base_w_320': "timm image tower 'convnext_base'",
    'convnext_large': "timm image tower 'convnext_large'",
    'convnext_large_d': "timm image tower 'convnext_large'",
    'convnext_large_d_320': "timm image tower 'convnext_large'",
    'convnext_small': "timm image tower 'convnext_small'",
    'convnext_tiny': "timm image tower 'convnext_tiny'",
    'convnext_xlarge': "timm image tower 'convnext_xlarge'",
    'convnext_xxlarge': "timm image tower 'convnext_xxlarge'",
    'convnext_xxlarge_320': "timm image tower 'convnext_xxlarge'",
    'EVA01-g-14-plus': "timm image tower 'eva_giant_patch14_224'",
    'EVA01-g-14': "timm image tower 'eva_giant_patch14_224'",
    'EVA02-B-16': "timm image tower 'eva02_base_patch16_clip_224'",
    'EVA02-E-14-plus': "timm image tower 'eva02_enormous_patch14_clip_224'",
    'EVA02-E-14': "timm image tower 'eva02_enormous_patch14_clip_224'",
    'EVA02-L-14-336': "timm image tower 'eva02_large_patch14_clip_336'",
    'EVA02-L-14': "timm image tower 'eva02_large_patch14_clip_224'",
    'MobileCLIP-B': "timm image tower 'vit_base_mci_224'",
    'MobileCLIP-S1': "timm image tower 'fastvit_mci1'",
    'MobileCLIP-S2': "timm image tower 'fastvit_mci2'",
    'MobileCLIP2-B': "timm image tower 'vit_base_mci_224'",
    'MobileCLIP2-L-14': "timm image tower 'vit_large_patch14_clip_224'",
    'MobileCLIP2-S0': "timm image tower 'fastvit_mci0'",
    'MobileCLIP2-S2': "timm image tower 'fastvit_mci2'",
    'MobileCLIP2-S3': "timm image tower 'fastvit_mci3'",
    'MobileCLIP2-S4': "timm image tower 'fastvit_mci4'",
    'mt5-base-ViT-B-32': "HF text tower 'google/mt5-base'",
    'mt5-xl-ViT-H-14': "HF text tower 'google/mt5-xl'",
    'nllb-clip-base-siglip': ("timm image tower 'vit_base_patch16_siglip_384'; "
        "HF text tower 'facebook/nllb-200-distilled-600M'"),
    'nllb-clip-base': "HF text tower 'facebook/nllb-200-distilled-600M'",
    'nllb-clip-large-siglip': ("timm image tower 'vit_so400m_patch14_siglip_384'; "
        "HF text tower 'facebook/nllb-200-distilled-1.3B'"),
    'nllb-clip-large': "HF text tower 'facebook/nllb-200-distilled-1.3B'",
    'PE-Core-B-16': "timm image tower 'vit_pe_core_base_patch16_224'",
    'PE-Core-bigG-14-448': "timm image tower 'vit_pe_core_gigantic_patch14_448'",
    'PE-Core-L-14-336': "timm image tower 'vit_pe_core_large_patch14_336'",
    'PE-Core-S-16-384': "timm image tower 'vit_pe_core_small_patch16_384'",
    'PE-Core-T-16-384': "timm image tower 'vit_pe_core_tiny_patch16_384'",
    'roberta-ViT-B-32': "HF text tower 'roberta-base'",
    'swin_base_patch4_window7_224': "timm image tower 'swin_base_patch4_window7_224'",
    'ViT-B-16-SigLIP-256': "timm image tower 'vit_base_patch16_siglip_256'",
    'ViT-B-16-SigLIP-384': "timm image tower 'vit_base_patch16_siglip_384'",
    'ViT-B-16-SigLIP-512': "timm image tower 'vit_base_patch16_siglip_512'",
    'ViT-B-16-SigLIP-i18n-256': "timm image tower 'vit_base_patch16_siglip_256'",
    'ViT-B-16-SigLIP': "timm image tower 'vit_base_patch16_siglip_224'",
    'ViT-B-16-SigLIP2-256': "timm image tower 'vit_base_patch16_siglip_256'",
    'ViT-B-16-SigLIP2-384': "timm image tower 'vit_base_patch16_siglip_384'",
    'ViT-B-16-SigLIP2-512': "timm image tower 'vit_base_patch16_siglip_512'",
    'ViT-B-16-SigLIP2': "timm image tower 'vit_base_patch16_siglip_224'",
    'ViT-B-32-SigLIP2-256': "timm image tower 'vit_base_patch32_siglip_256'",
    'ViT-bigG-14-CLIPA-336': ('vision_cfg.no_ln_pre=True; '
        "vision_cfg.final_ln_after_pool=True; vision_cfg.pool_type='avg'"),
    'ViT-bigG-14-CLIPA': ('vision_cfg.no_ln_pre=True; '
        "vision_cfg.final_ln_after_pool=True; vision_cfg.pool_type='avg'"),
    'ViT-gopt-16-SigLIP2-256': "timm image tower 'vit_giantopt_patch16_siglip_256'",
    'ViT-gopt-16-SigLIP2-384': "timm image tower 'vit_giantopt_patch16_siglip_384'",
    'ViT-H-14-CLIPA-336': ('vision_cfg.no_ln_pre=True; '
        "vision_cfg.final_ln_after_pool=True; vision_cfg.pool_type='avg'"),
    'ViT-H-14-CLIPA': "vision_cfg.no_ln_pre=True; vision_cfg.final_ln_after_pool=True; vision_cfg.pool_type='avg'",
    'ViT-L-14-CLIPA-336': ('vision_cfg.no_ln_pre=True; '
        "vision_cfg.final_ln_after_pool=True; vision_cfg.pool_type='avg'"),
    'ViT-L-14-CLIPA': "vision_cfg.no_ln_pre=True; vision_cfg.final_ln_after_pool=True; vision_cfg.pool_type='avg'",
    'ViT-L-16-SigLIP-256': "timm image tower 'vit_large_patch16_siglip_256'",
    'ViT-L-16-SigLIP-384': "timm image tower 'vit_large_patch16_siglip_384'",
    'ViT-L-16-SigLIP2-256': "timm image tower 'vit_large_patch16_siglip_256'",
    'ViT-L-16-SigLIP2-384': "timm image tower 'vit_large_patch16_siglip_384'",
    'ViT-L-16-SigLIP2-512': "timm image tower 'vit_large_patch16_siglip_512'",
    'ViT-M-16-alt': 'vision_cfg.ls_init_value=0.0001',
    'ViT-SO400M-14-SigLIP-378': "timm image tower 'vit_so400m_patch14_siglip_378'",
    'ViT-SO400M-14-SigLIP-384': "timm image tower 'vit_so400m_patch14_siglip_384'",
    'ViT-SO400M-14-SigLIP': "timm image tower 'vit_so400m_patch14_siglip_224'",
    'ViT-SO400M-14-SigLIP2-378': "timm image tower 'vit_so400m_patch14_siglip_378'",
    'ViT-SO400M-14-SigLIP2': "timm image tower 'vit_so400m_patch14_siglip_224'",
    'ViT-SO400M-16-SigLIP-i18n-256': "timm image tower 'vit_so400m_patch16_siglip_256'",
    'ViT-SO400M-16-SigLIP2-256': "timm image tower 'vit_so400m_patch16_siglip_256'",
    'ViT-SO400M-16-SigLIP2-384': "timm image tower 'vit_so400m_patch16_siglip_384'",
    'ViT-SO400M-16-SigLIP2-512': "timm image tower 'vit_so400m_patch16_siglip_512'",
    'vit_medium_patch16_gap_256': "timm image tower 'vit_medium_patch16_gap_256'",
    'vit_relpos_medium_patch16_cls_224': "timm image tower 'vit_relpos_medium_patch16_cls_224'",
    'ViTamin-B-LTT': "timm image tower 'vitamin_base_224'",
    'ViTamin-B': "timm image tower 'vitamin_base_224'",
    'ViTamin-L-256': "timm image tower 'vitamin_large_256'",
    'ViTamin-L-336': "timm image tower 'vitamin_large_336'",
    'ViTamin-L-384': "timm image tower 'vitamin_large_384'",
    'ViTamin-L': "timm image tower 'vitamin_large_224'",
    'ViTamin-L2-256': "timm image tower 'vitamin_large2_256'",
    'ViTamin-L2-336': "timm image tower 'vitamin_large2_336'",
    'ViTamin-L2-384': "timm image tower 'vitamin_large2_384'",
    'ViTamin-L2': "timm image tower 'vitamin_large2_224'",
    'ViTamin-S-LTT': "timm image tower 'vitamin_small_224'",
    'ViTamin-S': "timm image tower 'vitamin_small_224'",
    'ViTamin-XL-256': "timm image tower 'vitamin_xlarge_256'",
    'ViTamin-XL-336': "timm image tower 'vitamin_xlarge_336'",
    'ViTamin-XL-384': "timm image tower 'vitamin_xlarge_384'",
    'xlm-roberta-base-ViT-B-32': "HF text tower 'xlm-roberta-base'",
    'xlm-roberta-large-ViT-H-14': "HF text tower 'xlm-roberta-large'",
}


def unsupported_reason(model_name):
    """What OpenCLIP's config ``model_name`` needs that clipfast lacks, or None if it is not such a config."""
    return UNSUPPORTED_OPEN_CLIP_CONFIGS.get(model_name)
