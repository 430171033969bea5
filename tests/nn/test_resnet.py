"""clipfast.nn.resnet: ModifiedResNet / AttentionPool2d against OpenCLIP's; checkpointing and BN statistics."""
import copy

import open_clip
import pytest
import torch

from clipfast.nn.resnet import AttentionPool2d, ModifiedResNet
from tests.numerics import assert_close


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


@pytest.mark.parametrize("spacial,heads", [(7, 8), (2, 4)])
def test_attention_pool_matches_open_clip(spacial, heads):
    ref = open_clip.modified_resnet.AttentionPool2d(spacial, 64, heads, 40)
    ours = AttentionPool2d(spacial, 64, heads, 40)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 64, spacial, spacial)
    assert_close(ours(x), ref(x), name="attnpool")
    x = torch.randn(3, spacial, spacial, 64).permute(0, 3, 1, 2)  # channels-last strides
    assert_close(ours(x), ref(x), name="attnpool strided")


@pytest.mark.parametrize("train", [False, True])
def test_resnet_matches_open_clip(train):
    kwargs = dict(layers=[1, 2, 1, 1], output_dim=32, heads=4, image_size=64, width=16)
    ref = open_clip.modified_resnet.ModifiedResNet(**kwargs)
    ours = ModifiedResNet(**kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.train(train), ours.train(train)
    x = torch.randn(2, 3, 64, 64)
    assert_close(ours(x), ref(x), name="resnet")
    for (name, a), b in zip(ours.named_buffers(), ref.buffers()):
        assert_close(a.float(), b.float(), name=name)


def test_checkpointing_same_grads_and_running_stats():
    model = ModifiedResNet([1, 1, 1, 1], 16, 2, image_size=32, width=8)
    other = copy.deepcopy(model)
    other.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    for m in (model, other):
        m(x).square().sum().backward()
    for (name, a), b in zip(model.named_parameters(), other.parameters()):
        assert_close(b.grad, a.grad, name=name)
    for (name, a), b in zip(model.named_buffers(), other.buffers()):
        assert torch.equal(a, b), name
    assert other.layer1[0].bn1.num_batches_tracked.item() == 1


def test_lock_freezes_params_and_bn_stats():
    model = ModifiedResNet([1, 1, 1, 1], 16, 2, image_size=32, width=8)
    model.lock(freeze_bn_stats=True)
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(ValueError, match="unlocked_groups"):
        model.lock(unlocked_groups=1)
