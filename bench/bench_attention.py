"""Attention benchmarks at CLIP's shapes: clipfast's packed Triton kernels against SDPA and the others.

Providers (the attention core, from the packed ``in_proj`` output ``qkv (B, L, 3, H, D)`` to the
``(B, L, H·D)`` input of ``out_proj``, each paying what it needs to get there):

- ``clipfast``: ``clipfast.ops.attention_qkvpacked`` on the Triton kernels (reads qkv in place). Skipped,
  with the reason, where the backend is not ``triton`` on a GPU (on CPU the interpreter is no timing path).
- ``reference``: ``attention_qkvpacked_ref`` (permute to ``(B, H, L, D)``, SDPA with PyTorch's choice of
  backend, transpose back) — what clipfast runs on CPU; timed everywhere.
- ``sdpa_math``, ``sdpa_flash``, ``sdpa_efficient``, ``sdpa_cudnn``: the same with SDPA forced to one
  backend (``torch.nn.attention.sdpa_kernel``); skipped where that backend can't run the case.
- ``xformers``: ``xformers.ops.memory_efficient_attention`` on ``(B, L, H, D)`` views; ``flash_attn``:
  ``flash_attn_qkvpacked_func(qkv)``; both through ``importorskip``.
- ``open_clip``: OpenCLIP's attention module (``nn.MultiheadAttention``, batch first, with the explicit
  float causal mask OpenCLIP passes): it includes the in/out projections, so it is paired with
  ``clipfast_layer`` (``clipfast.nn.Attention``, the same projections around ``attention_qkvpacked`` on the
  backend it selects here: the kernels on a GPU, the reference on CPU).

Modes ``fwd`` and ``fwd_bwd``. ``extra_info``: ``tflop_s`` (FLOPs of the attention core, FlashAttention's
convention: fwd ``4·B·H·L²·D``, halved when causal; backward 2.5× the forward), ``gb_s`` (the minimum bytes a
fused kernel moves over the mean time: fwd reads q, k, v and writes o; the backward also reads q, k, v, o,
dO and writes dqkv), ``useful_share_clipfast`` (real scores / computed scores of clipfast's tiles; the lower
of forward and backward in ``fwd_bwd``), ``useful_share_fa2`` (the same for FA2's 128 × 128 tiles),
``backend``, ``peak_mb`` (``harness.peak_memory``: CUDA allocator peak, or CPU peak RSS).

Run: ``pytest bench/bench_attention.py --benchmark-only`` (CPU: small batches, the reference and SDPA math
only; GPU: the real CLIP shapes). The static table (no timing): ``python bench/bench_attention.py``.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # bench/ (shapes.py), also when run as a script
import costs  # noqa: E402
import harness  # noqa: E402
from shapes import DEVICE, ON_GPU  # noqa: E402
from clipfast import backend  # noqa: E402
from clipfast.ops.attention import attention_qkvpacked, attention_qkvpacked_ref  # noqa: E402

# name: (B, L, H, D, causal) — the CLIP towers (docs: attention-design.md); CPU-sized batches off a GPU.
SHAPES = {
    "vit_b32": (256, 50, 12, 64, False),
    "text": (256, 77, 8, 64, True),
    "vit_b16": (128, 197, 12, 64, False),
    "vit_l14": (64, 257, 16, 64, False),
    "vit_l14_336": (32, 577, 16, 64, False),
    "vit_h14": (64, 257, 16, 80, False),
}
CPU_BATCH = {"vit_b32": 8, "text": 8, "vit_b16": 2, "vit_l14": 1, "vit_l14_336": 1, "vit_h14": 1}
DTYPES = [torch.bfloat16, torch.float16] if ON_GPU else [torch.float32]
SDPA = harness.SDPA
PROVIDERS = ["clipfast", "reference", *SDPA, "xformers", "flash_attn", "clipfast_layer", "open_clip"]
MODES = ["fwd", "fwd_bwd"]


def shape_of(name):
    B, L, H, D, causal = SHAPES[name]
    return (B if ON_GPU else CPU_BATCH[name]), L, H, D, causal


def tiles(L, D, causal):
    """(forward, backward) useful share of clipfast's tiles and FA2's 128 × 128 tiles at this length."""
    from clipfast.kernels import attention as kernels

    bm, bn, _, _ = kernels.fwd_config(L, D, causal)
    _, bbm, bbn, _, _ = kernels.bwd_config(L, D, causal)
    return (kernels.useful_share(L, bm, bn, causal), kernels.useful_share(L, bbm, bbn, causal),
            kernels.useful_share(L, 128, 128, causal))


def _sdpa_core(sdpa_backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = getattr(SDPBackend, sdpa_backend)

    def run(qkv, causal):
        with sdpa_kernel(chosen):
            return attention_qkvpacked_ref(qkv, causal=causal).reshape(*qkv.shape[:2], -1)
    return run


def _xformers_core():
    xops = pytest.importorskip("xformers.ops")

    def run(qkv, causal):
        q, k, v = qkv.unbind(2)  # (B, L, H, D) views
        bias = xops.LowerTriangularMask() if causal else None
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias).reshape(*qkv.shape[:2], -1)
    return run


def _flash_attn_core():
    flash_attn = pytest.importorskip("flash_attn")
    return lambda qkv, causal: flash_attn.flash_attn_qkvpacked_func(qkv, causal=causal).reshape(*qkv.shape[:2], -1)


def _modules(W, H, dtype):
    """(clipfast.nn.Attention, OpenCLIP's nn.MultiheadAttention) with the same weights."""
    from clipfast.nn.attention import Attention

    ours = Attention(W, H).to(DEVICE, dtype)
    ref = torch.nn.MultiheadAttention(W, H, batch_first=True).to(DEVICE, dtype)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def _skip_reason(provider, dtype):
    return harness.kernel_skip_reason("attention", provider, SDPA)


def _core_fn(provider):
    if provider == "clipfast":
        return lambda qkv, causal: attention_qkvpacked(qkv, causal=causal).reshape(*qkv.shape[:2], -1)
    if provider == "reference":
        return lambda qkv, causal: attention_qkvpacked_ref(qkv, causal=causal).reshape(*qkv.shape[:2], -1)
    if provider in SDPA:
        return _sdpa_core(SDPA[provider])
    if provider == "xformers":
        return _xformers_core()
    return _flash_attn_core()


def _step(fn, mode, inp, grad):
    if mode == "fwd":
        with torch.no_grad():
            return fn(inp)
    return torch.autograd.grad(fn(inp), inp, grad)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention(timed, benchmark, provider, mode, dtype, shape):
    reason = _skip_reason(provider, dtype)
    if reason:
        pytest.skip(reason)
    B, L, H, D, causal = shape_of(shape)
    W = H * D
    if provider in ("clipfast_layer", "open_clip"):
        ours, ref = _modules(W, H, dtype)
        mask = torch.full((L, L), float("-inf"), device=DEVICE, dtype=dtype).triu_(1) if causal else None
        fn = ((lambda x: ours(x, causal=causal)) if provider == "clipfast_layer"
              else (lambda x: ref(x, x, x, need_weights=False, attn_mask=mask)[0]))
        inp = torch.randn(B, L, W, device=DEVICE, dtype=dtype, requires_grad=mode == "fwd_bwd")
    else:
        core = _core_fn(provider)
        fn = lambda qkv: core(qkv, causal)  # noqa: E731
        inp = torch.randn(B, L, 3, H, D, device=DEVICE, dtype=dtype, requires_grad=mode == "fwd_bwd")
    grad = torch.randn(B, L, W, device=DEVICE, dtype=dtype)
    try:
        _step(fn, mode, inp, grad)  # warm-up (and: does this backend take this case at all?)
    except RuntimeError as exc:
        if provider in SDPA:
            pytest.skip(f"{provider} can't run this case: {str(exc).splitlines()[0][:200]}")
        raise
    peak = harness.peak_memory(lambda: _step(fn, mode, inp, grad))
    timed(_step, fn, mode, inp, grad)
    share_fwd, share_bwd, share_fa2 = tiles(L, D, causal)
    flops, nbytes = costs.attention(B, H, L, D, causal, inp.element_size(), mode)
    harness.record(
        benchmark, flops=flops, bytes_moved=nbytes, peak_bytes=peak,
        useful_share_clipfast=round(share_fwd if mode == "fwd" else min(share_fwd, share_bwd), 3),
        useful_share_fa2=round(share_fa2, 3),
        backend=backend.select("attention", DEVICE) if provider.startswith("clipfast") else provider,
        shape=dict(B=B, L=L, H=H, D=D, causal=causal),
    )


def static_table(elem=2):
    """Per CLIP shape (GPU batch): tiles, useful share (clipfast fwd/bwd vs FA2 128 × 128), bytes per call
    (fwd, fwd+bwd), FLOPs (fwd, fwd+bwd). ``elem``: bytes per element (2: fp16/bf16)."""
    from clipfast.kernels import attention as kernels

    lines = [f"{'shape':<12} {'B':>4} {'L':>4} {'HxD':>6} {'causal':>6} {'fwd tile':>8} {'bwd tile':>11} "
             f"{'fwd share':>9} {'bwd share':>9} {'FA2 share':>9} {'fwd MB':>8} {'f+b MB':>8} {'fwd GFLOP':>9} "
             f"{'f+b GFLOP':>9}"]
    for name, (B, L, H, D, causal) in SHAPES.items():
        bm, bn, _, _ = kernels.fwd_config(L, D, causal)
        single, bbm, bbn, _, _ = kernels.bwd_config(L, D, causal)
        s_f, s_b, s_fa2 = tiles(L, D, causal)
        fwd, both = (costs.attention(B, H, L, D, causal, elem, m) for m in ("fwd", "fwd_bwd"))
        lines.append(
            f"{name:<12} {B:>4} {L:>4} {f'{H}x{D}':>6} {str(causal):>6} {f'{bm}x{bn}':>8} "
            f"{('1 ' if single else '2 ') + f'{bbm}x{bbn}':>11} {s_f:>9.1%} {s_b:>9.1%} {s_fa2:>9.1%} "
            f"{fwd[1] / 1e6:>8.1f} {both[1] / 1e6:>8.1f} {fwd[0] / 1e9:>9.1f} {both[0] / 1e9:>9.1f}")
    lines.append("bwd tile: '1' = one single-tile program per (b, h); '2' = the two deterministic passes (dq, dk/dv)")
    return lines


if __name__ == "__main__":
    print("\n".join(static_table()))
