"""clipfast.configs: registry, OpenCLIP field names, unimplemented fields named in errors."""
import dataclasses
import json
import re

import open_clip
import pytest
import torch

import clipfast
from clipfast.configs import TextConfig, VisionConfig, check_supported, to_config

NAMES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336",
         "ViT-H-14", "tiny-vit", "tiny-rn"]


def test_registry_has_every_named_config_and_twin():
    names = clipfast.list_models()
    for name in NAMES:
        assert name in names and name + "-quickgelu" in names
        assert clipfast.get_model_config(name + "-quickgelu")["quick_gelu"] is True
    assert clipfast.get_model_config("no-such-model") is None
    for name in NAMES[:10]:  # same numbers as open_clip's JSON
        assert clipfast.get_model_config(name) == open_clip.get_model_config(name)


def test_get_model_config_returns_a_copy():
    clipfast.get_model_config("tiny-vit")["embed_dim"] = 1
    assert clipfast.get_model_config("tiny-vit")["embed_dim"] == 64


def test_field_names_and_defaults_equal_open_clip():
    for ours, theirs in ((VisionConfig, open_clip.model.CLIPVisionCfg), (TextConfig, open_clip.model.CLIPTextCfg)):
        assert {f.name: f.default for f in dataclasses.fields(ours)} == \
               {f.name: f.default for f in dataclasses.fields(theirs)}


def test_tiny_configs_build_in_open_clip():
    for name in ("tiny-vit", "tiny-rn", "tiny-vit-quickgelu", "tiny-rn-quickgelu"):
        with torch.device("meta"):
            open_clip.model.CLIP(**clipfast.get_model_config(name))


def test_open_clip_dataclass_configs_accepted():
    v = to_config(open_clip.model.CLIPVisionCfg(layers=2, width=64, patch_size=8), VisionConfig)
    assert v.layers == 2 and v.patch_size == 8


def test_unknown_field_and_unimplemented_values_are_errors():
    with pytest.raises(TypeError, match="widht"):
        to_config({"widht": 3}, VisionConfig)
    with pytest.raises(NotImplementedError, match="text_cfg.proj_bias"):
        check_supported(VisionConfig(), TextConfig(proj_bias=True))
    with pytest.raises(NotImplementedError, match="vision_cfg.timm_model_name"):
        check_supported(VisionConfig(timm_model_name="vit_base"), TextConfig())
    with pytest.raises(ValueError, match="head_width"):
        check_supported(VisionConfig(width=100), TextConfig())
    check_supported(VisionConfig(patch_dropout=0.5), TextConfig(pool_type="eos", no_causal_mask=True))


def test_add_model_config(tmp_path, monkeypatch):
    import clipfast.configs as configs

    monkeypatch.setattr(configs, "_CONFIG_PATHS", list(configs._CONFIG_PATHS))
    monkeypatch.setattr(configs, "_MODEL_CONFIGS", dict(configs._registry()))
    cfg = clipfast.get_model_config("tiny-vit")
    cfg["embed_dim"] = 32
    (tmp_path / "my-tiny.json").write_text(json.dumps(cfg))
    clipfast.add_model_config(tmp_path / "my-tiny.json")
    assert "my-tiny" in clipfast.list_models()
    assert clipfast.create_model("my-tiny").text_projection.shape == (64, 32)
    with pytest.raises(FileNotFoundError, match="path"):
        clipfast.add_model_config(tmp_path / "missing")


_OURS_ONLY = {"demo-vit", "tiny-rn", "tiny-rn-quickgelu", "tiny-vit", "tiny-vit-quickgelu"}
SHARED = sorted(set(clipfast.list_models()) & set(open_clip.list_models()))


def test_every_built_in_tower_config_of_open_clip_is_registered():
    from clipfast.unsupported_configs import UNSUPPORTED_OPEN_CLIP_CONFIGS

    ours, theirs = set(clipfast.list_models()), set(open_clip.list_models())
    assert ours - theirs == _OURS_ONLY
    assert len(SHARED) == 48 and len(theirs) == 144
    # every OpenCLIP config is either shipped (same JSON) or listed with what it needs
    assert theirs - ours == set(UNSUPPORTED_OPEN_CLIP_CONFIGS)
    for name in SHARED:
        assert clipfast.get_model_config(name) == open_clip.get_model_config(name), name


def _layout(model):
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()], \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", SHARED)
def test_shared_config_keys_shapes_and_parameter_order_equal_open_clip(name):
    """State-dict keys/shapes and the ordered ``named_parameters()`` list (= optimizer state indices) on the meta
    device, so ViT-bigG / ViT-e cost no memory."""
    cfg = clipfast.get_model_config(name)
    with torch.device("meta"):
        ref_params, ref_sd = _layout(open_clip.model.CLIP(**cfg))
        our_params, our_sd = _layout(clipfast.CLIP(**cfg))
    assert our_sd == ref_sd
    assert our_params == ref_params


@pytest.mark.parametrize("name,needs", [("convnext_base", "timm image tower 'convnext_base'"),
                                        ("roberta-ViT-B-32", "HF text tower 'roberta-base'"),
                                        ("coca_ViT-B-32", "CoCa"), ("ViT-L-14-CLIPA", "no_ln_pre"),
                                        ("ViT-M-16-alt", "ls_init_value"), ("ViT-B-16-SigLIP2", "timm image tower")])
def test_unbuildable_open_clip_configs_raise_naming_what_is_missing(name, needs):
    with pytest.raises(NotImplementedError, match=re.escape(needs)):
        clipfast.create_model(name)
    with pytest.raises(RuntimeError, match="unknown model"):
        clipfast.create_model("no-such-model")
