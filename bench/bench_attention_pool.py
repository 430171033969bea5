"""Attention-pooling benchmarks (one query per image/caption over L keys) at CLIP's shapes.

Providers (from q ``(B, H, D)`` and the packed kv projection ``(B, L, 2, H, D)`` to the ``(B, H·D)`` pooled
output):

- ``clipfast``: ``clipfast.ops.attention_pool_kvpacked`` on the Triton kernels (kv read in place). Skipped,
  with the reason, where the backend is not ``triton`` on a GPU (on CPU the interpreter is no timing path).
- ``reference``: ``attention_pool_kvpacked_ref`` (fp32 matmuls + softmax) — what clipfast runs on CPU.
- ``sdpa_math``, ``sdpa_flash``, ``sdpa_efficient``, ``sdpa_cudnn``: SDPA with one query
  (``q.unsqueeze(2)``, ``(B, H, L, D)`` views of kv, a boolean key mask for ``kv_len``) in one forced
  backend; skipped where that backend can't run the case.
- ``xformers`` (``memory_efficient_attention``, one query) and ``flash_attn`` (``flash_attn_kvpacked_func``,
  one query; no ragged ``kv_len``: it runs the full L) through ``importorskip``.
- ``open_clip``: OpenCLIP's ``AttentionPool2d`` (RN shapes only), which computes all ``HW + 1`` queries and
  keeps the first, paired with ``clipfast_module`` (``clipfast.nn.resnet.AttentionPool2d``, same weights,
  one query, on the backend it selects here: the kernels on a GPU, the reference on CPU); both include the
  q/k/v/c projections.

Modes ``fwd`` and ``fwd_bwd``. ``extra_info``: ``tflop_s`` (``4·B·H·L·D`` forward, 2.5× that backward),
``gb_s`` (minimum bytes over the mean time: fwd reads q and kv and writes o; the backward also reads q, kv,
o, dO and writes dq and dkv), ``backend``, ``peak_mb`` (``harness.peak_memory``).

Run: ``pytest bench/bench_attention_pool.py --benchmark-only``; static table: ``python bench/bench_attention_pool.py``.
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
from clipfast.ops.attention_pool import attention_pool_kvpacked, attention_pool_kvpacked_ref  # noqa: E402

# name: (B, L, H, D, ragged kv_len, ResNet feature-map side or None)
SHAPES = {
    "rn50_pool": (256, 50, 32, 64, False, 7),
    "vit_b32_cls": (256, 50, 12, 64, False, None),
    "text_eot": (256, 77, 8, 64, True, None),
    "vit_b16_cls": (256, 197, 12, 64, False, None),
    "vit_l14_cls": (256, 257, 16, 64, False, None),
    "vit_h14_cls": (256, 257, 16, 80, False, None),
}
CPU_BATCH = 8
DTYPES = [torch.bfloat16, torch.float16] if ON_GPU else [torch.float32]
SDPA = harness.SDPA
PROVIDERS = ["clipfast", "reference", *SDPA, "xformers", "flash_attn", "clipfast_module", "open_clip"]
MODES = ["fwd", "fwd_bwd"]


def shape_of(name):
    B, L, H, D, ragged, side = SHAPES[name]
    return (B if ON_GPU else CPU_BATCH), L, H, D, ragged, side


def _sdpa_pool(sdpa_backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = getattr(SDPBackend, sdpa_backend)

    def run(q, kv, kv_len):
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, D) views
        mask = None
        if kv_len is not None:
            mask = (torch.arange(k.shape[2], device=k.device) < kv_len[:, None])[:, None, None, :]  # (B, 1, 1, L)
        with sdpa_kernel(chosen):
            out = torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask)
        return out.reshape(q.shape[0], -1)
    return run


def _xformers_pool():
    xops = pytest.importorskip("xformers.ops")
    return lambda q, kv, kv_len: xops.memory_efficient_attention(q.unsqueeze(1), *kv.unbind(2)).reshape(q.shape[0], -1)


def _flash_attn_pool():
    flash_attn = pytest.importorskip("flash_attn")
    return lambda q, kv, kv_len: flash_attn.flash_attn_kvpacked_func(q.unsqueeze(1), kv).reshape(q.shape[0], -1)


def _pool_fn(provider):
    if provider == "clipfast":
        return lambda q, kv, kv_len: attention_pool_kvpacked(q, kv, kv_len=kv_len).reshape(q.shape[0], -1)
    if provider == "reference":
        return lambda q, kv, kv_len: attention_pool_kvpacked_ref(q, kv, kv_len=kv_len).reshape(q.shape[0], -1)
    if provider in SDPA:
        return _sdpa_pool(SDPA[provider])
    if provider == "xformers":
        return _xformers_pool()
    return _flash_attn_pool()


def _modules(side, C, H, dtype):
    """(clipfast's AttentionPool2d, OpenCLIP's) with the same weights."""
    open_clip = pytest.importorskip("open_clip")
    from clipfast.nn.resnet import AttentionPool2d

    ours = AttentionPool2d(side, C, H).to(DEVICE, dtype)
    ref = open_clip.modified_resnet.AttentionPool2d(side, C, H).to(DEVICE, dtype)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def _skip_reason(provider, side):
    if provider in ("clipfast_module", "open_clip") and side is None:
        return "AttentionPool2d is the ResNet tower's (RN shapes only)"
    return harness.kernel_skip_reason("attention_pool", provider, SDPA)


def _step(fn, mode, inputs, grad):
    if mode == "fwd":
        with torch.no_grad():
            return fn(*inputs)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return torch.autograd.grad(fn(*inputs), leaves, grad)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention_pool(timed, benchmark, provider, mode, dtype, shape):
    B, L, H, D, ragged, side = shape_of(shape)
    reason = _skip_reason(provider, side)
    if reason:
        pytest.skip(reason)
    train = mode == "fwd_bwd"
    if provider in ("clipfast_module", "open_clip"):
        ours, ref = _modules(side, H * D, H, dtype)
        fn = ours if provider == "clipfast_module" else ref
        inputs = (torch.randn(B, H * D, side, side, device=DEVICE, dtype=dtype, requires_grad=train),)
    else:
        pool = _pool_fn(provider)
        fn = pool
        kv_len = torch.randint(1, L + 1, (B,), device=DEVICE) if ragged else None
        inputs = (torch.randn(B, H, D, device=DEVICE, dtype=dtype, requires_grad=train),
                  torch.randn(B, L, 2, H, D, device=DEVICE, dtype=dtype, requires_grad=train), kv_len)
    grad = torch.randn(B, H * D, device=DEVICE, dtype=dtype)
    try:
        _step(fn, mode, inputs, grad)  # warm-up (and: does this backend take this case at all?)
    except RuntimeError as exc:
        if provider in SDPA:
            pytest.skip(f"{provider} can't run this case: {str(exc).splitlines()[0][:200]}")
        raise
    peak = harness.peak_memory(lambda: _step(fn, mode, inputs, grad))
    timed(_step, fn, mode, inputs, grad)
    flops, nbytes = costs.attention_pool(B, H, L, D, torch.finfo(dtype).bits // 8, mode)
    harness.record(
        benchmark, flops=flops, bytes_moved=nbytes, peak_bytes=peak,
        backend=backend.select("attention_pool", DEVICE) if provider.startswith("clipfast") else provider,
        shape=dict(B=B, L=L, H=H, D=D, ragged=ragged),
    )


def static_table(elem=2):
    """Per CLIP shape (GPU batch): the kernels' tiles, bytes per call (fwd, fwd+bwd), FLOPs."""
    from clipfast.kernels import attention_pool as kernels

    lines = [f"{'shape':<12} {'B':>4} {'L':>4} {'HxD':>6} {'fwd HEADSxNxBLOCK_D':>20} {'bwd':>9} "
             f"{'fwd MB':>8} {'f+b MB':>8} {'fwd GFLOP':>9} {'FLOP/byte':>9}"]
    for name, (B, L, H, D, _, _) in SHAPES.items():
        hf, nf, df, _ = kernels.fwd_config(D)
        hb, nb, db, _ = kernels.bwd_config(D)
        (fwd_flops, fwd_bytes), (_, both_bytes) = (costs.attention_pool(B, H, L, D, elem, m) for m in ("fwd", "fwd_bwd"))
        lines.append(f"{name:<12} {B:>4} {L:>4} {f'{H}x{D}':>6} {f'{hf}x{nf}x{df}':>20} {f'{hb}x{nb}x{db}':>9} "
                     f"{fwd_bytes / 1e6:>8.1f} {both_bytes / 1e6:>8.1f} "
                     f"{fwd_flops / 1e9:>9.2f} {fwd_flops / fwd_bytes:>9.2f}")
    return lines


if __name__ == "__main__":
    print("\n".join(static_table()))
