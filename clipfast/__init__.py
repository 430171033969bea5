"""clipfast: the fastest, leanest way to train CLIP models.

Public API mirrors OpenCLIP 3.3's (``create_model``, ``CLIP``, ``ClipLoss``, ``get_tokenizer``, ``create_loss``,
``build_zero_shot_classifier``, ...); fused kernels live behind ``clipfast.ops`` and are chosen per device by
``clipfast.backend``. ``clipfast.install_as_open_clip()`` also maps ``open_clip.<submodule>`` imports to clipfast,
so OpenCLIP's own ``open_clip_train`` runs on it. Names clipfast cannot serve (TorchScript, CoCa, HF/timm towers,
downloads) raise ``NotImplementedError`` naming the feature.
"""

__version__ = "0.1.0"

from clipfast.configs import TextConfig, VisionConfig, add_model_config, get_model_config, list_models
from clipfast.factory import (
    create_loss, create_model, create_model_and_transforms, create_model_from_pretrained, get_tokenizer,
)
from clipfast.model import (
    CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP, convert_weights_to_fp16, get_model_preprocess_cfg,
    get_model_tokenize_cfg, set_model_preprocess_cfg, trace_model,
)
from clipfast.precision import convert_weights_to_lp, get_cast_dtype, get_input_dtype
from clipfast.checkpoint import load_checkpoint
from clipfast.checkpoint import build_model, load_state_dict
from clipfast.tokenizer import SimpleTokenizer, decode, tokenize
from clipfast.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, AugmentationCfg, image_transform
from clipfast.loss import ClipLoss, SigLipLoss
from clipfast.zero_shot_classifier import build_zero_shot_classifier, build_zero_shot_classifier_legacy
from clipfast.zero_shot_metadata import (
    IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES,
)
from clipfast.pretrained import (
    download_pretrained, download_pretrained_from_url, get_pretrained_cfg, get_pretrained_url, is_pretrained_cfg,
    list_pretrained, list_pretrained_models_by_tag, list_pretrained_tags_by_model,
)
from clipfast.open_clip_compat import (
    CoCa, CoCaLoss, DistillClipLoss, install_as_open_clip, list_openai_models, load_openai_model,
    push_pretrained_to_hf_hub, push_to_hf_hub,
)
from clipfast import constants, hf_model, utils
from clipfast import transforms as transform  # OpenCLIP's module name
