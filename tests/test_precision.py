"""Precision modes on tiny configs, as OpenCLIP's: fp32, fp16, bf16, pure_fp16, pure_bf16, amp, amp_bf16."""
import open_clip
import pytest
import torch
import torch.nn.functional as F

import clipfast
from clipfast.precision import PRECISIONS, convert_weights_to_lp, get_cast_dtype, get_input_dtype
from tests.test_model import make_inputs, make_pair


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


def test_cast_and_input_dtypes_equal_open_clip():
    for p in PRECISIONS:
        assert get_cast_dtype(p) == open_clip.get_cast_dtype(p)
        assert get_input_dtype(p) == open_clip.get_input_dtype(p)
    with pytest.raises(ValueError, match="precision"):
        get_cast_dtype("fp8")


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_convert_weights_to_lp_same_dtypes_as_open_clip(name, dtype):
    ref, ours = make_pair(name)
    open_clip.model.convert_weights_to_lp(ref, dtype)
    convert_weights_to_lp(ours, dtype)
    want = {k: v.dtype for k, v in ref.state_dict().items()}
    assert {k: v.dtype for k, v in ours.state_dict().items()} == want
    assert ours.ln_final.weight.dtype == torch.float32 and ours.logit_scale.dtype == torch.float32


def _cos(a, b):
    return F.cosine_similarity(a.float(), b.float(), dim=-1).min().item()


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn-quickgelu"])
def fp32_model(request, tmp_path_factory):
    """(name, fp32 model, its saved state dict path, inputs, fp32 outputs), built once per config."""
    torch.manual_seed(0)
    model = clipfast.create_model(request.param)
    path = tmp_path_factory.mktemp("weights") / "w.pt"
    torch.save(model.state_dict(), path)
    image, text = make_inputs(model, 2)
    with torch.no_grad():
        want = model(image, text)
    return request.param, str(path), image, text, want


@pytest.mark.parametrize("precision", ["fp16", "bf16", "pure_fp16", "pure_bf16", "amp", "amp_bf16"])
def test_precision_modes_run_and_track_fp32(fp32_model, precision):
    name, path, image, text, want = fp32_model
    model = clipfast.create_model(name, pretrained=path, precision=precision, output_dict=True)
    if precision in ("fp16", "bf16"):
        assert model.transformer.resblocks[0].mlp.c_fc.weight.dtype == get_cast_dtype(precision)
        assert model.transformer.resblocks[0].ln_1.weight.dtype == torch.float32
    input_dtype = get_input_dtype(precision)
    autocast = {"amp": torch.float16, "amp_bf16": torch.bfloat16}.get(precision)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = model(image.to(input_dtype) if input_dtype else image, text)
        loss = open_clip.ClipLoss()(**out)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert _cos(out["image_features"], want[0]) > 0.99
    assert _cos(out["text_features"], want[1]) > 0.99


def test_bf16_autocast_matches_open_clip():
    ref, ours = make_pair("tiny-vit")
    image, text = make_inputs(ours, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for a, b in zip(ours(image, text)[:2], ref(image, text)[:2]):
            assert _cos(a, b) > 0.999
