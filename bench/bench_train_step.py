"""One optimizer step of the trainer (``Trainer.train_step``): forward, loss, backward, grad clip, AdamW,
``logit_scale`` clamp — clipfast's fused path against OpenCLIP's model and loss in the same loop.

Three benchmarks, shapes ``TRAIN_STEP`` of ``bench/shapes.py`` (CPU: ViT-B-32 and RN50 at batch 2, fp32; GPU:
batch 256 / 128, amp_bf16):

- ``test_train_step[provider]``: ``clipfast`` (``clipfast.CLIP`` + ``clipfast.ClipLoss``, backends as
  ``clipfast.backend`` picks them) vs ``open_clip`` (``open_clip.CLIP`` + ``open_clip.ClipLoss``, the same
  weights); torch's AdamW for both.
- ``test_grad_checkpointing[on|off]``: clipfast with ``set_grad_checkpointing`` on and off; ``saved_mb``
  (activations autograd keeps for backward outside checkpointed blocks, counted by a saved-tensors hook: a
  deterministic measure of activation memory) and ``peak_mb``.
- ``test_optimizer_mode[mode]``: the clipfast step with each optimizer of ``OPTIMIZER_MODES`` (torch AdamW,
  ``clipfast.optim.AdamW`` with fp32 / bf16 state, bf16 weights with stochastic rounding + bf16 state);
  ``state_bytes_per_param`` and ``weights_bytes_per_param``.

``extra_info`` (``harness.record``): ``samples_per_s``, ``flops`` / ``gflop_per_s`` (one step,
``FlopCounterMode``), ``peak_mb`` (``harness.peak_memory`` of the first step above the built model and its
inputs — activations, gradients and the optimizer state's allocation: CUDA allocator peak, CPU peak RSS).

Run: ``pytest bench/bench_train_step.py --benchmark-only --benchmark-group-by=func,param:shape``. For a
clipfast / OpenCLIP ratio on a shared CPU, interleave the two step by step:

    python bench/bench_train_step.py --rounds 5        # median samples/s of each, and their ratio

(``clipfast bench`` runs the same, ``interleaved_compare``, as its ``train_step`` stage.)
"""
import argparse

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import harness
from shapes import DEVICE, TRAIN_STEP
import clipfast
from clipfast.precision import set_model_precision
from clipfast.train.config import TrainConfig
from clipfast.train.distributed import DistInfo
from clipfast.train.trainer import TrainData, Trainer

PROVIDERS = ["clipfast", "open_clip"]
PRECISION = "amp_bf16" if DEVICE.type == "cuda" else "fp32"
ROUNDS = 1 if DEVICE.type == "cpu" else 5  # a CPU step is seconds; for CPU ratios use main() (interleaved)
# name: (trainer optimizer flags, precision override or None)
OPTIMIZER_MODES = {
    "torch_adamw": (dict(optimizer="adamw"), None),
    "clipfast_fp32_state": (dict(optimizer="clipfast-adamw", opt_state_dtype="float32"), None),
    "clipfast_bf16_state": (dict(optimizer="clipfast-adamw", opt_state_dtype="bfloat16"), None),
    "clipfast_bf16_weights_sr": (dict(optimizer="clipfast-adamw", opt_state_dtype="bfloat16", bf16_weights=True),
                                 "pure_bf16"),
}


def trainer_args(precision=PRECISION, **optimizer):
    return TrainConfig(accum_freq=1, epochs=1, lr=1e-4, wd=0.2, beta1=0.9, beta2=0.98, eps=1e-6, warmup=10,
                       precision=precision, grad_clip_norm=1.0, lr_scheduler="cosine", seed=0, no_progress=True, **optimizer)


def make_step(provider, shape, *, grad_checkpointing=False, optimizer_mode="torch_adamw"):
    """(step() -> loss, trainer, batch size) for one train step of ``provider`` at ``TRAIN_STEP[shape]``."""
    config, batch, context_length = TRAIN_STEP[shape]
    cfg = clipfast.get_model_config(config)
    cfg["text_cfg"] = dict(cfg["text_cfg"], context_length=context_length)
    flags, precision = OPTIMIZER_MODES[optimizer_mode]
    precision = precision or PRECISION
    torch.manual_seed(0)
    if provider == "open_clip":
        open_clip = harness.require("open_clip")
        model, loss = open_clip.model.CLIP(**cfg, output_dict=True), open_clip.ClipLoss()
    elif provider == "clipfast":
        model, loss = clipfast.CLIP(**cfg, output_dict=True), clipfast.ClipLoss()
    else:
        raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")
    set_model_precision(model, precision, DEVICE)
    model.set_grad_checkpointing(grad_checkpointing)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=g).to(DEVICE)
    texts = torch.randint(1, 49405, (batch, context_length), generator=g)
    texts[:, -1] = 49407
    micro = [(images, texts.to(DEVICE))]
    trainer = Trainer(trainer_args(precision, **flags), model, loss, TrainData(lambda e, s: iter(()), 1, batch),
                      info=DistInfo(device=DEVICE))
    trainer.scheduler(5)
    return (lambda: trainer.train_step(micro)["loss"]), trainer, batch


