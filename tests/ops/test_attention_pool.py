"""clipfast.ops.attention_pool: one query over L keys, per-row key lengths, dtypes, strides, bad input."""
import pytest
import torch
import torch.nn.functional as F

from clipfast.ops.attention_pool import attention_pool
from tests.numerics import assert_close, assert_matches_reference


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.double().unsqueeze(2), k.double(), v.double()).squeeze(2)


@pytest.mark.parametrize("L", [1, 50, 77, 257])
def test_matches_full_attention_query(L):
    q, k, v = torch.randn(3, 4, 40), torch.randn(3, 4, L, 40), torch.randn(3, 4, L, 40)
    assert_close(attention_pool(q, k, v), _sdpa(q, k, v).float(), name="attention_pool")


def test_kv_len_equals_truncated_keys():
    q, k, v = torch.randn(3, 2, 16), torch.randn(3, 2, 77, 16), torch.randn(3, 2, 77, 16)
    kv_len = torch.tensor([1, 40, 77])
    out = attention_pool(q, k, v, kv_len=kv_len)
    for b, n in enumerate(kv_len.tolist()):
        want = _sdpa(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n]).float()
        assert_close(out[b:b + 1], want, name=f"row {b} kv_len {n}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_pytorch_error(dtype):
    q, k, v = torch.randn(2, 8, 64), torch.randn(2, 8, 50, 64), torch.randn(2, 8, 50, 64)
    exact = _sdpa(q, k, v)
    ref = F.scaled_dot_product_attention(q.to(dtype).unsqueeze(2), k.to(dtype), v.to(dtype)).squeeze(2)
    out = attention_pool(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype
    assert_matches_reference(out, ref, exact, name=f"attention_pool {dtype}")


def test_noncontiguous_keys():
    B, L, H, D = 2, 50, 4, 24
    kv = torch.randn(B, L, 2 * H * D)
    k, v = kv.view(B, L, 2, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    q = torch.randn(B, D, H).transpose(1, 2)
    assert not (k.is_contiguous() or q.is_contiguous())
    assert_close(attention_pool(q, k, v), _sdpa(q, k, v).float(), name="strided attention_pool")


def test_gradcheck_fp64():
    q = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 2, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    kv_len = torch.tensor([3, 6])
    assert torch.autograd.gradcheck(lambda a, b, c: attention_pool(a, b, c, kv_len=kv_len), (q, k, v))


def test_bad_inputs():
    q, k = torch.randn(2, 3, 8), torch.randn(2, 3, 5, 8)
    with pytest.raises(ValueError, match="q: expected 3 dims"):
        attention_pool(k, k, k)
    with pytest.raises(ValueError, match="k: expected"):
        attention_pool(q, torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4))
    with pytest.raises(ValueError, match="v: expected the shape of k"):
        attention_pool(q, k, k[:, :, :4])
    with pytest.raises(ValueError, match="kv_len"):
        attention_pool(q, k, k, kv_len=torch.tensor([1.0, 2.0]))
