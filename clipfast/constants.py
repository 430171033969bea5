"""OpenCLIP's ``open_clip.constants``: normalization statistics and Hugging Face Hub file names."""
from clipfast.transforms import (IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD,  # noqa: F401
                                 OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)

__all__ = ["OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD", "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN",
           "INCEPTION_STD", "HF_WEIGHTS_NAME", "HF_SAFE_WEIGHTS_NAME", "HF_CONFIG_NAME"]

# Weight / config file names of an OpenCLIP model folder on the Hub (and of ``local-dir:`` folders).
HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
HF_CONFIG_NAME = "open_clip_config.json"
