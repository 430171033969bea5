"""clipfast.CLIP on the Triton kernels (interpreter on CPU) equals the reference backend, and the attention
modules make no q/k/v copies around the kernels.

Parity: tiny ViT, ResNet and text towers (every attention path the model has: full bidirectional and causal
attention, the pooled class/EOT token of the last block, ResNet's AttentionPool2d) with the same weights, run
with ``CLIPFAST_BACKEND=triton`` and ``=reference`` in fp32 (fp16 and bf16 on a GPU) and with the reference in
fp64; features and every parameter gradient obey the flash-attention rule of ``tests/numerics.py``.

Copies: a ``TorchDispatchMode`` records every copying aten op (clone, copy_, _to_copy, cat, stack) of a
module's forward and backward; custom ops are seen as one call (their internals are not dispatched through
the mode), so what is recorded is what the model itself pays around the kernels.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import clipfast
from clipfast.configs import get_model_config
from clipfast.nn.attention import Attention
from clipfast.nn.resnet import AttentionPool2d
from tests.numerics import assert_matches_reference

EOT = 49407


def _run(model, image, text, weights):
    """Features and parameter grads of a fixed linear loss on the (unnormalized) image and text features."""
    model.zero_grad()
    img, txt = model.encode_image(image), model.encode_text(text)
    ((img * weights[0]).sum() + (txt * weights[1]).sum()).backward()
    return {"image_features": img, "text_features": txt,
            **{f"grad {n}": p.grad for n, p in model.named_parameters() if p.grad is not None}}


COPIES = {"aten.clone", "aten.copy_", "aten._to_copy", "aten.cat", "aten.stack"}


class _CopyLog(TorchDispatchMode):
    """Records (op, output shape) of every copying aten op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.copies, self.calls = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        self.calls.append(name)
        if name in COPIES:
            self.copies.append((name, tuple(out.shape)))
        return out


@pytest.mark.parametrize("device,dtype", [
    ("cpu", torch.float32),
    pytest.param("cuda", torch.float16, marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.gpu),
])
@pytest.mark.parametrize("name", ["tiny-vit-quickgelu", "tiny-rn-quickgelu"])
def test_triton_backend_matches_reference(name, device, dtype, monkeypatch):
    cfg = get_model_config(name)
    model = clipfast.CLIP(**cfg).to(device, dtype)
    model.eval()  # ResNet BN statistics stay fixed across the three runs
    size = cfg["vision_cfg"]["image_size"]
    image = torch.randn(2, 3, size, size, device=device, dtype=dtype)
    text = torch.randint(1, EOT - 2, (2, 77), device=device)
    text[0, 30], text[0, 31:] = EOT, 0  # ragged EOT positions: kv_len 31 and 77 in the pooled last block
    text[1, 76] = EOT
    weights = [torch.randn(2, cfg["embed_dim"], device=device, dtype=dtype) for _ in range(2)]
    monkeypatch.setenv("CLIPFAST_BACKEND", "triton")
    with _CopyLog() as log:
        ours = _run(model, image, text, weights)
    pool_op = "clipfast.attention_pool_bwd" if "rn" in name else "clipfast.attention_pool_kvpacked_bwd"
    assert {"clipfast.attention_qkvpacked_bwd", "clipfast.attention_pool_kvpacked_bwd", pool_op} <= set(log.calls)
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")
    same = _run(model, image, text, weights)
    exact = _run(model.double(), image.double(), text, [w.double() for w in weights])
    assert ours.keys() == same.keys() == exact.keys()
    for key in ours:
        assert_matches_reference(ours[key], same[key], exact[key], name=f"{name} {key}")


def _log_fwd_bwd(fn):
    with _CopyLog() as log:
        fn().square().sum().backward()
    return log


@pytest.mark.parametrize("causal", [False, True])
def test_attention_module_makes_no_qkv_copies(causal):
    m = Attention(64, 2)
    x = torch.randn(2, 20, 64, requires_grad=True)
    log = _log_fwd_bwd(lambda: m(x, causal=causal))
    assert "clipfast.attention_qkvpacked_fwd" in log.calls and "clipfast.attention_qkvpacked_bwd" in log.calls
    assert log.copies == [], f"copies around attention: {log.copies}"


def test_copy_log_catches_the_unpacked_path(monkeypatch):
    """Control: the reference path (permute/unbind to (B, H, L, D), SDPA) pays the dq/dk/dv stack and the
    (B, H, L, D) -> (B, L, W) copy; the log sees them."""
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")
    m = Attention(64, 2)
    log = _log_fwd_bwd(lambda: m(torch.randn(2, 20, 64, requires_grad=True)))
    assert {"aten.stack", "aten.clone"} <= {op for op, _ in log.copies}


def test_pooled_attention_makes_no_kv_copies():
    m = Attention(64, 2)
    x = torch.randn(2, 20, 64, requires_grad=True)
    kv_len = torch.tensor([3, 20])
    log = _log_fwd_bwd(lambda: m.forward_pooled(x[:, 0], x, kv_len))
    assert "clipfast.attention_pool_kvpacked_bwd" in log.calls
    # The only copy: kv_len (B,) int64 -> int32 for the kernel.
    assert log.copies == [("aten._to_copy", (2,))], log.copies


def test_resnet_attention_pool_makes_no_qkv_copies():
    m = AttentionPool2d(2, 64, 2)
    x = torch.randn(2, 64, 2, 2, requires_grad=True)
    log = _log_fwd_bwd(lambda: m(x))
    assert "clipfast.attention_pool_bwd" in log.calls
    # The model's own: building the tokens [mean, HW positions] (B, 1 + HW, C), and the feature map's gradient
    # through flatten/transpose; nothing on q, k, v or their gradients.
    assert log.copies == [("aten.cat", (2, 5, 64)), ("aten.copy_", (2, 64, 2, 2))], log.copies
