"""clipfast.checkpoint: file formats, OpenCLIP load_checkpoint semantics, OpenAI build_model, HF key map.

Random-init tiny models only (no downloads). open_clip is the oracle for keys, resizing and forward outputs.
"""
import warnings

import pytest
import torch

import clipfast
from clipfast.checkpoint import (build_model, from_hf_state_dict, infer_config, load_checkpoint, load_state_dict,
                                 to_hf_config, to_hf_state_dict)
from tests.numerics import assert_close

open_clip = pytest.importorskip("open_clip")

TEXT_1L = {"width": 512, "heads": 8, "layers": 1, "vocab_size": 1000}  # an OpenAI text width, kept small
OPENAI_VIT = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 1, "width": 768, "patch_size": 16},
              "text_cfg": TEXT_1L}
OPENAI_RN = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
             "text_cfg": TEXT_1L}
VIT_H_LIKE = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 320, "head_width": 80,
                                              "patch_size": 16}, "text_cfg": TEXT_1L}


def _open_clip_model(cfg, **kwargs):
    torch.manual_seed(0)
    return open_clip.model.CLIP(**cfg, **kwargs).eval()


def _tiny_vit_sd():
    return _open_clip_model(clipfast.get_model_config("tiny-vit")).state_dict()


def _inputs(image_size, vocab_size, batch=3):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(batch, 3, image_size, image_size, generator=g)
    text = torch.randint(1, vocab_size - 1, (batch, 77), generator=g)
    for row, eot in enumerate([5, 76, 30][:batch]):  # eot (the largest id) early, at the last slot, mid
        text[row, eot] = vocab_size - 1
        text[row, eot + 1:] = 0
    return image, text


def _assert_same_outputs(ours, ref, image, text, name, forward=False):
    with torch.no_grad():
        if forward:  # logits from forward's normalized features and exp'd scale
            (ai, at, ascale), (bi, bt, bscale) = ours(image, text)[:3], ref(image, text)[:3]
            assert_close(ascale * ai @ at.T, bscale * bi @ bt.T, name=f"{name} forward logits")
        assert_close(ours.encode_image(image), ref.encode_image(image), name=f"{name} encode_image")
        assert_close(ours.encode_text(text), ref.encode_text(text), name=f"{name} encode_text")
        assert_close(ours.logit_scale.detach().float(), ref.logit_scale.detach().float(), name=f"{name} logit_scale")


# ---------------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("fmt", ["pt", "train_ckpt_ddp", "safetensors", "bin", "compiled"])
def test_load_state_dict_formats(tmp_path, fmt):
    sd = _tiny_vit_sd()
    path = tmp_path / f"ckpt.{ 'safetensors' if fmt == 'safetensors' else 'bin' if fmt == 'bin' else 'pt'}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    elif fmt == "train_ckpt_ddp":
        torch.save({"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in sd.items()},
                    "optimizer": {"state": {}, "param_groups": []}, "scaler": {"scale": 1.0}}, path)
    elif fmt == "compiled":
        torch.save({"_orig_mod." + k: v for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    loaded = load_state_dict(path)
    assert loaded.keys() == sd.keys()
    for k in sd:
        assert torch.equal(loaded[k], sd[k]), k


def test_torchscript_archive_needs_weights_only_false(tmp_path):
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; OpenAI's release files still use it
        torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3)), str(path))
        with pytest.raises(ValueError, match="TorchScript"):
            load_state_dict(path)
        assert set(load_state_dict(path, weights_only=False)) == {"weight", "bias"}


def test_bad_files(tmp_path):
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="non-empty state dict"):
        load_state_dict(tmp_path / "empty.pt")
    with pytest.raises(KeyError, match="text_projection"):
        infer_config({"weight": torch.zeros(2)})


# --------------------------------------------------------------------------------------- load_checkpoint
def test_open_clip_train_checkpoint_into_clipfast(tmp_path):
    ref = _open_clip_model(clipfast.get_model_config("tiny-vit"))
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, path)
    model = clipfast.create_model("tiny-vit", pretrained=str(path)).eval()
    _assert_same_outputs(model, ref, *_inputs(32, 49408), "train checkpoint")


@pytest.mark.parametrize("ckpt_shape,model_nonscalar", [((), True), ((1,), False)])
def test_logit_scale_0d_and_1d(tmp_path, ckpt_shape, model_nonscalar):
    sd = _tiny_vit_sd()
    sd["logit_scale"] = torch.full(ckpt_shape, 3.0)
    torch.save(sd, tmp_path / "m.pt")
    model = clipfast.create_model("tiny-vit", nonscalar_logit_scale=model_nonscalar)
    assert load_checkpoint(model, tmp_path / "m.pt") is not None
    assert model.logit_scale.shape == ((1,) if model_nonscalar else ())
    assert model.logit_scale.item() == 3.0


