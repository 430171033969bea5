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


# --- the Triton kernels (interpreter on CPU) against the reference ----------------------------------------

from clipfast import backend  # noqa: E402
from clipfast.kernels import attention as kernels  # noqa: E402
from clipfast.ops.attention import (  # noqa: E402
    _attention_op, _packed_op, attention_qkvpacked, attention_qkvpacked_ref, attention_varlen_qkvpacked,
    attention_varlen_qkvpacked_ref, fallback_reason)

# (L, D, causal, dtype): every CLIP length and odd ones, every served head dim; B*H kept tiny.
KERNEL_CASES = [
    (1, 64, False, torch.float32), (1, 32, True, torch.float16),
    (13, 32, True, torch.float32), (50, 64, False, torch.float32), (50, 80, True, torch.float16),
    (77, 64, True, torch.float32), (77, 80, False, torch.float32), (77, 128, True, torch.float16),
    (129, 96, True, torch.float16), (197, 64, False, torch.float16), (197, 32, True, torch.float32),
    (257, 80, False, torch.float32), (65, 128, False, torch.float32), (33, 96, False, torch.float32),
    (40, 64, True, torch.float16), (64, 32, True, torch.float32), (29, 64, True, torch.float32),  # single-tile
    # backward with BLOCK_M < BLOCK_N (several query blocks)
]


def _grads(fn, inputs, grad):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad))


def _check_packed(B, L, H, D, causal, dtype):
    qkv = torch.randn(B, L, 3, H, D).to(dtype)
    grad = torch.randn(B, L, H, D).to(dtype)
    ours = _grads(lambda t: attention_qkvpacked(t, causal=causal), [qkv], grad)
    same = _grads(lambda t: attention_qkvpacked_ref(t, causal=causal), [qkv], grad)
    exact = _grads(lambda t: attention_qkvpacked_ref(t, causal=causal), [qkv.double()], grad.double())
    for name, a, r, e in zip(("out", "dqkv"), ours, same, exact):
        if dtype == torch.float32:
            assert_close(a, e.float(), name=f"{name} L={L} D={D} causal={causal}")
        else:
            assert_matches_reference(a, r, e, name=f"{name} L={L} D={D} causal={causal} {dtype}")


@pytest.mark.parametrize("L,D,causal,dtype", KERNEL_CASES)
def test_kernel_packed_fwd_bwd(L, D, causal, dtype):
    assert backend.select("attention", "cpu") == "triton"
    _check_packed(1, L, 2 if L < 200 else 1, D, causal, dtype)


def test_kernel_batched_heads():
    _check_packed(2, 19, 3, 64, True, torch.float32)


def test_kernel_path_taken_and_packed_grad():
    """The kernel (not the reference) ran: its custom op is in the graph and dqkv comes back packed."""
    qkv = torch.randn(1, 9, 3, 2, 32, requires_grad=True)
    out = attention_qkvpacked(qkv)
    assert out.grad_fn is not None and "attention_qkvpacked" in type(out.grad_fn).__name__ + str(out.grad_fn.name())
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape


def test_kernel_separate_noncontiguous():
    """``attention(q, k, v)`` on (B, H, L, D) views with unrelated strides, forward and grads."""
    B, L, H, D = 1, 37, 2, 64
    q = torch.randn(B, L, H, D).transpose(1, 2)            # (B, H, L, D) view
    k = torch.randn(B, H, D, L).transpose(2, 3)            # column-major per head -> copied by the launcher
    v = torch.randn(B, L, 2, H, D)[:, :, 1].transpose(1, 2)
    g = torch.randn(B, H, L, D)
    ours = _grads(lambda a, b, c: attention(a, b, c, causal=True), [q, k, v], g)
    exact = _grads(lambda a, b, c: _naive(a, b, c, True), [q.double(), k.double(), v.double()], g.double())
    for name, a, e in zip(("out", "dq", "dk", "dv"), ours, exact):
        assert_close(a, e.float(), name=name)


def test_kernel_varlen_ragged():
    H, D = 2, 32
    lengths = [1, 17, 5, 33, 1]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    T = int(cu[-1])
    qkv = torch.randn(T, 3, H, D)
    grad = torch.randn(T, H, D)
    for causal in (True, False):
        ours = _grads(lambda t, causal=causal: attention_varlen_qkvpacked(t, cu, max(lengths), causal=causal), [qkv], grad)
        exact = _grads(lambda t, causal=causal: attention_varlen_qkvpacked_ref(t, cu, max(lengths), causal=causal),
                       [qkv.double()], grad.double())
        assert_close(ours[0], exact[0].float(), name=f"varlen out causal={causal}")
        assert_close(ours[1], exact[1].float(), name=f"varlen dqkv causal={causal}")


def test_kernel_varlen_long_multi_block():
    """max_seqlen > 64: the two-pass backward, with a 1-token sequence beside it."""
    lengths = [70, 1]
    cu = torch.tensor([0, 70, 71], dtype=torch.int32)
    qkv = torch.randn(71, 3, 1, 32)
    grad = torch.randn(71, 1, 32)
    ours = _grads(lambda t: attention_varlen_qkvpacked(t, cu, 70, causal=True), [qkv], grad)
    exact = _grads(lambda t: attention_varlen_qkvpacked_ref(t, cu, 70, causal=True), [qkv.double()], grad.double())
    for name, a, e in zip(("out", "dqkv"), ours, exact):
        assert_close(a, e.float(), name=name)
    assert max(lengths) > kernels.SINGLE_MAX_L


