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


# --- the Triton kernels (interpreter on CPU) against the reference ----------------------------------------

from clipfast import backend  # noqa: E402
from clipfast.kernels import attention_pool as kernels  # noqa: E402
from clipfast.ops.attention_pool import (  # noqa: E402
    _packed_op, _pool_op, attention_pool_kvpacked, attention_pool_kvpacked_ref, attention_pool_ref, fallback_reason)

# (L, D, dtype, kv_len): every CLIP length and odd ones, every CLIP head dim; B x H kept tiny (B = 2, H = 3).
KERNEL_CASES = [
    (1, 64, torch.float32, None), (1, 32, torch.float16, [1, 1]),
    (13, 32, torch.float32, [1, 13]), (50, 64, torch.float32, None), (50, 80, torch.float16, [50, 7]),
    (77, 64, torch.float32, [1, 77]), (77, 128, torch.float16, [31, 1]), (129, 80, torch.float32, [129, 64]),
    (197, 64, torch.float16, None), (197, 32, torch.float32, [100, 197]), (257, 80, torch.float32, None),
    (257, 128, torch.float32, [256, 17]),
]


def _grads(fn, inputs, grad):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad))


def _lens(kv_len):
    return None if kv_len is None else torch.tensor(kv_len)


def _check_packed(B, L, H, D, dtype, kv_len):
    q, kv = torch.randn(B, H, D).to(dtype), torch.randn(B, L, 2, H, D).to(dtype)
    grad = torch.randn(B, H, D).to(dtype)
    ours = _grads(lambda a, b: attention_pool_kvpacked(a, b, kv_len=kv_len), [q, kv], grad)
    same = _grads(lambda a, b: attention_pool_kvpacked_ref(a, b, kv_len=kv_len), [q, kv], grad)
    exact = _grads(lambda a, b: attention_pool_kvpacked_ref(a, b, kv_len=kv_len), [q.double(), kv.double()],
                   grad.double())
    for name, a, r, e in zip(("out", "dq", "dkv"), ours, same, exact):
        label = f"{name} L={L} D={D} kv_len={kv_len} {dtype}"
        assert a.dtype == dtype
        if dtype == torch.float32:
            assert_close(a, e.float(), name=label)
        else:
            assert_matches_reference(a, r, e, name=label)
    if kv_len is not None:  # keys past kv_len get exactly zero gradient
        for b, n in enumerate(kv_len.tolist()):
            assert not ours[2][b, n:].any(), f"dkv row {b} past kv_len {n} is not zero"


@pytest.mark.parametrize("L,D,dtype,kv_len", KERNEL_CASES)
def test_kernel_packed_fwd_bwd(L, D, dtype, kv_len):
    assert backend.select("attention_pool", "cpu") == "triton"
    _check_packed(2, L, 3, D, dtype, _lens(kv_len))


def test_kernel_path_taken_and_packed_grad():
    """The kernel (not the reference) ran: its custom op is in the graph and dkv comes back packed."""
    q, kv = torch.randn(2, 3, 32, requires_grad=True), torch.randn(2, 9, 2, 3, 32, requires_grad=True)
    out = attention_pool_kvpacked(q, kv)
    assert "attention_pool_kvpacked" in str(out.grad_fn.name())
    out.sum().backward()
    assert kv.grad.shape == kv.shape and q.grad.shape == q.shape


def test_kernel_separate_noncontiguous_and_kv_len_types():
    """``attention_pool(q, k, v)`` on (B, H, L, D) views with unrelated strides (one column-major k, copied
    by the launcher), int64 kv_len, and a kv_len beyond L (means L)."""
    B, L, H, D = 2, 37, 3, 64
    q = torch.randn(B, D, H).transpose(1, 2)                   # (B, H, D), D strided -> copied
    k = torch.randn(B, H, D, L).transpose(2, 3)                # (B, H, L, D), column-major per head
    v = torch.randn(B, L, 2, H, D)[:, :, 1].transpose(1, 2)    # a strided slot of a packed buffer
    g = torch.randn(B, H, D)
    kv_len = torch.tensor([5, 99])
    ours = _grads(lambda a, b, c: attention_pool(a, b, c, kv_len=kv_len), [q, k, v], g)
    exact = _grads(lambda a, b, c: attention_pool_ref(a, b, c, kv_len=kv_len.clamp(max=L)),
                   [q.double(), k.double(), v.double()], g.double())
    for name, a, e in zip(("out", "dq", "dk", "dv"), ours, exact):
        assert_close(a, e.float(), name=name)
    assert "attention_pool_fwd" in str(attention_pool(q.requires_grad_(), k, v).grad_fn.name())


def test_kernel_packed_strided_rows():
    """kv a view of a wider buffer (row stride > 2·H·D) and q a slice of the full in_proj output."""
    B, L, H, D = 2, 20, 2, 32
    proj = torch.randn(B, L, 4 * H * D)
    kv = proj[..., H * D:3 * H * D].view(B, L, 2, H, D)
    q = torch.randn(B, 3 * H * D)[:, :H * D].view(B, H, D)
    assert not kv.is_contiguous()
    assert_close(attention_pool_kvpacked(q, kv), attention_pool_kvpacked_ref(q.double(), kv.double()).float())


def test_kernel_bf16_within_one_ulp():
    q, kv = torch.randn(2, 4, 64).bfloat16(), torch.randn(2, 50, 2, 4, 64).bfloat16()
    out = attention_pool_kvpacked(q, kv)
    assert out.dtype == torch.bfloat16
    assert_close(out, attention_pool_kvpacked_ref(q.double(), kv.double()).bfloat16())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter: inf - inf