def saved_bytes(fn, model):
    """Bytes of the activations autograd saves for backward during ``fn()``: saved tensors outside checkpointed
    regions, less those that are (views of) ``model``'s parameters."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = [0]

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def _measure(timed, benchmark, step, batch, **extra):
    """The first step is the warm-up and gives the FLOPs and the peak memory (the optimizer state's allocation
    included: what a run's first step needs); then ``ROUNDS`` timed steps."""
    with FlopCounterMode(display=False) as counter:
        peak = harness.peak_memory(step)
    timed(step, rounds=ROUNDS, warmup_rounds=0)
    return harness.record(benchmark, flops=counter.get_total_flops(), peak_bytes=peak, samples=batch, batch=batch,
                          precision=PRECISION, **extra)


@pytest.mark.parametrize("shape", list(TRAIN_STEP))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step(timed, benchmark, provider, shape):
    step, _, batch = make_step(provider, shape)
    _measure(timed, benchmark, step, batch)


@pytest.mark.parametrize("checkpointing", ["off", "on"])
@pytest.mark.parametrize("shape", list(TRAIN_STEP)[:1])
def test_grad_checkpointing(timed, benchmark, shape, checkpointing):
    step, trainer, batch = make_step("clipfast", shape, grad_checkpointing=checkpointing == "on")
    forward = trainer.model  # the activations kept by one forward + loss, before backward frees them
    _, _, context_length = TRAIN_STEP[shape]
    size = forward.visual.image_size
    size = size if isinstance(size, int) else size[0]
    images = torch.randn(batch, 3, size, size, device=DEVICE)
    texts = torch.randint(1, 49405, (batch, context_length), device=DEVICE)
    texts[:, -1] = 49407

    def forward_loss():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=PRECISION == "amp_bf16"):
            return trainer.loss_fn(**forward(images, texts))

    _measure(timed, benchmark, step, batch, saved_mb=saved_bytes(forward_loss, forward) / 2**20)


@pytest.mark.parametrize("mode", list(OPTIMIZER_MODES))
@pytest.mark.parametrize("shape", list(TRAIN_STEP)[:1])
def test_optimizer_mode(timed, benchmark, shape, mode):
    step, trainer, batch = make_step("clipfast", shape, optimizer_mode=mode)
    info = _measure(timed, benchmark, step, batch, optimizer_mode=mode)
    params = [p for p in trainer.model.parameters()]
    n = sum(p.numel() for p in params)
    state = sum(t.numel() * t.element_size() for p, s in trainer.optimizer.state.items() for t in s.values()
                if torch.is_tensor(t) and t.shape == p.shape)
    info.update(state_bytes_per_param=state / n, weights_bytes_per_param=sum(p.numel() * p.element_size()
                                                                              for p in params) / n)


def interleaved_compare(shape, rounds):
    """clipfast vs open_clip at ``TRAIN_STEP[shape]``, steps interleaved (``harness.interleaved``) after a first
    step each that gives its peak memory and FLOPs. Returns a JSON-able dict; ``ratio``: open_clip time / clipfast
    time."""
    config, batch, _ = TRAIN_STEP[shape]
    steps = {p: make_step(p, shape)[0] for p in PROVIDERS}
    peaks, flops = {}, {}
    for p, step in steps.items():
        with FlopCounterMode(display=False) as counter:
            peaks[p] = harness.peak_memory(step)
        flops[p] = counter.get_total_flops()
    med = harness.interleaved(steps, rounds, warmup=0)
    return {"shape": shape, "config": config, "batch": batch, "precision": PRECISION, "rounds": rounds,
            "device": str(DEVICE), "threads": torch.get_num_threads(), "ratio": med["open_clip"] / med["clipfast"],
            "providers": {p: {"median_s": med[p], "samples_per_s": batch / med[p], "first_step_peak_bytes": peaks[p],
                              "flops": flops[p]} for p in PROVIDERS}}


def main(argv=None):
    parser = argparse.ArgumentParser(description="clipfast vs open_clip train step, interleaved (CPU ratios)")
    parser.add_argument("--shapes", default=",".join(TRAIN_STEP))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    for shape in args.shapes.split(","):
        r = interleaved_compare(shape, args.rounds)
        sps = {p: v["samples_per_s"] for p, v in r["providers"].items()}
        print(f"{r['config']} batch {r['batch']} {PRECISION} on {DEVICE} ({r['threads']} threads), median of "
              f"{args.rounds} interleaved steps: clipfast {sps['clipfast']:.2f} samples/s, open_clip "
              f"{sps['open_clip']:.2f} samples/s, ratio {r['ratio']:.3f}x")


if __name__ == "__main__":
    main()