def test_zero_logit_bias_inserted(tmp_path):
    torch.save(_tiny_vit_sd(), tmp_path / "m.pt")
    model = clipfast.create_model("tiny-vit", init_logit_bias=-10.0)
    load_checkpoint(model, tmp_path / "m.pt")
    assert model.logit_bias.item() == 0.0


def test_force_image_size_resizes_like_open_clip(tmp_path):
    sd = _tiny_vit_sd()
    torch.save(sd, tmp_path / "m.pt")
    model = clipfast.create_model("tiny-vit", pretrained=str(tmp_path / "m.pt"), force_image_size=48)
    assert tuple(model.visual.grid_size) == (12, 12)
    ref_model = open_clip.model.CLIP(**{**clipfast.get_model_config("tiny-vit"),
                                        "vision_cfg": {**clipfast.get_model_config("tiny-vit")["vision_cfg"],
                                                       "image_size": 48}})
    ref_sd = dict(sd)
    open_clip.model.resize_pos_embed(ref_sd, ref_model)
    assert torch.equal(model.visual.positional_embedding.detach(), ref_sd["visual.positional_embedding"])
    assert model.encode_image(torch.randn(1, 3, 48, 48)).shape == (1, 64)


def test_force_context_length_resizes_text_like_open_clip(tmp_path):
    sd = _tiny_vit_sd()
    torch.save(sd, tmp_path / "m.pt")
    model = clipfast.create_model("tiny-vit", pretrained=str(tmp_path / "m.pt"), force_context_length=40)
    ref_sd = dict(sd)
    open_clip.model.resize_text_pos_embed(ref_sd, model)
    assert model.positional_embedding.shape == (40, 64)
    torch.testing.assert_close(model.positional_embedding.detach(), ref_sd["positional_embedding"], rtol=0, atol=0)


def test_force_image_size_resnet_attnpool(tmp_path):
    torch.save(_open_clip_model(clipfast.get_model_config("tiny-rn")).state_dict(), tmp_path / "rn.pt")
    model = clipfast.create_model("tiny-rn", pretrained=str(tmp_path / "rn.pt"), force_image_size=96)
    assert model.visual.attnpool.positional_embedding.shape[0] == 3 * 3 + 1
    assert model.encode_image(torch.randn(1, 3, 96, 96)).shape == (1, 64)


# ---------------------------------------------------------------------------------------- OpenAI format
def _save_openai_format(cfg, path):
    """An OpenAI-format file: QuickGELU model, ``convert_weights`` (mixed fp16/fp32), the three int entries."""
    model = _open_clip_model(cfg, quick_gelu=True)
    open_clip.model.convert_weights_to_lp(model, torch.float16)
    sd = model.state_dict()
    vision = cfg["vision_cfg"]
    sd.update(input_resolution=vision["image_size"], context_length=77, vocab_size=cfg["text_cfg"]["vocab_size"])
    torch.save(sd, path)
    return sd


@pytest.mark.parametrize("cfg", [OPENAI_VIT, OPENAI_RN], ids=["vit", "rn"])
def test_openai_round_trip_through_build_model(tmp_path, cfg):
    saved = _save_openai_format(cfg, tmp_path / "openai.pt")
    assert saved["visual.conv1.weight"].dtype == torch.float16 and saved["ln_final.weight"].dtype == torch.float32
    sd = load_state_dict(tmp_path / "openai.pt")
    keys_before = set(sd)

    inferred = infer_config(sd)
    assert inferred["embed_dim"] == cfg["embed_dim"]
    for tower in ("vision_cfg", "text_cfg"):
        for field, value in cfg[tower].items():
            assert inferred[tower][field] == value, f"{tower}.{field}"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # OpenAI widths: heads are known, no warning
        model = build_model(sd)
    assert set(sd) == keys_before, "build_model must not modify its argument"
    assert not model.training and model.visual.conv1.weight.dtype == torch.float32

    ref = open_clip.model.build_model_from_openai_state_dict(dict(sd), quick_gelu=True).float()
    image, text = _inputs(cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["vocab_size"])
    _assert_same_outputs(model, ref, image, text, "openai", forward=True)

    lp = build_model(sd, cast_dtype=torch.float16)
    assert {k: v.dtype for k, v in lp.state_dict().items()} == {
        k: v.dtype for k, v in saved.items() if isinstance(v, torch.Tensor)}


