"""``import clipfast as open_clip``: OpenCLIP 3.3's top-level names and submodules, their signatures and behaviour."""
import inspect
import sys
import types

import open_clip
import pytest
import torch
from torch import nn

import clipfast

# OpenCLIP submodules clipfast has no counterpart for (towers and converters it does not build; version info).
NO_COUNTERPART = {"coca_model", "convert", "hf_configs", "modified_resnet", "openai", "pos_embed", "timm_model",
                  "transformer", "version"}
SUBMODULES = ["constants", "hf_model", "pretrained", "utils", "zero_shot_classifier", "zero_shot_metadata"]


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


def _public(module):
    return [n for n in dir(module) if not n.startswith("_")]


def _params(obj):
    return [(p.name, p.default) for p in inspect.signature(obj).parameters.values()]


def test_every_top_level_name_exists_with_open_clips_signature():
    missing = [n for n in _public(open_clip) if not hasattr(clipfast, n)]
    assert set(missing) == NO_COUNTERPART
    for name in _public(open_clip):
        theirs, ours = getattr(open_clip, name), getattr(clipfast, name, None)
        if ours is None or isinstance(theirs, types.ModuleType) or not callable(theirs):
            continue
        try:
            ref = [n for n, _ in _params(theirs)]
        except (TypeError, ValueError):
            continue
        got = [n for n, _ in _params(ours)]
        assert got[:len(ref)] == ref, name
        # clipfast's ClipLoss and CLIP add keyword-only options after OpenCLIP's parameters
        extra = list(inspect.signature(ours).parameters.values())[len(ref):]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra), (name, extra)
        assert not extra or name in ("ClipLoss", "CLIP", "CustomTextCLIP"), (name, extra)


@pytest.mark.parametrize("sub", SUBMODULES)
def test_submodule_names(sub):
    theirs, ours = getattr(open_clip, sub), getattr(clipfast, sub)
    def defined_here(n):
        obj = getattr(theirs, n)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            return obj.__module__ == theirs.__name__
        return n.isupper() and sub in ("constants", "zero_shot_metadata")

    own = [n for n in _public(theirs) if defined_here(n)]
    assert [n for n in own if not hasattr(ours, n)] == []
    for n in own:
        if inspect.isfunction(getattr(theirs, n)) and not n.startswith("_"):
            assert [p for p, _ in _params(getattr(ours, n))] == [p for p, _ in _params(getattr(theirs, n))], n


def test_constants_and_zero_shot_metadata_equal():
    for name in ("OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD", "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN",
                 "INCEPTION_STD", "HF_WEIGHTS_NAME", "HF_SAFE_WEIGHTS_NAME", "HF_CONFIG_NAME"):
        assert getattr(clipfast.constants, name) == getattr(open_clip.constants, name)
    assert clipfast.IMAGENET_CLASSNAMES == open_clip.IMAGENET_CLASSNAMES and len(clipfast.IMAGENET_CLASSNAMES) == 1000
    for ours, theirs in ((clipfast.OPENAI_IMAGENET_TEMPLATES, open_clip.OPENAI_IMAGENET_TEMPLATES),
                         (clipfast.SIMPLE_IMAGENET_TEMPLATES, open_clip.SIMPLE_IMAGENET_TEMPLATES)):
        assert [t("cat") for t in ours] == [t("cat") for t in theirs]
    assert len(clipfast.OPENAI_IMAGENET_TEMPLATES) == 80


