"""clipfast.CLIP against open_clip 3.3.0 with the same random weights: keys, outputs, gradients, modes."""
import copy

import open_clip
import pytest
import torch

import clipfast
from clipfast.configs import get_model_config
from tests.numerics import assert_close

NAMED = {"RN50": 489, "RN101": None, "RN50x4": None, "RN50x16": None, "RN50x64": None, "ViT-B-32": 302,
         "ViT-B-16": 302, "ViT-L-14": 446, "ViT-L-14-336": 446, "ViT-H-14": 686}
EOT = 49407
BIG = ("ViT-B-32", "RN50")


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    """Model parity runs the PyTorch reference of every op (kernels are proven against it in tests/ops;
    the Triton interpreter would make these model-sized tests minutes long)."""
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


def _image_size(model):
    size = model.visual.image_size
    return size if isinstance(size, int) else size[0]


def make_pair(name, **kwargs):
    """(open_clip model, clipfast model) with identical random weights, both in train mode."""
    cfg = get_model_config(name)
    cfg.update(kwargs)
    ref = open_clip.model.CLIP(**cfg)
    if isinstance(ref.visual, open_clip.modified_resnet.ModifiedResNet):
        # Non-trivial BN statistics and residual scales so eval-mode BN and bn3 are exercised.
        with torch.no_grad():
            for m in ref.visual.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.normal_(1, 0.1)
    ours = clipfast.CLIP(**cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def make_inputs(model, batch):
    size = _image_size(model)
    image = torch.randn(batch, 3, size, size)
    text = torch.randint(1, EOT - 2, (batch, model.context_length))
    eot = [76, 5, 40, 1, 76, 20][:batch] + [10] * max(0, batch - 6)
    for i, p in enumerate(eot):
        text[i, p] = EOT
        text[i, p + 1:] = 0
    return image, text


def _grad_compare(ref, ours, rtol):
    ref_params = dict(ref.named_parameters())
    scale = max(p.grad.abs().max().item() for p in ref_params.values() if p.grad is not None)
    for name, p in ours.named_parameters():
        g_ref = ref_params[name].grad
        assert (p.grad is None) == (g_ref is None), f"{name}: grad presence differs"
        if g_ref is None:
            continue
        err = (p.grad - g_ref).norm().item()
        norm = g_ref.norm().item()
        # Parameters with a mathematically zero gradient (attention-pool k bias) are compared absolutely.
        assert err <= rtol * norm + 1e-6 * scale, f"{name}: grad rel err {err / max(norm, 1e-30):.2e} > {rtol}"


@pytest.mark.parametrize("name", list(NAMED))
def test_state_dict_keys_and_shapes_match_open_clip(name):
    cfg = get_model_config(name)
    with torch.device("meta"):
        ref = open_clip.model.CLIP(**cfg).state_dict()
        ours = clipfast.CLIP(**cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    if NAMED[name] is not None:
        assert len(ours) == NAMED[name]
    quick = get_model_config(name + "-quickgelu")
    assert quick.pop("quick_gelu") is True and quick == cfg


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn", "tiny-vit-quickgelu", "tiny-rn-quickgelu", "ViT-B-32", "RN50"])
def test_cross_load_outputs_and_grads(name):
    ref, ours = make_pair(name)
    batch = 2 if name in BIG else 5
    image, text = make_inputs(ours, batch)
    ref.load_state_dict(ours.state_dict(), strict=True)  # strict the other way too (same values)

    for m in (ref, ours):
        m.eval()
    with torch.no_grad():
        if name in BIG:  # forward composes encode_*(normalize=True); one pass per model keeps the suite fast
            for a, b, what in zip(ours(image, text), ref(image, text), ("image_features", "text_features", "scale")):
                assert_close(a, b, name=what)
        else:
            assert_close(ours.encode_image(image), ref.encode_image(image), name="encode_image")
            assert_close(ours.encode_text(text), ref.encode_text(text), name="encode_text")
            assert_close(ours.encode_text(text, normalize=True), ref.encode_text(text, normalize=True), name="norm")
            for a, b, what in zip(ours(image, text), ref(image, text), ("image_features", "text_features", "scale")):
                assert_close(a, b, name=what)
            for a, b in zip(ours.get_logits(image, text), ref.get_logits(image, text)):
                assert_close(a, b, name="logits")

    for m in (ref, ours):
        m.train()
    loss_fn = open_clip.ClipLoss()
    losses = []
    outs = []
    for m in (ref, ours):
        outs.append(m(image, text))
        loss = loss_fn(*outs[-1])
        loss.backward()
        losses.append(loss)
    assert_close(losses[1], losses[0], name="loss")
    assert_close(outs[1][0], outs[0][0], name="train-mode image features")
    _grad_compare(ref, ours, rtol=1e-4)
    assert ours.logit_scale.grad is not None and ours.logit_scale.grad.abs() > 0


def test_batch_of_one_and_noncontiguous_inputs():
    ref, ours = make_pair("tiny-vit")
    ref.eval(), ours.eval()
    image, text = make_inputs(ours, 1)
    with torch.no_grad():
        assert_close(ours.encode_image(image), ref.encode_image(image), name="B=1 image")
        assert_close(ours.encode_text(text), ref.encode_text(text), name="B=1 text")
        image, text = make_inputs(ours, 4)
        image_nc = image.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # same values, transposed strides
        text_nc = torch.stack([text, text], dim=-1)[..., 0]  # stride 2 along L
        assert not image_nc.is_contiguous() and not text_nc.is_contiguous()
        assert_close(ours.encode_image(image_nc), ref.encode_image(image), name="non-contiguous image")
        assert_close(ours.encode_text(text_nc), ref.encode_text(text), name="non-contiguous text")


def test_tokens_after_eot_do_not_matter():
    _, ours = make_pair("tiny-vit")
    ours.eval()
    _, text = make_inputs(ours, 3)
    other = text.clone()
    other[0, 77 - 1:] = 0  # row 0 has EOT at 76: nothing after it
    other[1, 6:] = torch.randint(1, 1000, (71,))
    with torch.no_grad():
        assert torch.equal(ours.encode_text(text)[1:2], ours.encode_text(other)[1:2])


def test_return_contract_dict_and_logit_bias():
    _, ours = make_pair("tiny-vit", init_logit_bias=-10.0)
    ref = open_clip.model.CLIP(**get_model_config("tiny-vit"), init_logit_bias=-10.0)
    ref.load_state_dict(ours.state_dict())
    image, text = make_inputs(ours, 2)
    out = ours(image, text)
    assert len(out) == 4 and out[3] is ours.logit_bias
    assert torch.allclose(out[0].norm(dim=-1), torch.ones(2)) and torch.allclose(out[1].norm(dim=-1), torch.ones(2))
    assert_close(ours.get_logits(image, text)[0], ref.get_logits(image, text)[0], name="biased logits")
    ours.output_dict = True
    out = ours(image=image)
    assert set(out) == {"image_features", "text_features", "logit_scale", "logit_bias"} and out["text_features"] is None
    assert ours(text=text)["image_features"] is None
    assert ours.logit_scale.is_leaf and isinstance(ours.logit_scale, torch.nn.Parameter) and ours.logit_scale.dim() == 0
    assert clipfast.CLIP(**get_model_config("tiny-vit"), nonscalar_logit_scale=True).logit_scale.shape == (1,)


def test_attributes_used_outside():
    _, ours = make_pair("tiny-vit")
    assert ours.visual.image_size == (32, 32) and ours.visual.grid_size == (8, 8) and ours.visual.output_dim == 64
    assert ours.context_length == 77 and ours.vocab_size == 49408
    mask = ours.attn_mask
    assert mask.shape == (77, 77) and torch.isinf(mask[0, 1]) and mask[1, 0] == 0
    assert not any("attn_mask" in k for k in ours.state_dict())
    assert ours.no_weight_decay() == {"positional_embedding", "visual.positional_embedding", "visual.class_embedding"}
    _, rn = make_pair("tiny-rn")
    assert rn.visual.image_size == 64 and rn.visual.output_dim == 64


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_grad_checkpointing_same_loss_and_grads(name):
    _, a = make_pair(name)
    b = copy.deepcopy(a)
    b.set_grad_checkpointing(True)
    image, text = make_inputs(a, 4)
    loss_fn = open_clip.ClipLoss()
    losses = []
    for m in (a, b):
        loss = loss_fn(*m(image, text))
        loss.backward()
        losses.append(loss)
    assert_close(losses[1], losses[0], name="loss")
    _grad_compare(a, b, rtol=1e-5)
    for (n, x), y in zip(a.named_buffers(), b.buffers()):  # BN running stats updated exactly once
        assert torch.equal(x, y), n


@pytest.mark.parametrize("name,unlocked", [("tiny-vit", 0), ("tiny-vit", 2), ("tiny-vit", 10), ("tiny-rn", 0)])
def test_lock_towers_same_requires_grad_as_open_clip(name, unlocked):
    ref, ours = make_pair(name)
    ref.lock_image_tower(unlocked_groups=unlocked, freeze_bn_stats=name == "tiny-rn")
    ours.lock_image_tower(unlocked_groups=unlocked, freeze_bn_stats=name == "tiny-rn")
    ref.lock_text_tower(unlocked_layers=unlocked)
    ours.lock_text_tower(unlocked_layers=unlocked)
    want = {n for n, p in ref.named_parameters() if p.requires_grad}
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == want
    assert set(ours.state_dict()) == set(ref.state_dict())


def test_patch_dropout_train_only_matches_open_clip():
    ref, ours = make_pair("tiny-vit", vision_cfg={**get_model_config("tiny-vit")["vision_cfg"], "patch_dropout": 0.5})
    image, _ = make_inputs(ours, 3)
    torch.manual_seed(3)
    a = ref.encode_image(image)
    torch.manual_seed(3)
    b = ours.encode_image(image)
    assert_close(b, a, name="patch dropout train")
    ref.eval(), ours.eval()
    assert_close(ours.encode_image(image), ref.encode_image(image), name="patch dropout eval")


@pytest.mark.parametrize("field,value", [("ls_init_value", 1e-5), ("pool_type", "avg"), ("output_tokens", True),
                                         ("qk_norm", True), ("final_ln_after_pool", True)])
def test_unimplemented_vision_field_raises_naming_it(field, value):
    cfg = get_model_config("tiny-vit")
    cfg["vision_cfg"][field] = value
    with pytest.raises(NotImplementedError, match=f"vision_cfg.{field}"):
        clipfast.CLIP(**cfg)


def test_user_open_clip_training_loop_runs_unchanged():
    """An OpenCLIP-style step: ClipLoss, AdamW, bf16 autocast on CPU, logit_scale clamp."""
    model = clipfast.create_model("tiny-vit", output_dict=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    image, text = make_inputs(model, 4)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(image, text)
            loss = loss_fn(**out, output_dict=True)["contrastive_loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_default_backends_inside_the_model(monkeypatch):
    """The model with whatever backend each op selects here (Triton kernels through the interpreter on CPU)."""
    monkeypatch.delenv("CLIPFAST_BACKEND", raising=False)
    ref, ours = make_pair("tiny-vit-quickgelu")
    image, text = make_inputs(ours, 2)
    loss_fn = open_clip.ClipLoss()
    for m in (ref, ours):
        loss_fn(*m(image, text)).backward()
    _grad_compare(ref, ours, rtol=1e-4)
