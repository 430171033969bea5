"""Whole-model benchmarks: ``clipfast.CLIP`` against ``open_clip.CLIP`` holding the same weights.

Providers: ``clipfast`` and ``open_clip`` (same random weights, copied strictly). Modes: ``fwd`` (image + text
features under ``no_grad``, eval mode) and ``fwd_bwd`` (train mode: forward, OpenCLIP ``ClipLoss``, backward —
a training step without the optimizer). Shapes: ``MODEL`` in ``bench/shapes.py`` (ViT-B-32 and RN50 at a
CPU-sized batch here; ``CLIPFAST_BENCH_BATCH=32`` overrides the batch). Text: random ids with EOT at 76.

``extra_info``: ``samples_per_s`` (batch / mean time), ``gflop`` (FLOPs of one call, ``FlopCounterMode``),
``saved_mb`` (activations saved for backward, fwd_bwd only: a deterministic proxy of training memory),
``peak_mb`` (CUDA: the caching allocator's peak during one call).

Run: ``pytest bench/bench_model.py --benchmark-only --benchmark-group-by=param:shape,param:mode``.
"""
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from shapes import DEVICE, MODEL  # bench/ is on sys.path (its conftest.py)
import clipfast

open_clip = pytest.importorskip("open_clip")

PROVIDERS = ["clipfast", "open_clip"]
MODES = ["fwd", "fwd_bwd"]
_CACHE = {}


def _models(config):
    """(open_clip model, clipfast model) with the same weights, built once per config."""
    if config not in _CACHE:
        _CACHE.clear()  # keep one pair alive at a time
        torch.manual_seed(0)
        ref = open_clip.model.CLIP(**clipfast.get_model_config(config)).to(DEVICE)
        ours = clipfast.CLIP(**clipfast.get_model_config(config)).to(DEVICE)
        ours.load_state_dict(ref.state_dict(), strict=True)
        _CACHE[config] = {"open_clip": ref, "clipfast": ours}
    return _CACHE[config]


def _inputs(model, batch):
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    image = torch.randn(batch, 3, size, size, device=DEVICE)
    text = torch.randint(1, 49405, (batch, model.context_length), device=DEVICE)
    text[:, -1] = 49407
    return image, text


def _step_fn(model, mode, image, text):
    loss_fn = open_clip.ClipLoss()
    if mode == "fwd":
        model.eval()

        def fwd():
            with torch.no_grad():
                return model(image, text)
        return fwd
    model.train()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        loss = loss_fn(*model(image, text))
        loss.backward()
        return loss
    return fwd_bwd


def _saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(MODEL))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_model(timed, benchmark, provider, shape, mode):
    config, batch = MODEL[shape]
    batch = int(os.environ.get("CLIPFAST_BENCH_BATCH", batch))
    model = _models(config)[provider]
    image, text = _inputs(model, batch)
    fn = _step_fn(model, mode, image, text)
    with FlopCounterMode(display=False) as counter:
        fn()
    benchmark.extra_info["gflop"] = counter.get_total_flops() / 1e9
    if mode == "fwd_bwd":
        benchmark.extra_info["saved_mb"] = _saved_bytes(fn) / 2 ** 20
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        benchmark.extra_info["peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    benchmark.extra_info["batch"] = batch
    timed(fn)
    benchmark.extra_info["samples_per_s"] = batch / benchmark.stats.stats.mean
