"""Whole-model benchmarks: ``clipfast.CLIP`` against ``open_clip.CLIP`` holding the same weights.

Providers: ``clipfast`` and ``open_clip`` (same random weights, copied strictly). Modes: ``fwd`` (image + text
features under ``no_grad``, eval mode) and ``fwd_bwd`` (train mode: forward, OpenCLIP ``ClipLoss``, backward —
a training step without the optimizer). Shapes: ``MODEL`` in ``bench/shapes.py`` (ViT-B-32 and RN50 at a
CPU-sized batch here; ``CLIPFAST_BENCH_BATCH=32`` overrides the batch). Text: random ids with EOT at 76.

``extra_info``: ``samples_per_s`` (batch / mean time), ``gflop`` (FLOPs of one call, ``FlopCounterMode``),
``saved_mb`` (activations saved for backward, fwd_bwd only: a deterministic proxy of training memory),
``peak_mb`` (CUDA: the caching allocator's peak during one call).

Run: ``pytest bench/bench_model.py --benchmark-only --benchmark-group-by=param:shape,param:mode``.

pytest-benchmark times one provider after the other, so slow drift of a shared CPU (thermal, other jobs)
lands on one side. For a ratio, interleave the providers step by step:

    python bench/bench_model.py --batch 32 --rounds 7          # fwd_bwd, ViT-B-32 and RN50, median ratio
"""
import argparse
import os
import statistics
import time

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


def interleaved(configs, batch, rounds, mode="fwd_bwd"):
    """Median seconds per step of each provider, timing clipfast and open_clip alternately after a warm-up
    step each. Returns {config: {provider: median_s}}."""
    results = {}
    for config in configs:
        pair = _models(config)
        fns = {name: _step_fn(model, mode, *_inputs(model, batch)) for name, model in pair.items()}
        times = {name: [] for name in fns}
        for fn in fns.values():
            fn()
        for r in range(rounds):
            for name in (PROVIDERS if r % 2 == 0 else PROVIDERS[::-1]):
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
        results[config] = {name: statistics.median(t) for name, t in times.items()}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description="clipfast vs open_clip training step, interleaved (CPU ratios)")
    parser.add_argument("--configs", default="ViT-B-32,RN50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mode", choices=MODES, default="fwd_bwd")
    args = parser.parse_args(argv)
    results = interleaved(args.configs.split(","), args.batch, args.rounds, args.mode)
    for config, t in results.items():
        print(f"{config} {args.mode} batch {args.batch} on {DEVICE} ({torch.get_num_threads()} threads): "
              f"clipfast {args.batch / t['clipfast']:.2f} samples/s, open_clip {args.batch / t['open_clip']:.2f}"
              f" samples/s, ratio {t['open_clip'] / t['clipfast']:.3f}x")


if __name__ == "__main__":
    main()