def _pair(name="tiny-vit"):
    ours = clipfast.create_model(name).eval()
    ref = open_clip.model.CLIP(**clipfast.get_model_config(name)).eval()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def test_zero_shot_classifier_equals_open_clips():
    ours, ref = _pair()
    tok = clipfast.get_tokenizer("tiny-vit")
    names, templates = clipfast.IMAGENET_CLASSNAMES[:13], clipfast.OPENAI_IMAGENET_TEMPLATES[:3]
    for kw in ({"num_classes_per_batch": 5}, {"num_classes_per_batch": None}):
        w = clipfast.build_zero_shot_classifier(ours, tok, names, templates, **kw)
        w_ref = open_clip.build_zero_shot_classifier(ref, open_clip.get_tokenizer("ViT-B-32"), names, templates, **kw)
        assert w.shape == (64, 13)
        torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)
    fmt = ["a photo of a {}.", "art of the {}."]
    torch.testing.assert_close(clipfast.build_zero_shot_classifier_legacy(ours, tok, names, fmt),
                               open_clip.build_zero_shot_classifier_legacy(ref, tok, names, fmt), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="templates"):
        clipfast.build_zero_shot_classifier(ours, tok, names, [])


def _train_args(*flags):
    from open_clip_train.params import parse_args

    return parse_args(["--model", "tiny-vit", *flags])


def test_create_loss_from_open_clip_train_args():
    loss = clipfast.create_loss(_train_args("--local-loss", "--gather-with-grad"))
    assert type(loss) is clipfast.ClipLoss and loss.local_loss and loss.gather_with_grad and loss.cache_labels
    args = _train_args("--siglip", "--loss-dist-impl", "gather")
    args.rank, args.world_size, args.distill = 0, 1, False
    loss = clipfast.create_loss(args)
    assert type(loss) is clipfast.SigLipLoss and loss.dist_impl == "gather"
    args = _train_args()
    args.distill = True
    with pytest.raises(NotImplementedError, match="DistillClipLoss"):
        clipfast.create_loss(args)
    args = _train_args("--model", "coca_ViT-B-32")
    args.distill = False
    with pytest.raises(NotImplementedError, match="CoCa"):
        clipfast.create_loss(args)


def test_unavailable_features_raise_naming_them():
    model = clipfast.create_model("tiny-vit")
    with pytest.raises(NotImplementedError, match="TorchScript"):
        clipfast.trace_model(model, batch_size=2)
    cfg = clipfast.get_model_config("tiny-vit")
    with pytest.raises(NotImplementedError, match="CustomTextCLIP"):
        clipfast.CustomTextCLIP(**cfg)
    assert not isinstance(model, clipfast.CustomTextCLIP) and isinstance(model, clipfast.CLIP)
    with pytest.raises(NotImplementedError, match="CoCa"):
        clipfast.CoCa(512, {}, {}, {})
    with pytest.raises(NotImplementedError, match="Hugging Face text towers"):
        clipfast.hf_model.HFTextEncoder("roberta-base", 512)
    with pytest.raises(NotImplementedError, match="download"):
        clipfast.pretrained.download_pretrained_from_url("https://example.com/x.pt")
    with pytest.raises(NotImplementedError, match="download"):
        clipfast.load_openai_model("ViT-B-32")
    assert clipfast.list_pretrained() == [] and clipfast.get_pretrained_url("ViT-B-32", "openai") == ""
    assert clipfast.list_openai_models() == [] and not clipfast.pretrained.has_hf_hub()


class _Replacement(nn.Linear):
    """Stands in for a bitsandbytes linear: same math, a ``prepare_for_eval`` hook."""

    def prepare_for_eval(self):
        self.prepared = True


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-vit-quickgelu"])
def test_replace_linear_keeps_outputs_and_int8_inference_hook(name):
    model = clipfast.create_model(name).eval()
    image, text = torch.randn(2, 3, 32, 32), torch.randint(1, 49406, (2, 77))
    before = model.encode_image(image), model.encode_text(text)
    clipfast.utils.replace_linear(model, _Replacement)
    replaced = [m for n, m in model.named_modules() if n.endswith(("c_fc", "c_proj"))]
    assert replaced and all(type(m) is _Replacement for m in replaced)
    after = model.encode_image(image), model.encode_text(text)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    clipfast.utils.convert_int8_model_to_inference_mode(model)
    assert all(m.prepared and m.int8_original_dtype == torch.float32 for m in replaced)


