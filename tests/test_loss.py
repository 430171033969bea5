"""clipfast.ClipLoss / SigLipLoss against OpenCLIP's modules (single process): values, gradients of the
features, logit_scale and logit_bias, the output_dict contract and constructor compatibility."""
import pytest
import torch
import torch.nn.functional as F

import clipfast
from tests.numerics import assert_close, assert_matches_reference

open_clip = pytest.importorskip("open_clip")


@pytest.fixture(autouse=True)
def _reference_backend(monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


def _features(n, d):
    i = F.normalize(torch.randn(n, d), dim=-1)
    return i, F.normalize(i + torch.randn(n, d) / d**0.5 * 3, dim=-1)


def _run(loss_fn, inputs, **kw):
    """Loss and the gradients of every input (features, scale, bias) with output_dict=True."""
    x = [v.detach().clone().requires_grad_() for v in inputs]
    out = loss_fn(*x, output_dict=True, **kw)
    assert set(out) == {"contrastive_loss"}
    out["contrastive_loss"].backward()
    return [out["contrastive_loss"].detach()] + [v.grad for v in x]


@pytest.mark.parametrize("scale", [1 / 0.07, 100.0])
def test_clip_loss_matches_open_clip_n1000(scale):
    i, t = _features(1000, 128)
    s = torch.tensor(scale)
    ours = _run(clipfast.ClipLoss(), (i, t, s))
    theirs = _run(open_clip.loss.ClipLoss(), (i, t, s))
    exact = _run(open_clip.loss.ClipLoss(), (i.double(), t.double(), s.double()))
    names = ("loss", "d image_features", "d text_features", "d logit_scale")
    for k, (o, r, e) in enumerate(zip(ours, theirs, exact)):
        scale_n = 1 if k == 0 else 1000  # compare N·grad (gradient of the summed loss)
        assert_matches_reference(o * scale_n, r * scale_n, e * scale_n, name=names[k])


def test_clip_loss_model_out_kwargs_and_bias():
    """``loss(**model_out, output_dict=True)`` with a logit_bias: it shifts every logit, so zero grad."""
    i, t = _features(33, 16)
    model_out = {"image_features": i, "text_features": t, "logit_scale": torch.tensor(10.0),
                 "logit_bias": torch.tensor(-3.0, requires_grad=True)}
    out = clipfast.ClipLoss(cache_labels=True, rank=0, world_size=1)(**model_out, output_dict=True)
    out["contrastive_loss"].backward()
    ref = open_clip.loss.ClipLoss()(i, t, torch.tensor(10.0), torch.tensor(-3.0))
    assert_close(out["contrastive_loss"], ref, name="loss")
    assert model_out["logit_bias"].grad is not None and float(model_out["logit_bias"].grad) == 0.0
    loss = clipfast.ClipLoss()(i, t, 10.0)
    assert loss.dim() == 0


def test_siglip_loss_matches_open_clip():
    i, t = _features(300, 64)
    inputs = (i, t, torch.tensor(10.0), torch.tensor(-10.0))
    ours = _run(clipfast.SigLipLoss(chunk_size=64), inputs)
    theirs = _run(open_clip.loss.SigLipLoss(), inputs)
    exact = _run(open_clip.loss.SigLipLoss(), [v.double() for v in inputs])
    names = ("loss", "d image_features", "d text_features", "d logit_scale", "d logit_bias")
    for k, (o, r, e) in enumerate(zip(ours, theirs, exact)):
        assert_matches_reference(o, r, e, name=names[k])


def test_half_features_give_finite_fp32_loss():
    i, t = _features(200, 64)
    for dtype in (torch.float16, torch.bfloat16):
        x = [i.to(dtype).requires_grad_(), t.to(dtype).requires_grad_()]
        loss = clipfast.ClipLoss()(*x, torch.tensor(100.0))
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert x[0].grad.dtype == dtype and torch.isfinite(x[0].grad).all() and torch.isfinite(x[1].grad).all()
        ref = open_clip.loss.ClipLoss()(i.to(dtype).double(), t.to(dtype).double(), torch.tensor(100.0).double())
        assert_close(loss, ref, dtype=torch.float32, name=f"loss ({dtype})")


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="use_horovod"):
        clipfast.ClipLoss(use_horovod=True)
    with pytest.raises(ValueError, match="mode"):
        clipfast.ClipLoss(mode="allreduce")
    with pytest.raises(ValueError, match="dist_impl"):
        clipfast.SigLipLoss(dist_impl="nope")
    i, t = _features(4, 8)
    with pytest.raises(ValueError, match="text_features: expected N = 4"):
        clipfast.ClipLoss()(i, t[:3], torch.tensor(1.0))
    with pytest.raises(ValueError, match="logit_bias: expected a finite value"):
        clipfast.SigLipLoss()(i, t, torch.tensor(1.0), torch.tensor(float("inf")))


def test_state_dict_is_empty():
    """Like OpenCLIP's, the loss modules hold no parameters or buffers (checkpoints stay compatible)."""
    assert clipfast.ClipLoss().state_dict() == {} and clipfast.SigLipLoss().state_dict() == {}
