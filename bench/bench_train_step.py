"""One optimizer step of the trainer (``Trainer.train_step``): forward, loss, backward, grad clip, AdamW,
``logit_scale`` clamp — clipfast's model and loss against OpenCLIP's in the same loop.

Providers: ``clipfast`` (``clipfast.CLIP`` + ``clipfast.ClipLoss``, backends as ``clipfast.backend`` picks),
``reference`` (the same with ``CLIPFAST_BACKEND=reference``), ``open_clip`` (``open_clip.CLIP`` +
``open_clip.ClipLoss``, same weights). ``accum``: 1, or 2 micro-batches of half the batch (cached-feature
accumulation: one extra no-grad forward). Precision: fp32 on CPU, amp_bf16 on CUDA. Shapes: ``TRAIN_STEP`` in
``bench/shapes.py``.

``extra_info``: ``samples_per_s``, ``batch``, ``gflop`` (one step, ``FlopCounterMode``), ``peak_mb`` (CUDA).

Run: ``pytest bench/bench_train_step.py --benchmark-only --benchmark-group-by=param:shape,param:accum``.
"""
import argparse

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from shapes import DEVICE, TRAIN_STEP  # bench/ is on sys.path (its conftest.py)
import clipfast
from clipfast.train.trainer import TrainData, Trainer

open_clip = pytest.importorskip("open_clip")

PROVIDERS = ["clipfast", "reference", "open_clip"]
PRECISION = "amp_bf16" if DEVICE.type == "cuda" else "fp32"


def _args(accum):
    return argparse.Namespace(accum_freq=accum, epochs=1, lr=1e-4, wd=0.2, beta1=0.9, beta2=0.98, eps=1e-6, warmup=10,
                              precision=PRECISION, grad_clip_norm=1.0, lr_scheduler="cosine")


def _setup(provider, config, context_length):
    cfg = clipfast.get_model_config(config)
    cfg["text_cfg"] = dict(cfg["text_cfg"], context_length=context_length)
    torch.manual_seed(0)
    if provider == "open_clip":
        return open_clip.model.CLIP(**cfg, output_dict=True).to(DEVICE), open_clip.ClipLoss()
    return clipfast.CLIP(**cfg, output_dict=True).to(DEVICE), clipfast.ClipLoss()


def _batch(model, batch, context_length):
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    images = torch.randn(batch, 3, size, size, device=DEVICE)
    texts = torch.randint(1, 49405, (batch, context_length), device=DEVICE)
    texts[:, -1] = 49407
    return images, texts


@pytest.mark.parametrize("accum", [1, 2])
@pytest.mark.parametrize("shape", list(TRAIN_STEP))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step(timed, benchmark, monkeypatch, provider, shape, accum):
    config, batch, context_length = TRAIN_STEP[shape]
    if provider == "reference":
        monkeypatch.setenv("CLIPFAST_BACKEND", "reference")
    model, loss = _setup(provider, config, context_length)
    images, texts = _batch(model, batch, context_length)
    half = batch // accum
    micro = [(images[i * half:(i + 1) * half], texts[i * half:(i + 1) * half]) for i in range(accum)]
    trainer = Trainer(_args(accum), model, loss, TrainData(lambda e, s: iter(()), accum, half))
    trainer.scheduler(5)

    def step():
        return trainer.train_step(micro)["loss"]

    with FlopCounterMode(display=False) as counter:
        step()
    benchmark.extra_info["gflop"] = counter.get_total_flops() / 1e9
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        benchmark.extra_info["peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    benchmark.extra_info["batch"] = batch
    timed(step)
    benchmark.extra_info["samples_per_s"] = batch / benchmark.stats.stats.mean
