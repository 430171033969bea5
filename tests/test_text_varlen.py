"""Padding-free causal text tower (``CLIP(text_varlen=True)``, ``clipfast.nn.varlen``): features and every
parameter gradient equal to the padded path and to open_clip with the same weights."""
import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

import clipfast
import clipfast.nn.varlen as varlen
from clipfast.configs import get_model_config
from clipfast.nn.attention import Transformer
from clipfast.nn.varlen import VarlenLayout, _plan_buckets, varlen_attention
from tests.numerics import TOLERANCES, assert_close, assert_matches_reference

EOT = 49407
RTOL = TOLERANCES[torch.float32].rtol  # 1e-5
RAGGED = [2, 77, 6, 2, 31, 13]  # caption lengths incl. SOT + EOT: SOT/EOT only, a full 77-token caption


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    """Reference ops (PyTorch) here; the Triton varlen kernel path is tested on its own below."""
    monkeypatch.setenv("CLIPFAST_BACKEND", "reference")


def captions(lengths, eos_id=EOT, pad_tail=True):
    """(B, 77) ids whose caption b has lengths[b] tokens, its last the EOT (the largest id, and ``eos_id``)."""
    text = torch.randint(1, EOT - 2, (len(lengths), 77))
    for i, n in enumerate(lengths):
        text[i, n - 1] = EOT if eos_id == EOT else eos_id
        if pad_tail:
            text[i, n:] = 0
    return text