def test_utils_equal_open_clips():
    ours, ref = _pair("tiny-rn")
    frozen = clipfast.utils.freeze_batch_norm_2d(ours.visual, {"bn1"})
    frozen_ref = open_clip.utils.freeze_batch_norm_2d(ref.visual, {"bn1"})
    assert [type(m).__name__ for m in frozen.modules()] == [type(m).__name__ for m in frozen_ref.modules()]
    bn = nn.BatchNorm2d(4)
    assert type(clipfast.utils.freeze_batch_norm_2d(bn)).__name__ == "FrozenBatchNorm2d"
    for args in ((12, None), (12, 3), (12, [0, -1, 5])):
        assert clipfast.utils.feature_take_indices(*args) == open_clip.utils.feature_take_indices(*args)
    with pytest.raises(ValueError, match="indices"):
        clipfast.utils.feature_take_indices(4, [7])
    assert clipfast.utils.to_2tuple(3) == (3, 3) and clipfast.utils.to_ntuple(3, [1, 2]) == [1, 2]


def test_poolers_equal_open_clips():
    h = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    x = types.SimpleNamespace(last_hidden_state=h)
    for cls in ("MeanPooler", "MaxPooler", "ClsLastHiddenStatePooler"):
        torch.testing.assert_close(getattr(clipfast.hf_model, cls)()(x, mask),
                                   getattr(open_clip.hf_model, cls)()(x, mask))
    torch.testing.assert_close(clipfast.hf_model.ClsPooler()(x, mask), h[:, 0])
    assert set(clipfast.hf_model._POOLERS) == set(open_clip.hf_model._POOLERS)


def test_preprocess_and_tokenize_cfg_helpers():
    model = clipfast.create_model("tiny-vit")
    assert clipfast.get_model_preprocess_cfg(model) == open_clip.get_model_preprocess_cfg(model)
    assert clipfast.get_model_tokenize_cfg(model) == {"context_length": 77, "vocab_size": 49408}
    cfg = dict(model.visual.preprocess_cfg, mean=(0.5, 0.5, 0.5))
    clipfast.set_model_preprocess_cfg(model, cfg)
    assert model.visual.image_mean == (0.5, 0.5, 0.5) and model.visual.preprocess_cfg == cfg


def test_load_openai_model_from_a_local_file(tmp_path):
    # 64-wide towers with 64-dim heads: the head counts OpenAI's build_model infers
    ref = clipfast.CLIP(64, dict(image_size=32, layers=2, width=64, patch_size=8),
                        dict(width=64, heads=1, layers=2), quick_gelu=True).eval()
    torch.save(ref.state_dict(), tmp_path / "openai.pt")
    with pytest.warns(UserWarning, match="heads"):
        model = clipfast.load_openai_model(str(tmp_path / "openai.pt"), device="cpu")
    assert not model.training and model.visual.image_mean == clipfast.OPENAI_DATASET_MEAN
    image, text = torch.randn(2, 3, 32, 32), torch.randint(1, 49406, (2, 77))
    torch.testing.assert_close(model.encode_image(image), ref.encode_image(image))
    torch.testing.assert_close(model.encode_text(text), ref.encode_text(text))


def test_install_as_open_clip_maps_the_submodules(monkeypatch):
    keys = ["open_clip"] + [f"open_clip.{s}" for s in clipfast.open_clip_compat.SUBMODULES]
    for key in keys:  # restored after the test, whatever install_as_open_clip does
        monkeypatch.setitem(sys.modules, key, sys.modules.get(key))
    assert clipfast.install_as_open_clip() == keys
    import open_clip as aliased
    from open_clip.transform import image_transform
    from open_clip.utils import replace_linear

    assert aliased is clipfast and replace_linear is clipfast.utils.replace_linear
    assert image_transform is clipfast.image_transform