def test_kernel_bf16_within_one_ulp():
    """bf16 in the interpreter: stores truncate (triton #11584); the table's bf16 tolerance covers it."""
    qkv = torch.randn(1, 50, 3, 1, 64).bfloat16()
    out = attention_qkvpacked(qkv, causal=True)
    assert out.dtype == torch.bfloat16
    assert_close(out, attention_qkvpacked_ref(qkv.double(), causal=True).bfloat16())


def test_kernel_nonfinite_propagates():
    qkv = torch.randn(1, 20, 3, 1, 32)
    qkv[0, 3, 2, 0, 5] = float("nan")  # a NaN value (v of key 3): 0 * NaN spreads it to column 5 (as in SDPA)
    qkv[0, 7, 0, 0, 1] = float("inf")  # an inf query: its row becomes NaN
    out = attention_qkvpacked(qkv, causal=True)
    ref = attention_qkvpacked_ref(qkv, causal=True)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out[0, :, 0, 5]).all() and torch.isnan(out[0, 7]).all()


def test_unsupported_falls_back_with_reason():
    q = torch.randn(1, 2, 9, 40)
    assert_close(attention(q, q, q), _naive(q, q, q, False).float())
    assert "head dim 40" in fallback_reason()
    attention(q, q[:, :, :5], q[:, :, :5])
    assert "L_q 9 != L_k 5" in fallback_reason()


def test_info_shows_kernel_limits_and_the_fallback_reason():
    from clipfast import info

    q = torch.randn(1, 2, 9, 40)
    attention(q, q, q)
    text = "\n".join(info.report(torch.device("cpu")))
    assert "last fallback to the reference here: head dim 40" in text
    cuda = info.report(torch.device("cuda"))
    for op in ("attention", "attention_pool"):
        row = next(i for i, line in enumerate(cuda) if line.split()[:1] == [op])
        assert cuda[row].split()[-1] == "triton", cuda[row]
        assert any("kernels serve: head dim" in line for line in cuda[row + 1:row + 5])


def test_varlen_bad_inputs():
    qkv = torch.randn(10, 3, 2, 32)
    with pytest.raises(ValueError, match="cu_seqlens"):
        attention_varlen_qkvpacked(qkv, torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match="max_seqlen"):
        attention_varlen_qkvpacked(qkv, torch.tensor([0, 10], dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="qkv: expected"):
        attention_qkvpacked(qkv)
    with pytest.raises(ValueError, match="q: head dim"):
        kernels.attention_fwd(*torch.randn(1, 4, 3, 2, 40).unbind(2))


def test_gradcheck_fp64_packed_and_varlen_refs():
    qkv = torch.randn(1, 5, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: attention_qkvpacked_ref(t, causal=True), (qkv,))
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    assert torch.autograd.gradcheck(lambda t: attention_varlen_qkvpacked_ref(t[0], cu, 3, causal=True), (qkv,))


def test_opcheck():
    qkv = torch.randn(1, 7, 3, 2, 32, requires_grad=True)
    torch.library.opcheck(_packed_op, (qkv, True, None, 7))
    q, k, v = (torch.randn(1, 7, 2, 32, requires_grad=True) for _ in range(3))
    torch.library.opcheck(_attention_op, (q, k, v, False, None, 7))
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    torch.library.opcheck(_packed_op, (torch.randn(7, 3, 2, 32, requires_grad=True), True, cu, 4))


def test_torch_compile_traces_packed():
    qkv = torch.randn(1, 11, 3, 2, 32, requires_grad=True)
    fn = torch.compile(lambda t: attention_qkvpacked(t, causal=True) * 2, fullgraph=True, backend="aot_eager")
    out = fn(qkv)
    assert_close(out, attention_qkvpacked_ref(qkv, causal=True) * 2)
    out.sum().backward()
    assert torch.isfinite(qkv.grad).all()


def test_tile_table_beats_fa2_at_clip_lengths():
    for L in (50, 77, 197, 257, 577):
        for D in (64, 80):
            bm, bn, _, _ = kernels.fwd_config(L, D, False)
            _, bbm, bbn, _, _ = kernels.bwd_config(L, D, False)
            for causal in (False, True):
                fa2 = kernels.useful_share(L, 128, 128, causal)
                assert kernels.useful_share(L, bm, bn, causal) >= fa2, (L, D, causal)
                assert kernels.useful_share(L, bbm, bbn, causal) >= fa2, (L, D, causal)
    assert abs(kernels.useful_share(50, 64, 64) - 2500 / 4096) < 1e-12


def test_single_tile_backward_owns_all_keys():
    for L in range(1, kernels.MAX_SEQLEN + 1):
        for D in kernels.HEAD_DIMS:
            single, bm, bn, _, _ = kernels.bwd_config(L, D, True)
            assert not single or (bn >= L and bm <= bn), (L, D)
            assert single == (L <= kernels.SINGLE_MAX_L and D <= 64), (L, D)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("L,D,causal", [(50, 64, False), (77, 64, True), (197, 64, False), (257, 80, False),
                                         (577, 64, False), (77, 96, True), (33, 128, False)])
def test_cuda_kernels_match_reference(L, D, causal, dtype):
    qkv = torch.randn(4, L, 3, 8, D, device="cuda", dtype=dtype)
    grad = torch.randn(4, L, 8, D, device="cuda", dtype=dtype)
    ours = _grads(lambda t: attention_qkvpacked(t, causal=causal), [qkv], grad)
    same = _grads(lambda t: attention_qkvpacked_ref(t, causal=causal), [qkv], grad)
    exact = _grads(lambda t: attention_qkvpacked_ref(t, causal=causal), [qkv.double()], grad.double())
    for name, a, r, e in zip(("out", "dqkv"), ours, same, exact):
        assert_matches_reference(a, r, e, name=name)
