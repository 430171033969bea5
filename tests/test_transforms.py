"""clipfast.transforms: same pipeline repr and same pixels as open_clip's image_transform."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from clipfast.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, AugmentationCfg, image_transform

oc_transform = pytest.importorskip("open_clip.transform")


def _image(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (h, w) if channels is None else (h, w, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


IMAGES = [_image(97, 61), _image(40, 90, "L"), _image(50, 50, "RGBA"), _image(20, 13)]


def _repr_open_clip(t):
    # open_clip's ResizeKeepRatio.__repr__ has a stray ')' after the interpolation; ours does not
    return repr(t).replace("BICUBIC), longest", "BICUBIC, longest").replace("BILINEAR), longest", "BILINEAR, longest")


def test_openai_constants():
    assert OPENAI_DATASET_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert OPENAI_DATASET_STD == (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("is_train", [False, True])
@pytest.mark.parametrize("size", [224, 336, 32])
def test_default_repr_matches_open_clip(size, is_train):
    assert repr(image_transform(size, is_train)) == repr(oc_transform.image_transform(size, is_train))


EVAL_CASES = [
    dict(image_size=32),
    dict(image_size=32, interpolation="bilinear"),
    dict(image_size=(32, 24)),
    dict(image_size=32, resize_mode="longest", fill_color=128),
    dict(image_size=32, resize_mode="squash"),
    dict(image_size=32, mean=(0.5, 0.5, 0.5), std=0.5),
]


@pytest.mark.parametrize("kwargs", EVAL_CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_eval_pixels_equal_open_clip(kwargs):
    ours = image_transform(is_train=False, **kwargs)
    ref = oc_transform.image_transform(is_train=False, **kwargs)
    assert repr(ours) == _repr_open_clip(ref)
    for img in IMAGES:
        a, b = ours(img), ref(img)
        assert a.dtype == torch.float32 and a.shape[0] == 3
        assert torch.equal(a, b), f"{kwargs} on {img.size} {img.mode}"


@pytest.mark.filterwarnings("ignore:Unused augmentation")  # open_clip warns about items it does use
@pytest.mark.parametrize("aug_cfg", [None, {"scale": (0.5, 1.0)},
                                     AugmentationCfg(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8,
                                                     gray_scale_prob=0.5)])
def test_train_pixels_equal_open_clip_same_seed(aug_cfg):
    ours = image_transform(32, True, aug_cfg=aug_cfg)
    ref = oc_transform.image_transform(32, True, aug_cfg=aug_cfg if not isinstance(aug_cfg, AugmentationCfg)
                                       else oc_transform.AugmentationCfg(**aug_cfg.__dict__))
    for i, img in enumerate(IMAGES):
        torch.manual_seed(i)
        random.seed(i)
        a = ours(img)
        torch.manual_seed(i)
        random.seed(i)
        b = ref(img)
        assert a.shape == (3, 32, 32)
        assert torch.equal(a, b)


def test_tensor_input_passes_through_conversion():
    x = torch.rand(3, 40, 50)
    out = image_transform(32, False)(x)
    ref = oc_transform.image_transform(32, False)(x)
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_unused_timm_only_items_warn():
    with pytest.warns(UserWarning, match="re_prob"):
        image_transform(32, True, aug_cfg={"re_prob": 0.25})


def test_bad_arguments():
    with pytest.raises(ValueError, match="interpolation"):
        image_transform(32, False, interpolation="nearest")
    with pytest.raises(ValueError, match="resize_mode"):
        image_transform(32, False, resize_mode="crop")
    with pytest.raises(ValueError, match="mean"):
        image_transform(32, False, mean=(0.5, 0.5))
    with pytest.raises(TypeError, match="aug_cfg"):
        image_transform(32, True, aug_cfg=[0.9, 1.0])
    with pytest.raises(ValueError, match="color_jitter"):
        image_transform(32, True, aug_cfg={"color_jitter_prob": 0.5})


def test_factory_transforms_match_open_clip():
    import clipfast

    _, train, val = clipfast.create_model_and_transforms("tiny-vit")
    assert repr(val) == repr(oc_transform.image_transform(32, False))
    assert repr(train) == repr(oc_transform.image_transform(32, True))
