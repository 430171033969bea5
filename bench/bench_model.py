"""Whole-model benchmarks: ``clipfast.CLIP`` against ``open_clip.CLIP`` holding the same weights.

Providers: ``clipfast`` (padding-free text tower, ``text_varlen=True``, the default), ``clipfast_padded``
(``text_varlen=False``: all L text tokens), ``clipfast_trimmed`` (the padded path on the batch trimmed to
``max(eot) + 1`` tokens, the simplest alternative to packing) and ``open_clip`` — same random weights (copied
strictly), same inputs. Modes: ``fwd`` (image + text features under ``no_grad``, eval mode), ``fwd_bwd`` (train mode: forward,
OpenCLIP ``ClipLoss``, backward — a training step without the optimizer) and ``text`` (the text tower alone:
``encode_text`` forward + backward of a fixed linear loss, train mode). Shapes: ``MODEL`` in
``bench/shapes.py`` (ViT-B-32 and RN50 at a CPU-sized batch here; ``CLIPFAST_BENCH_BATCH=32`` overrides the
batch).

Text (``TEXTS``): ``coco``, caption lengths drawn from ``caption_lengths`` below, or ``all77``, every caption
77 tokens (the worst case, nothing to skip). Ids: SOT 49406, random content ids, EOT 49407, zeros after.

Caption-length distribution (``coco``). Source: MS COCO captions average about 10.5 words, with nearly all
between 8 and 20 words (Chen et al. 2015, "Microsoft COCO Captions: Data Collection and Evaluation Server",
arXiv:1504.00325; quoted from knowledge, not re-measured here). CLIP's BPE splits English caption words into
~1.2 tokens each (an estimate), and adds SOT and EOT, so a caption has ~15 tokens. Modelled as
``length = 3 + Poisson(12)`` tokens (mean 15, sd 3.5), clipped to ``[2, 77]``, from a seeded generator.

``extra_info`` (``harness.record``): ``samples_per_s`` (batch / mean time), ``flops`` and ``gflop_per_s`` (FLOPs
of one call, ``FlopCounterMode``),
``saved_mb`` (activations saved for backward), ``peak_mb`` (peak live tensor memory during one call: the CUDA
caching allocator's peak on CUDA; on CPU the torch profiler's memory timeline, parameters and gradients
included), ``text_tokens`` (mean caption length).

Run: ``pytest bench/bench_model.py --benchmark-only --benchmark-group-by=param:shape,param:text,param:mode``.

pytest-benchmark times one provider after the other, so slow drift of a shared CPU (thermal, other jobs)
lands on one side. For a ratio, interleave the providers step by step:

    python bench/bench_model.py --batch 32 --rounds 5 --modes fwd_bwd,text --texts coco,all77 --memory
    python bench/bench_model.py --configs ViT-B-32 --modes fwd_bwd --texts coco --providers clipfast,open_clip
    python bench/bench_model.py --attention --rounds 15   # CPU mechanisms of the varlen attention, one layer
"""
import argparse
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import harness  # bench/ is on sys.path (its conftest.py)
from shapes import DEVICE, MODEL
import clipfast

open_clip = pytest.importorskip("open_clip")

PROVIDERS = ["clipfast", "clipfast_padded", "clipfast_trimmed", "open_clip"]
MODES = ["fwd", "fwd_bwd", "text"]
TEXTS = ["coco", "all77"]
SOT, EOT, CONTEXT = 49406, 49407, 77
_CACHE = {}


def caption_lengths(batch, text, generator):
    """(batch,) caption lengths in tokens incl. SOT/EOT: ``3 + Poisson(12)`` clipped to [2, 77] (see the module
    docstring for the source), or all 77."""
    if text == "all77":
        return torch.full((batch,), CONTEXT, dtype=torch.long)
    return (3 + torch.poisson(torch.full((batch,), 12.0), generator=generator)).clamp(2, CONTEXT).long()


def _models(config):
    """{provider: model}, the same weights, built once per config."""
    if config not in _CACHE:
        _CACHE.clear()  # keep one set alive at a time
        torch.manual_seed(0)
        ref = open_clip.model.CLIP(**clipfast.get_model_config(config)).to(DEVICE)
        models = {"open_clip": ref}
        for name, varlen in (("clipfast", True), ("clipfast_padded", False)):
            models[name] = clipfast.CLIP(**clipfast.get_model_config(config), text_varlen=varlen).to(DEVICE)
            models[name].load_state_dict(ref.state_dict(), strict=True)
        models["clipfast_trimmed"] = models["clipfast_padded"]
        _CACHE[config] = models
    return _CACHE[config]


