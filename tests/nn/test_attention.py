"""clipfast.nn.attention: blocks match nn.MultiheadAttention-based OpenCLIP blocks; pooled last block equals
the full block at the pooled position; checkpointing changes nothing."""
import open_clip
import pytest
import torch

from clipfast.nn.attention import ResidualAttentionBlock, Transformer
from tests.numerics import assert_close


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


@pytest.mark.parametrize("quick_gelu", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_block_matches_open_clip(quick_gelu, causal):
    W, H, L = 96, 3, 77
    act = open_clip.transformer.QuickGELU if quick_gelu else torch.nn.GELU
    ref = open_clip.transformer.ResidualAttentionBlock(W, H, act_layer=act)
    ours = ResidualAttentionBlock(W, H, quick_gelu=quick_gelu)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, L, W)
    mask = torch.full((L, L), float("-inf")).triu_(1) if causal else None
    assert_close(ours(x, causal=causal), ref(x, attn_mask=mask), name="block")
    assert_close(ours(x, attn_mask=mask), ref(x, attn_mask=mask), name="block with explicit mask")


@pytest.mark.parametrize("causal", [False, True])
def test_pooled_last_block_equals_full_block(causal):
    torch.manual_seed(0)
    model = Transformer(64, 2, 4)
    x = torch.randn(3, 50, 64, requires_grad=True)
    index = torch.tensor([49, 0, 17])
    kv_len = index + 1 if causal else None
    full = model(x, causal=causal)[torch.arange(3), index]
    pooled = model(x, causal=causal, pool_index=index, kv_len=kv_len)
    assert_close(pooled, full, name="pooled")
    g_full, = torch.autograd.grad(full.square().sum(), x)
    g_pooled, = torch.autograd.grad(pooled.square().sum(), x)
    assert_close(g_pooled, g_full, name="grad x")
    assert_close(model(x, pool_index=0), model(x)[:, 0], name="int index")


def test_grad_checkpointing_same_grads():
    model = Transformer(32, 3, 2)
    x = torch.randn(2, 10, 32)
    grads = []
    for enable in (False, True):
        model.grad_checkpointing = enable
        model.zero_grad()
        model(x, causal=True, pool_index=torch.tensor([9, 3]), kv_len=torch.tensor([10, 4])).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert_close(b, a, name="checkpointed grad")
