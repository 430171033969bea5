"""Image preprocessing equal to OpenCLIP's ``image_transform`` (same transforms, same outputs, same ``repr``).

Eval (``resize_mode='shortest'``, the CLIP default): ``Resize(shortest side -> S, bicubic)`` -> ``CenterCrop(S)``
-> RGB -> ``ToTensor`` (``[0, 1]``, ``(3, S, S)``) -> ``Normalize(mean, std)``. ``'longest'`` resizes the longest
side to S and pads (``fill_color``) to ``S x S``; ``'squash'`` resizes to ``S x S`` ignoring the aspect ratio.
Train: ``RandomResizedCrop(S, scale=(0.9, 1.0), bicubic)`` -> RGB -> [color jitter] -> [grayscale] -> ``ToTensor``
-> ``Normalize``, or timm's ``create_transform`` when ``aug_cfg.use_timm``. Mean/std default to OpenAI's.

Tensors pass through the RGB/ToTensor steps unchanged (as OpenCLIP's ``MaybeConvertMode``/``MaybeToTensor``).
"""
import dataclasses
import numbers
import random
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import (CenterCrop, ColorJitter, Compose, Grayscale, InterpolationMode, Normalize,
                                    RandomResizedCrop, Resize, ToTensor)

__all__ = ["OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD", "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN",
           "INCEPTION_STD", "AugmentationCfg", "image_transform", "ResizeKeepRatio", "CenterCropOrPad",
           "MaybeConvertMode", "MaybeToTensor"]

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass
class AugmentationCfg:
    """Training augmentation settings; OpenCLIP's ``AugmentationCfg`` fields.

    ``scale``: RandomResizedCrop area range. ``color_jitter`` (4 floats) with ``color_jitter_prob`` and
    ``gray_scale_prob``: SimCLR-style jitter/grayscale. ``ratio``, ``re_prob``, ``re_count`` only apply with
    ``use_timm=True`` (timm's ``create_transform``).
    """

    scale: Tuple[float, float] = (0.9, 1.0)
    ratio: Optional[Tuple[float, float]] = None
    color_jitter: Optional[Union[float, Tuple[float, float, float], Tuple[float, float, float, float]]] = None
    re_prob: Optional[float] = None
    re_count: Optional[int] = None
    use_timm: bool = False
    color_jitter_prob: Optional[float] = None
    gray_scale_prob: Optional[float] = None


def _pair(size):
    if isinstance(size, numbers.Number):
        return int(size), int(size)
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise ValueError(f"size: expected an int or (h, w), got {size!r}")
    return tuple(size)


class ResizeKeepRatio:
    """Resize keeping the aspect ratio so the shortest (``longest=0``) or longest (``longest=1``) side fits ``size``."""

    def __init__(self, size, longest=0.0, interpolation=InterpolationMode.BICUBIC):
        self.size = _pair(size)
        self.longest = float(longest)
        self.interpolation = interpolation

    def __call__(self, img):
        _, h, w = TF.get_dimensions(img)
        ratio_h, ratio_w = h / self.size[0], w / self.size[1]
        ratio = max(ratio_h, ratio_w) * self.longest + min(ratio_h, ratio_w) * (1.0 - self.longest)
        return TF.resize(img, [round(h / ratio), round(w / ratio)], self.interpolation)

    def __repr__(self):
        return f"{self.__class__.__name__}(size={self.size}, interpolation={self.interpolation}, longest={self.longest:.3f})"


class CenterCropOrPad(torch.nn.Module):
    """Center crop to ``size``, padding with ``fill`` first where the image is smaller."""

    def __init__(self, size, fill=0):
        super().__init__()
        self.size = _pair(size)
        self.fill = fill

    def forward(self, img):
        crop_h, crop_w = self.size
        _, h, w = TF.get_dimensions(img)
        if crop_w > w or crop_h > h:
            pad_w, pad_h = max(crop_w - w, 0), max(crop_h - h, 0)
            img = TF.pad(img, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=self.fill)
            _, h, w = TF.get_dimensions(img)
            if (crop_h, crop_w) == (h, w):
                return img
        return TF.crop(img, int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0)), crop_h, crop_w)

    def __repr__(self):
        return f"{self.__class__.__name__}(size={self.size})"


class MaybeConvertMode:
    """``PIL.Image.convert(mode)`` for PIL images; tensors and arrays pass through."""

    def __init__(self, mode="RGB"):
        self.mode = mode

    def __call__(self, pic):
        return pic if not hasattr(pic, "convert") else pic.convert(self.mode)

    def __repr__(self):
        return f"{self.__class__.__name__}()"


class MaybeToTensor(ToTensor):
    """``ToTensor`` for PIL images and arrays; tensors pass through."""

    def __call__(self, pic):
        return pic if isinstance(pic, torch.Tensor) else TF.to_tensor(pic)

    def __repr__(self):
        return f"{self.__class__.__name__}()"


class _RandomApply:
    """Apply ``transform`` with probability ``p`` (python ``random``, as OpenCLIP's color_jitter/gray_scale)."""

    def __init__(self, transform, p):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        self.transform, self.p = transform, p

    def __call__(self, img):
        return self.transform(img) if random.random() < self.p else img

    def __repr__(self):
        return f"{self.__class__.__name__}({self.transform!r}, p={self.p})"