def test_build_model_heads_need_config_for_vit_h_like():
    sd = _open_clip_model(VIT_H_LIKE, quick_gelu=True).state_dict()
    ref = _open_clip_model(VIT_H_LIKE, quick_gelu=True)
    image, text = _inputs(32, 1000)
    with pytest.warns(UserWarning, match="head_width"):
        guessed = build_model(sd)  # 5 heads of 64 instead of 4 of 80: loads, but computes something else
    with torch.no_grad():
        assert not torch.allclose(guessed.encode_image(image), ref.encode_image(image), atol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model(sd, config={"vision_cfg": {"head_width": 80}})
    _assert_same_outputs(model, ref, image, text, "vit-h-like")


def test_build_model_vit_h14_shapes_warn_about_heads():
    with torch.device("meta"):  # real ViT-H-14 shapes, no memory: the meta model loads the meta state dict
        sd = open_clip.model.CLIP(**open_clip.get_model_config("ViT-H-14")).state_dict()
        with pytest.warns(UserWarning, match="width 1280"):
            guessed = build_model(sd)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = build_model(sd, config={"vision_cfg": {"head_width": 80}})
    assert guessed.visual.transformer.resblocks[0].attn.heads == 20  # the 64-dim rule: wrong for H-14
    assert model.visual.transformer.resblocks[0].attn.heads == 16
    assert model.transformer.resblocks[0].attn.heads == 16


@pytest.mark.parametrize("name,n_keys", [("RN50", 489), ("ViT-B-32", 302), ("ViT-B-16", 302), ("ViT-L-14", 446),
                                         ("ViT-L-14-336", 446), ("ViT-H-14", 686)])
def test_infer_config_on_release_shapes(name, n_keys):
    cfg = open_clip.get_model_config(name)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        sd = open_clip.model.CLIP(**cfg).state_dict()
    assert len(sd) == n_keys
    inferred = infer_config(sd)
    assert inferred["embed_dim"] == cfg["embed_dim"]
    for tower in ("vision_cfg", "text_cfg"):
        for field, value in cfg[tower].items():
            if field == "head_width":  # ViT-H: 80, not recoverable from weights
                assert inferred[tower][field] == 64
                continue
            assert inferred[tower][field] == value, f"{name} {tower}.{field}"


# ------------------------------------------------------------------------------------------------- HF
def test_hf_key_map_b32():
    with torch.device("meta"):
        sd = open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-32")).state_dict()
    hf = to_hf_state_dict(sd)
    assert len(hf) == 398
    for key in ("vision_model.pre_layrnorm.weight", "vision_model.post_layernorm.bias",
                "vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.class_embedding",
                "text_model.embeddings.position_embedding.weight", "text_model.final_layer_norm.weight",
                "text_model.encoder.layers.11.self_attn.v_proj.bias", "vision_model.encoder.layers.0.mlp.fc2.weight",
                "visual_projection.weight", "text_projection.weight", "logit_scale"):
        assert key in hf, key
    assert hf["visual_projection.weight"].shape == (512, 768)
    assert hf["text_model.encoder.layers.0.self_attn.q_proj.weight"].shape == (512, 512)


def test_hf_round_trip_identical():
    sd = _tiny_vit_sd()
    sd["visual.proj"] = sd["visual.proj"].half()  # dtypes are kept, mixed or not
    back = from_hf_state_dict(to_hf_state_dict(sd))
    assert back.keys() == sd.keys()
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k


def test_hf_layout_file_loads_through_load_checkpoint(tmp_path):
    ref = _open_clip_model(clipfast.get_model_config("tiny-vit"))
    hf = to_hf_state_dict(ref.state_dict())
    hf["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # older transformers saved it
    from safetensors.torch import save_file

    save_file(hf, str(tmp_path / "model.safetensors"))
    model = clipfast.create_model("tiny-vit", pretrained=str(tmp_path / "model.safetensors")).eval()
    _assert_same_outputs(model, ref, *_inputs(32, 49408), "hf file")


def test_hf_resnet_rejected():
    with pytest.raises(ValueError, match="ResNet"):
        to_hf_state_dict(_open_clip_model(clipfast.get_model_config("tiny-rn")).state_dict())
    with pytest.raises(ValueError, match="ResNet"):
        to_hf_config(clipfast.get_model_config("tiny-rn"))


def test_hf_transformers_clipmodel_features():
    transformers = pytest.importorskip("transformers")
    cfg = clipfast.get_model_config("tiny-vit-quickgelu")
    model = clipfast.create_model("tiny-vit-quickgelu").eval()
    hf = transformers.CLIPModel(transformers.CLIPConfig(**to_hf_config(cfg))).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict()), strict=True)
    image = torch.randn(2, 3, 32, 32)
    text = clipfast.get_tokenizer("tiny-vit")(["a photo of a cat", "a diagram of a dog " * 30])
    with torch.no_grad():
        hf_img, hf_txt = hf.get_image_features(pixel_values=image), hf.get_text_features(input_ids=text)
        hf_img = getattr(hf_img, "pooler_output", hf_img)  # transformers 5 returns a model output
        hf_txt = getattr(hf_txt, "pooler_output", hf_txt)
        assert_close(model.encode_image(image), hf_img, name="HF get_image_features")
        assert_close(model.encode_text(text), hf_txt, name="HF get_text_features")
