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


@pytest.mark.parametrize("backend_name", ["reference", "triton"])
@pytest.mark.parametrize("loss_cls", [clipfast.ClipLoss, clipfast.SigLipLoss])
def test_training_step_compiles_fullgraph(loss_cls, backend_name, monkeypatch):
    """A CPU training step (tiny CLIP forward + loss) through ClipLoss / SigLipLoss traces with
    ``torch.compile(fullgraph=True)`` (the losses are custom ops: no graph break), and the compiled step's
    loss and every parameter gradient equal eager's."""
    from clipfast import backend

    if backend._reason(loss_cls.__name__ == "ClipLoss" and "contrastive_loss" or "sigmoid_loss", backend_name,
                       torch.device("cpu")) is not None:
        pytest.skip("Triton interpreter not available")
    monkeypatch.setenv("CLIPFAST_BACKEND", backend_name)
    torch.manual_seed(0)
    model = clipfast.create_model("tiny-vit")
    loss_fn = loss_cls()
    image = torch.randn(5, 3, 32, 32)
    text = torch.randint(1, 1000, (5, 77))
    text[torch.arange(5), torch.tensor([3, 9, 2, 76, 20])] = 49407  # EOT (argmax pooling)
    bias = torch.nn.Parameter(torch.tensor(-10.0))

    def step(image, text):
        image_features, text_features, logit_scale = model(image, text)
        return loss_fn(image_features, text_features, logit_scale, bias)

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        bias.grad = None
        loss = fn(image, text)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, bias.grad

    torch._dynamo.reset()
    try:
        compiled = loss_and_grads(torch.compile(step, fullgraph=True, backend="aot_eager"))
    finally:
        torch._dynamo.reset()
    eager = loss_and_grads(step)
    assert_close(compiled[0], eager[0], name="loss")
    assert compiled[1].keys() == eager[1].keys() and len(eager[1]) > 10
    for name in eager[1]:
        assert_close(compiled[1][name], eager[1][name], name=f"d {name}")
    if loss_cls is clipfast.SigLipLoss:
        assert_close(compiled[2], eager[2], name="d logit_bias")