def _three(v, name):
    if isinstance(v, (list, tuple)):
        if len(v) != 3:
            raise ValueError(f"{name}: expected 3 values (RGB) or one float, got {v!r}")
        return tuple(v)
    return (v,) * 3


def _aug_cfg(aug_cfg):
    if aug_cfg is None:
        return AugmentationCfg()
    if isinstance(aug_cfg, AugmentationCfg):
        return aug_cfg
    if dataclasses.is_dataclass(aug_cfg):  # e.g. open_clip's AugmentationCfg
        aug_cfg = dataclasses.asdict(aug_cfg)
    if not isinstance(aug_cfg, dict):
        raise TypeError(f"aug_cfg: expected a dict or AugmentationCfg, got {type(aug_cfg).__name__}")
    return AugmentationCfg(**aug_cfg)


def _train_transform(image_size, mean, std, interpolation, aug_cfg):
    aug = {k: v for k, v in dataclasses.asdict(aug_cfg).items() if v is not None}
    if aug.pop("use_timm", False):
        from timm.data import create_transform

        input_size = (3,) + tuple(image_size[-2:]) if isinstance(image_size, (tuple, list)) else (3, image_size, image_size)
        aug.setdefault("color_jitter", None)
        aug.pop("color_jitter_prob", None)
        aug.pop("gray_scale_prob", None)
        return create_transform(input_size=input_size, is_training=True, hflip=0.0, mean=mean, std=std,
                                re_mode="pixel", interpolation=interpolation, **aug)
    # OpenCLIP always crops with bicubic here, whatever ``interpolation`` says.
    steps = [RandomResizedCrop(image_size, scale=aug.pop("scale"), interpolation=InterpolationMode.BICUBIC),
             MaybeConvertMode()]
    if aug_cfg.color_jitter_prob:
        if aug_cfg.color_jitter is None or len(aug_cfg.color_jitter) != 4:
            raise ValueError("aug_cfg.color_jitter: expected 4 values (brightness, contrast, saturation, hue) "
                             f"when color_jitter_prob is set, got {aug_cfg.color_jitter!r}")
        steps.append(_RandomApply(ColorJitter(*aug_cfg.color_jitter), aug_cfg.color_jitter_prob))
    if aug_cfg.gray_scale_prob:
        steps.append(_RandomApply(Grayscale(num_output_channels=3), aug_cfg.gray_scale_prob))
    steps += [MaybeToTensor(), Normalize(mean=mean, std=std)]
    unused = [k for k in ("ratio", "re_prob", "re_count") if k in aug]
    if "color_jitter" in aug and not aug_cfg.color_jitter_prob:
        unused.append("color_jitter")
    if unused:
        warnings.warn(f"Unused augmentation cfg items, specify `use_timm` to use ({unused}).", stacklevel=2)
    return Compose(steps)


def image_transform(image_size: Union[int, Tuple[int, int]], is_train: bool,
                    mean: Optional[Tuple[float, ...]] = None, std: Optional[Tuple[float, ...]] = None,
                    resize_mode: Optional[str] = None, interpolation: Optional[str] = None, fill_color: int = 0,
                    aug_cfg: Optional[Union[Dict[str, Any], AugmentationCfg]] = None):
    """OpenCLIP's train or eval image transform.

    Args:
        image_size: output side S, or ``(h, w)``.
        is_train: training augmentation (random resized crop) instead of the deterministic eval pipeline.
        mean, std: normalization per channel (3-tuples or one float); default OpenAI's.
        resize_mode: eval resize, ``'shortest'`` (default), ``'longest'`` (fit and pad) or ``'squash'``.
        interpolation: ``'bicubic'`` (default), ``'bilinear'`` or ``'random'`` (bicubic at eval).
        fill_color: padding value of ``'longest'``.
        aug_cfg: ``AugmentationCfg`` or dict of its fields (train only).

    Returns:
        A callable: PIL image (any mode) or ``(3, H, W)`` float tensor -> normalized ``(3, h, w)`` float tensor.
    """
    mean = _three(mean or OPENAI_DATASET_MEAN, "mean")
    std = _three(std or OPENAI_DATASET_STD, "std")
    interpolation = interpolation or "bicubic"
    if interpolation not in ("bicubic", "bilinear", "random"):
        raise ValueError(f"interpolation: expected 'bicubic', 'bilinear' or 'random', got {interpolation!r}")
    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    resize_mode = resize_mode or "shortest"
    if resize_mode not in ("shortest", "longest", "squash"):
        raise ValueError(f"resize_mode: expected 'shortest', 'longest' or 'squash', got {resize_mode!r}")

    if is_train:
        return _train_transform(image_size, mean, std, interpolation, _aug_cfg(aug_cfg))

    if resize_mode == "longest":
        steps = [ResizeKeepRatio(image_size, longest=1, interpolation=mode), CenterCropOrPad(image_size, fill=fill_color)]
    elif resize_mode == "squash":
        steps = [Resize(_pair(image_size), interpolation=mode)]
    else:
        size = _pair(image_size)
        # square: torchvision's shortest-edge Resize; non-square: keep-ratio resize (bicubic, as OpenCLIP)
        steps = [Resize(size[0], interpolation=mode) if size[0] == size[1] else ResizeKeepRatio(size),
                 CenterCrop(size)]
    steps += [MaybeConvertMode(), MaybeToTensor(), Normalize(mean=mean, std=std)]
    return Compose(steps)
