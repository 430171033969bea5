"""clipfast.ops.attention: reference math, causal masking, dtypes, odd CLIP lengths, strides, bad input."""
import math

import pytest
import torch

from clipfast.ops.attention import attention
from tests.numerics import assert_close, assert_matches_reference


def _naive(q, k, v, causal):
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        L, S = q.shape[-2], k.shape[-2]
        scores = scores.masked_fill(torch.ones(L, S, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.double()


@pytest.mark.parametrize("L", [1, 50, 77, 197])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_naive_fp32(L, causal):
    q, k, v = (torch.randn(2, 3, L, 40) for _ in range(3))
    assert_close(attention(q, k, v, causal=causal), _naive(q, k, v, causal).float(), name="attention")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_pytorch_error(dtype):
    q, k, v = (torch.randn(2, 2, 77, 32) for _ in range(3))
    exact = _naive(q, k, v, True)
    ref = _naive(q.to(dtype), k.to(dtype), v.to(dtype), True).to(dtype)
    out = attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True)
    assert out.dtype == dtype
    assert_matches_reference(out, ref, exact, name=f"attention {dtype}")


def test_noncontiguous_packed_qkv():
    B, L, H, D = 2, 50, 4, 24
    qkv = torch.randn(B, L, 3 * H * D)
    q, k, v = qkv.view(B, L, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    assert_close(attention(q, k, v), _naive(q, k, v, False).float(), name="strided attention")


def test_gradcheck_fp64():
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, causal=True), (q, k, v))


def test_bad_inputs():
    q = torch.randn(2, 3, 7, 8)
    with pytest.raises(ValueError, match="q: expected 4 dims"):
        attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="k: expected"):
        attention(q, torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4))
    with pytest.raises(TypeError, match="k, v: expected dtype"):
        attention(q, q.double(), q.double())
    with pytest.raises(TypeError, match="q: expected a floating-point"):
        attention(q.long(), q, q)
