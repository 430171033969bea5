"""clipfast.factory: create_model* and get_tokenizer with OpenCLIP's signatures, offline."""
import inspect
import json

import open_clip
import pytest
import torch

import clipfast


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


@pytest.mark.parametrize("fn", ["create_model", "create_model_and_transforms", "create_model_from_pretrained",
                                "get_tokenizer"])
def test_signatures_equal_open_clip(fn):
    ours = inspect.signature(getattr(clipfast, fn)).parameters
    theirs = inspect.signature(getattr(open_clip, fn)).parameters
    assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]


def test_create_model_overrides_and_preprocess_cfg():
    model = clipfast.create_model("tiny-vit", force_quick_gelu=True, force_patch_dropout=0.25, force_image_size=48,
                                  force_context_length=20, output_dict=True, init_logit_bias=-5.0)
    assert isinstance(model, clipfast.CLIP) and model.output_dict and model.training
    assert model.visual.grid_size == (12, 12) and model.positional_embedding.shape == (20, 64)
    assert model.visual.patch_dropout.prob == 0.25 and model.logit_bias.item() == -5.0
    assert type(model.transformer.resblocks[0].mlp.gelu).__name__ == "Identity"  # QuickGELU fused into c_fc
    assert model.visual.preprocess_cfg["size"] == (48, 48)
    assert model.visual.image_mean == open_clip.OPENAI_DATASET_MEAN
    assert clipfast.get_tokenizer("tiny-vit", context_length=20)(["a photo"]).shape == (1, 20)


def test_unknown_model_lists_valid_names():
    with pytest.raises(RuntimeError, match="tiny-vit"):
        clipfast.create_model("ViT-Q-99")


@pytest.mark.parametrize("kwargs,match", [({"pretrained": "openai"}, "not a file"), ({"jit": True}, "jit"),
                                          ({"force_custom_text": True}, "force_custom_text")])
def test_unsupported_options_raise(kwargs, match):
    with pytest.raises((RuntimeError, NotImplementedError), match=match):
        clipfast.create_model("tiny-vit", **kwargs)


def test_pretrained_path_round_trip_from_open_clip_checkpoint(tmp_path):
    ref = open_clip.model.CLIP(**clipfast.get_model_config("tiny-rn"))
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "x", "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, path)
    model, preprocess = clipfast.create_model_from_pretrained("tiny-rn", pretrained=str(path))
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert callable(preprocess)
    with pytest.raises(RuntimeError, match="required pretrained"):
        clipfast.create_model_from_pretrained("tiny-rn")


def test_create_model_and_transforms_and_local_dir(tmp_path):
    model, train, val = clipfast.create_model_and_transforms("tiny-vit", image_mean=(0.5, 0.5, 0.5))
    assert model.visual.preprocess_cfg["mean"] == (0.5, 0.5, 0.5) and callable(train) and callable(val)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": clipfast.get_model_config("tiny-vit")}))
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    loaded = clipfast.create_model("local-dir:" + str(tmp_path))
    assert torch.equal(loaded.visual.proj, model.visual.proj)
    with pytest.raises(RuntimeError, match="hf-hub"):
        clipfast.create_model("hf-hub:org/model")