def _provider_text(provider, text):
    """The ids a provider gets: ``clipfast_trimmed`` drops the columns after the longest caption."""
    return text[:, :int(text.argmax(-1).max()) + 1] if provider == "clipfast_trimmed" else text


def _inputs(model, batch, text_kind):
    """(image, text ids (B, 77)) from a fixed seed: every provider gets the same batch."""
    generator = torch.Generator().manual_seed(1)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    image = torch.randn(batch, 3, size, size, generator=generator)
    text = torch.randint(1, SOT, (batch, CONTEXT), generator=generator)
    text[:, 0] = SOT
    for i, n in enumerate(caption_lengths(batch, text_kind, generator).tolist()):
        text[i, n - 1] = EOT
        text[i, n:] = 0
    return image.to(DEVICE), text.to(DEVICE)


def _step_fn(model, mode, image, text):
    loss_fn = open_clip.ClipLoss()
    if mode == "fwd":
        model.eval()

        def fwd():
            with torch.no_grad():
                return model(image, text)
        return fwd
    model.train()
    if mode == "text":
        weight = torch.randn(text.shape[0], model.text_projection.shape[1],
                             generator=torch.Generator().manual_seed(2)).to(DEVICE)

        def text_fwd_bwd():
            model.zero_grad(set_to_none=True)
            loss = (model.encode_text(text, normalize=True) * weight).sum()
            loss.backward()
            return loss
        return text_fwd_bwd

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


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(MODEL))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_model(timed, benchmark, provider, shape, mode, text):
    config, batch = MODEL[shape]
    batch = int(os.environ.get("CLIPFAST_BENCH_BATCH", batch))
    model = _models(config)[provider]
    image, ids = _inputs(model, batch, text)
    fn = _step_fn(model, mode, image, _provider_text(provider, ids))
    with FlopCounterMode(display=False) as counter:
        fn()
    extra = {"saved_mb": _saved_bytes(fn) / 2 ** 20} if mode != "fwd" else {}
    peak = harness.peak_memory(fn, tensors=True)
    timed(fn)
    harness.record(benchmark, flops=counter.get_total_flops(), peak_bytes=peak, samples=batch, batch=batch,
                   text_tokens=(ids.argmax(-1) + 1).float().mean().item(), **extra)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def interleaved(config, batch, rounds, mode, text, memory=False, providers=PROVIDERS, clock="wall"):
    """Median seconds per step of each provider, timing them in turn (order alternating each round) after a
    warm-up step each. ``clock="process"`` times the CPU seconds of this process instead of wall time (on a
    CPU shared with other jobs, with one thread, it does not count the time the job waits for a core).
    Returns {provider: {"s": median_s, "peak_mb": ... (with ``memory``)}}."""
    models = _models(config)
    image, ids = _inputs(models["open_clip"], batch, text)
    fns = {name: _step_fn(models[name], mode, image, _provider_text(name, ids)) for name in providers}
    results = {name: {"s": s} for name, s in harness.interleaved(fns, rounds, clock=CLOCKS[clock]).items()}
    if memory:
        for name, fn in fns.items():
            results[name]["peak_mb"] = harness.peak_memory(fn, tensors=True) / 2 ** 20
    return results