def triple(text_cfg=None, **kwargs):
    """(open_clip CLIP, clipfast CLIP varlen, clipfast CLIP padded), same random weights, train mode."""
    cfg = get_model_config("tiny-vit")
    cfg["text_cfg"] = dict(cfg["text_cfg"], **(text_cfg or {}))
    ref = open_clip.model.CLIP(**cfg)
    ours = clipfast.CLIP(**cfg, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    padded = copy.deepcopy(ours)
    padded.text_varlen = False
    return ref, ours, padded


def text_step(model, text, loss_weight):
    """encode_text forward + backward of a fixed linear-quadratic loss; -> (features, {name: grad})."""
    model.zero_grad(set_to_none=True)
    features = model.encode_text(text)
    ((features * loss_weight).sum() + features.square().sum()).backward()
    return features.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(grads, expected, rtol=RTOL, what=""):
    assert set(grads) == set(expected), f"{what}: parameters with gradients differ"
    scale = max(g.abs().max().item() for g in expected.values())
    for name, g in grads.items():
        err, norm = (g - expected[name]).norm().item(), expected[name].norm().item()
        assert err <= rtol * norm + 1e-7 * scale, f"{what} {name}: grad rel err {err / max(norm, 1e-30):.2e}"


def assert_same_features(a, b, rtol=RTOL, what=""):
    err, norm = (a - b).norm().item(), b.norm().item()
    assert err <= rtol * norm, f"{what}: features rel err {err / norm:.2e}"


# --- the bucket plan and the attention ------------------------------------------------------------------------

def test_plan_buckets_covers_every_sequence_once_and_splits_long_tails():
    short = [15, 16, 11, 16, 14, 13, 15, 14, 17, 12]
    assert _plan_buckets(short) == [list(range(10))]  # similar lengths: one call
    assert _plan_buckets([77] * 8) == [list(range(8))]
    plan = _plan_buckets(short + [77])
    assert plan[-1] == [10] and sorted(sum(plan, [])) == list(range(11))  # the 77-token caption alone
    for group in plan:
        assert group == sorted(group)


def _per_sequence(qkv, lengths):
    outs, start = [], 0
    for n in lengths:
        q, k, v = qkv[start:start + n].permute(1, 2, 0, 3).unbind(0)  # (H, n, D)
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1))
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("lengths", [RAGGED, [1], [77], [5, 5, 5], [3, 60, 4, 77, 9, 1, 50]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_varlen_attention_buckets_match_each_sequence_alone(lengths, dtype):
    layout = VarlenLayout(torch.tensor(lengths), 77, kernel=False)
    qkv = torch.randn(sum(lengths), 3, 2, 16, dtype=dtype, requires_grad=True)
    exact64 = qkv.detach().double().requires_grad_()
    out, same_dtype, exact = varlen_attention(qkv, layout), _per_sequence(qkv, lengths), _per_sequence(exact64, lengths)
    assert_matches_reference(out, same_dtype, exact, name="varlen attention")
    go = torch.randn(exact.shape, dtype=torch.float64)
    grads = [torch.autograd.grad(o, x, go.to(o.dtype))[0] for o, x in ((out, qkv), (same_dtype, qkv), (exact, exact64))]
    assert_matches_reference(*grads, name="dqkv")


def test_layout_indices_and_bad_input():
    layout = VarlenLayout(torch.tensor([2, 4, 1]), 5, kernel=True)
    assert layout.token_index.tolist() == [0, 1, 5, 6, 7, 8, 10]
    assert layout.positions.tolist() == [0, 1, 0, 1, 2, 3, 0]
    assert layout.cu_seqlens.tolist() == [0, 2, 6, 7] and layout.cu_seqlens.dtype == torch.int32
    assert layout.last.tolist() == [1, 5, 6] and layout.max_seqlen == 4 and layout.buckets is None
    x = torch.arange(7.0).view(7, 1)
    assert layout.pad(x)[:, :, 0].tolist() == [[0, 1, 0, 0], [2, 3, 4, 5], [6, 0, 0, 0]]
    with pytest.raises(ValueError, match="lengths: expected values in 1 .. 5"):
        VarlenLayout(torch.tensor([0, 3]), 5, kernel=False)
    with pytest.raises(ValueError, match="lengths: expected a non-empty 1-D integer"):
        VarlenLayout(torch.tensor([2.0]), 5, kernel=False)
    with pytest.raises(ValueError, match=r"qkv: expected \(7, 3, H, D\)"):
        varlen_attention(torch.randn(6, 3, 1, 4), layout)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_transformer_forward_varlen_equals_padded_pooled(checkpointing):
    model = Transformer(64, 3, 4)
    model.grad_checkpointing = checkpointing
    lengths = torch.tensor([9, 2, 30, 1])
    x = torch.randn(4, 30, 64, requires_grad=True)
    full = model(x, causal=True, pool_index=lengths - 1, kv_len=lengths)
    layout = VarlenLayout(lengths, 30, kernel=False)
    packed = model.forward_varlen(x.reshape(-1, 64)[layout.token_index], layout)
    assert_close(packed, full, name="forward_varlen")
    go = torch.randn_like(full)
    g_full = torch.autograd.grad(full, [x, *model.parameters()], go)
    g_packed = torch.autograd.grad(packed, [x, *model.parameters()], go)
    for a, b in zip(g_packed, g_full):
        assert_close(a, b, name="grad")


# --- the model ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths", [RAGGED, [2], [77], [2, 2, 2], [77, 77]], ids=["ragged", "b1-sot-eot", "b1-77",
                                                                                    "all-2", "all-77"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_features_and_grads_equal_padded_and_open_clip(lengths, checkpointing):
    ref, ours, padded = triple()
    for m in (ref, ours, padded):
        m.set_grad_checkpointing(checkpointing)
    text = captions(lengths)
    weight = torch.randn(len(lengths), 64)
    want, want_grads = text_step(ref, text, weight)
    for model, what in ((ours, "varlen vs open_clip"), (padded, "padded vs open_clip")):
        got, grads = text_step(model, text, weight)
        assert_same_features(got, want, what=what)
        assert_same_grads(grads, want_grads, what=what)
    assert_same_grads(text_step(ours, text, weight)[1], text_step(padded, text, weight)[1], what="varlen vs padded")


@pytest.mark.parametrize("pool_type,causal", [("argmax", True), ("eos", True), ("first", True), ("last", True),
                                              ("argmax", False), ("eos", False)])
def test_every_pool_type(monkeypatch, pool_type, causal):
    eos_id = 3
    ref, ours, padded = triple({"pool_type": pool_type, "eos_id": eos_id, "no_causal_mask": not causal})
    text = captions(RAGGED, eos_id=eos_id if pool_type == "eos" else EOT, pad_tail=False)  # ids after EOT too
    weight = torch.randn(len(RAGGED), 64)
    want, want_grads = text_step(ref, text, weight)
    built = []
    monkeypatch.setattr(clipfast.model, "VarlenLayout", lambda *a, **k: built.append(1) or VarlenLayout(*a, **k))
    got, grads = text_step(ours, text, weight)
    assert bool(built) == (causal and pool_type != "last"), "varlen used exactly where it is exact"
    assert_same_features(got, want, what=pool_type)
    assert_same_grads(grads, want_grads, what=pool_type)


def test_full_training_step_matches_open_clip():
    ref, ours, _ = triple()
    image, text = torch.randn(6, 3, 32, 32), captions(RAGGED)
    loss_fn = open_clip.ClipLoss()
    grads = []
    for m in (ref, ours):
        loss_fn(*m(image, text)).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert_same_grads(grads[1], grads[0], rtol=1e-4, what="step")  # the loss sums many terms: test_model's rtol


def test_bf16_autocast_matches_padded():
    _, ours, padded = triple()
    text, weight = captions(RAGGED), torch.randn(len(RAGGED), 64)
    out = []
    for m in (ours, padded):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = m.encode_text(text)
        assert features.dtype == torch.bfloat16
        (features.float() * weight).sum().backward()
        out.append((features.float(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    bf16 = TOLERANCES[torch.bfloat16].rtol
    assert_same_features(out[0][0], out[1][0], rtol=bf16, what="bf16")
    assert_same_grads(out[0][1], out[1][1], rtol=4 * bf16, what="bf16")


def test_switch_default_on_and_plumbed_through_create_model(monkeypatch):
    assert clipfast.CLIP(**get_model_config("tiny-vit")).text_varlen is True
    off = clipfast.create_model("tiny-vit", text_varlen=False)
    assert off.text_varlen is False
    monkeypatch.setattr(clipfast.model, "VarlenLayout", lambda *a, **k: pytest.fail("padded path expected"))
    off.encode_text(captions([3, 9]))


def test_varlen_kernel_path_matches_reference(monkeypatch):
    """The Triton varlen kernel (interpreter here) serves the attention when the attention backend is triton."""
    _, ours, padded = triple()
    text, weight = captions([2, 7, 4]), torch.randn(3, 64)
    want, want_grads = text_step(padded, text, weight)
    monkeypatch.delenv("CLIPFAST_BACKEND")
    calls = []
    real = varlen.attention_varlen_qkvpacked
    monkeypatch.setattr(varlen, "attention_varlen_qkvpacked", lambda *a, **k: calls.append(1) or real(*a, **k))
    got, grads = text_step(ours, text, weight)
    assert calls, "the varlen entry point was not used"
    assert_same_features(got, want, what="kernel")
    assert_same_grads(grads, want_grads, rtol=1e-4, what="kernel")


def test_torch_compile_matches_eager():
    _, ours, _ = triple()
    ours.eval()
    text = captions(RAGGED)
    compiled = torch.compile(ours.encode_text, backend="inductor")
    with torch.no_grad():
        assert_close(compiled(text), ours.encode_text(text), name="compiled encode_text")
        other = captions([5, 3])  # new lengths: recompiles or reuses a dynamic graph, still right
        assert_close(compiled(other), ours.encode_text(other), name="compiled, other lengths")
