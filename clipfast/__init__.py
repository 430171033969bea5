"""clipfast: the fastest, leanest way to train CLIP models.

Public API mirrors OpenCLIP's (``create_model``, ``CLIP``, ``ClipLoss``, ``get_tokenizer``, ...);
fused kernels live behind ``clipfast.ops`` and are chosen per device by ``clipfast.backend``.
"""

__version__ = "0.1.0"

from clipfast.configs import TextConfig, VisionConfig, add_model_config, get_model_config, list_models  # noqa: E402
from clipfast.factory import (  # noqa: E402
    create_model, create_model_and_transforms, create_model_from_pretrained, get_tokenizer,
)
from clipfast.model import CLIP  # noqa: E402
from clipfast.precision import convert_weights_to_lp, get_cast_dtype, get_input_dtype  # noqa: E402
from clipfast.checkpoint import load_checkpoint  # noqa: E402
from clipfast.checkpoint import build_model, load_state_dict  # noqa: E402
from clipfast.tokenizer import SimpleTokenizer, decode, tokenize  # noqa: E402
from clipfast.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, image_transform  # noqa: E402
from clipfast.loss import ClipLoss, SigLipLoss  # noqa: E402