def test_kernel_nonfinite_propagates():
    q, kv = torch.randn(2, 2, 32), torch.randn(2, 20, 2, 2, 32)
    kv[0, 3, 1, 0, 5] = float("nan")   # a NaN value: 0 * NaN spreads it to column 5 of (b 0, h 0)
    q[1, 1, 0] = float("inf")          # an inf query: its (b, h) becomes NaN
    out = attention_pool_kvpacked(q, kv)
    ref = attention_pool_kvpacked_ref(q, kv)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out[0, 0, 5]) and torch.isnan(out[1, 1]).all() and not torch.isnan(out[0, 1]).any()


def test_unsupported_falls_back_with_reason():
    q, kv = torch.randn(1, 1, 300), torch.randn(1, 4, 2, 1, 300)
    assert_close(attention_pool_kvpacked(q, kv), attention_pool_kvpacked_ref(q, kv))
    assert "head dim 300" in fallback_reason()
    attention_pool_kvpacked(q[..., :8].double(), kv[..., :8].double())
    assert "torch.float64" in fallback_reason()


def test_fallback_is_logged_once_per_reason(caplog):
    q, kv = torch.randn(1, 1, 264), torch.randn(1, 3, 2, 1, 264)
    with caplog.at_level("WARNING", logger="clipfast.ops"):
        for _ in range(3):
            attention_pool_kvpacked(q, kv)
    hits = [r for r in caplog.records if "head dim 264" in r.getMessage()]
    assert len(hits) == 1 and "running the reference" in hits[0].getMessage()


def test_kvpacked_bad_inputs():
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 5, 2, 3, 8)
    with pytest.raises(ValueError, match="kv: expected"):
        attention_pool_kvpacked(q, kv[:, :, :1])
    with pytest.raises(ValueError, match="kv: expected"):
        attention_pool_kvpacked(q, kv[..., :4])
    with pytest.raises(ValueError, match="q: expected 3 dims"):
        attention_pool_kvpacked(kv, kv)
    with pytest.raises(TypeError, match="k, v: expected dtype"):
        attention_pool_kvpacked(q, kv.half())
    with pytest.raises(ValueError, match="kv_len"):
        attention_pool_kvpacked(q, kv, kv_len=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="k: expected"):
        kernels.attention_pool_fwd(q, kv[:, :, 0, :2], kv[:, :, 1, :2])
    with pytest.raises(ValueError, match="v: expected the shape of k"):
        kernels.attention_pool_fwd(q, kv[:, :, 0], kv[:, :, 1, :2])


def test_gradcheck_fp64_kvpacked_ref():
    q = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(2, 6, 2, 2, 4, dtype=torch.float64, requires_grad=True)
    kv_len = torch.tensor([1, 6])
    assert torch.autograd.gradcheck(lambda a, b: attention_pool_kvpacked_ref(a, b, kv_len=kv_len), (q, kv))


def test_opcheck():
    q, kv = torch.randn(2, 3, 32, requires_grad=True), torch.randn(2, 7, 2, 3, 32, requires_grad=True)
    lens = torch.tensor([3, 7], dtype=torch.int32)
    torch.library.opcheck(_packed_op, (q, kv, lens))
    torch.library.opcheck(_packed_op, (q, kv, None))
    k, v = (torch.randn(2, 7, 3, 32, requires_grad=True) for _ in range(2))
    torch.library.opcheck(_pool_op, (q, k, v, lens))


def test_torch_compile_traces_kvpacked():
    q, kv = torch.randn(2, 3, 32, requires_grad=True), torch.randn(2, 11, 2, 3, 32, requires_grad=True)
    lens = torch.tensor([4, 11])
    fn = torch.compile(lambda a, b: attention_pool_kvpacked(a, b, kv_len=lens) * 2, fullgraph=True,
                       backend="aot_eager")
    out = fn(q, kv)
    assert_close(out, attention_pool_kvpacked_ref(q, kv, kv_len=lens) * 2)
    out.sum().backward()
    assert torch.isfinite(kv.grad).all() and torch.isfinite(q.grad).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("B,L,H,D,ragged", [(16, 50, 32, 64, False),    # RN50 attention pool
                                             (16, 197, 12, 64, False),   # ViT-B/16 class token
                                             (16, 77, 8, 64, True),      # text EOT token, kv_len = eot + 1
                                             (8, 257, 16, 80, False),    # ViT-H/14
                                             (8, 577, 16, 64, False)])   # ViT-L/14-336
def test_cuda_kernels_match_reference(B, L, H, D, ragged, dtype):
    q = torch.randn(B, H, D, device="cuda", dtype=dtype)
    kv = torch.randn(B, L, 2, H, D, device="cuda", dtype=dtype)
    grad = torch.randn(B, H, D, device="cuda", dtype=dtype)
    kv_len = torch.randint(1, L + 1, (B,), device="cuda") if ragged else None
    assert backend.select("attention_pool", "cuda") == "triton"
    ours = _grads(lambda a, b: attention_pool_kvpacked(a, b, kv_len=kv_len), [q, kv], grad)
    same = _grads(lambda a, b: attention_pool_kvpacked_ref(a, b, kv_len=kv_len), [q, kv], grad)
    exact = _grads(lambda a, b: attention_pool_kvpacked_ref(a, b, kv_len=kv_len), [q.double(), kv.double()],
                   grad.double())
    for name, a, r, e in zip(("out", "dq", "dkv"), ours, same, exact):
        assert_matches_reference(a, r, e, name=name)