def _attention_options(lengths, heads=8, head_dim=64):
    """{name: fn(qkv (T, 3, H, D)) -> (T, H, D)}: the CPU mechanisms for causal attention of packed captions."""
    from clipfast.nn import varlen
    from clipfast.ops.attention import attention_varlen_qkvpacked_ref

    lengths = torch.as_tensor(lengths)
    buckets = varlen.VarlenLayout(lengths, CONTEXT, kernel=False)
    cost, varlen.BUCKET_COST = varlen.BUCKET_COST, float("inf")
    one = varlen.VarlenLayout(lengths, CONTEXT, kernel=False)
    varlen.BUCKET_COST = cost
    seq = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    pos = torch.arange(len(seq))
    mask = (seq[:, None] == seq[None, :]) & (pos[:, None] >= pos[None, :])  # (T, T) block-diagonal causal

    def block_diagonal(qkv):
        q, k, v = qkv.permute(1, 2, 0, 3).unbind(0)  # (H, T, D)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(0, 1)

    def nested(qkv):
        offsets = buckets.cu_seqlens.long()
        q, k, v = (torch.nested.nested_tensor_from_jagged(t.contiguous(), offsets).transpose(1, 2)
                   for t in qkv.unbind(1))  # (B, H, j, D)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).values()

    return {"per_sequence": lambda qkv: attention_varlen_qkvpacked_ref(qkv, buckets.cu_seqlens, buckets.max_seqlen,
                                                                       causal=True),
            "one_bucket": lambda qkv: varlen.varlen_attention(qkv, one),
            f"dp_buckets({len(buckets.buckets)})": lambda qkv: varlen.varlen_attention(qkv, buckets),
            "block_diagonal_mask": block_diagonal, "nested_jagged": nested}


def attention_options(batch, rounds, texts=("coco", "coco_tail", "all77")):
    """Interleaved fwd+bwd time of each causal varlen attention mechanism (one text layer, H=8, D=64, fp32).
    ``coco_tail``: the coco mix with one 77-token caption. Prints one line per text."""
    for text in texts:
        lengths = caption_lengths(batch, "all77" if text == "all77" else "coco", torch.Generator().manual_seed(1))
        if text == "coco_tail":
            lengths[0] = CONTEXT
        fns = _attention_options(lengths)
        qkv = torch.randn(int(lengths.sum()), 3, 8, 64, requires_grad=True)
        grad = torch.randn(int(lengths.sum()), 8, 64)
        expected = fns["per_sequence"](qkv)
        failed = {}
        for name, fn in list(fns.items()):
            try:
                torch.testing.assert_close(fn(qkv), expected, rtol=1e-5, atol=1e-5)
            except Exception as error:  # report, don't time, a mechanism that fails here
                failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
                del fns[name]
        medians = harness.interleaved({name: (lambda fn=fn, qkv=qkv, grad=grad: fn(qkv).backward(grad)) for name, fn in fns.items()},
                                      rounds, warmup=0)
        print(f"attention fwd+bwd text={text} (T={int(lengths.sum())}, max {int(lengths.max())}) batch {batch}, "
              f"{rounds} rounds: " + ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in medians.items())
              + "".join(f"; {n} failed ({e})" for n, e in failed.items()), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description="clipfast vs open_clip, providers interleaved (CPU ratios)")
    parser.add_argument("--configs", default="ViT-B-32,RN50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="fwd_bwd,text", help=f"comma-separated, of {MODES}")
    parser.add_argument("--texts", default="coco,all77", help=f"comma-separated, of {TEXTS}")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma-separated, of {PROVIDERS}")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (one extra step each)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="process: CPU seconds of this process (use with OMP_NUM_THREADS=1 on a shared CPU)")
    parser.add_argument("--attention", action="store_true",
                        help="instead: compare the CPU mechanisms of causal varlen attention (one layer)")
    args = parser.parse_args(argv)
    if args.attention:
        return attention_options(args.batch, args.rounds)
    for config in args.configs.split(","):
        for text in args.texts.split(","):
            mean_len = (_inputs(_models(config)["open_clip"], args.batch, text)[1].argmax(-1) + 1).float().mean()
            for mode in args.modes.split(","):
                r = interleaved(config, args.batch, args.rounds, mode, text, args.memory, args.providers.split(","),
                                args.clock)
                sps = {name: args.batch / v["s"] for name, v in r.items()}
                ratios = [f"clipfast/{other} {sps['clipfast'] / sps[other]:.3f}x" for other in sps
                          if other != "clipfast" and "clipfast" in sps]
                mem = "".join(f", {n} peak {v['peak_mb']:.0f} MB" for n, v in r.items() if "peak_mb" in v)
                print(f"{config} {mode} text={text} (mean {mean_len:.1f} tokens) batch {args.batch} on {DEVICE} "
                      f"({torch.get_num_threads()} threads, {args.rounds} rounds, {args.clock} clock): "
                      + ", ".join(f"{n} {s:.2f} samples/s" for n, s in sps.items()) + "; " + ", ".join(ratios)
                      + mem, flush=True)


if __name__ == "__main__":
    main()
