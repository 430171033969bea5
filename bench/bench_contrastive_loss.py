"""CLIP contrastive loss, forward + backward: clipfast (tiled/chunked) vs OpenCLIP ``ClipLoss`` vs a naive
full-matrix loss. Time, and peak extra memory with the gradients included.

``pytest bench/bench_contrastive_loss.py --benchmark-only``: shapes ``CONTRASTIVE_LOSS`` of ``bench/shapes.py``
(CPU: N ∈ {1024, 4096}, d = 512 fp32; GPU: N ∈ {8192, 32768} bf16); time by pytest-benchmark; ``peak_mb`` from
``measure_here`` — in a fresh process on CPU (``harness.in_fresh_process``), in this one on CUDA.

Memory sweep (``clipfast bench`` runs it at ``LOSS_MEMORY_NS``; heavy by hand: OpenCLIP needs ~17 GB at
N = 32768 and clipfast at N = 262144 runs ~30 min on 2 cores):

    flock /tmp/clipfast-heavy.lock python bench/bench_contrastive_loss.py --ns 1024,32768,262144 \
        --providers clipfast,open_clip --max-n 32768 --out bench/results/contrastive_loss.json
    python bench/plot_contrastive_loss.py bench/results/contrastive_loss.json    # → PNG next to the JSON

``measure_here`` builds the inputs, warms up on a small problem, then measures one forward + backward with
``harness.peak_memory``: the loss's extra memory, the gradients of both feature tensors and of logit_scale
(2·N·d·element bytes of them) included. Beside each clipfast row the sweep adds ``count_triton``: the GPU
(Triton) path's peak in bf16, counted from its allocations, not measured.
"""
import argparse
import json
import os
import time

import pytest
import torch
import torch.nn.functional as F

import costs
import harness
from shapes import CONTRASTIVE_LOSS, DEVICE, ON_GPU

PROVIDERS = ("clipfast", "open_clip", "naive")
DTYPE = torch.bfloat16 if ON_GPU else torch.float32


def inputs(n, d, dtype=DTYPE, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    i = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device, dtype).requires_grad_()
    t = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device, dtype).requires_grad_()
    return i, t, torch.tensor(1 / 0.07, device=device, requires_grad=True)  # logit_scale at CLIP's init, exp'd


def loss_fn(provider):
    if provider == "clipfast":
        from clipfast.ops import contrastive_loss

        return contrastive_loss
    if provider == "open_clip":
        return harness.require("open_clip").loss.ClipLoss()
    if provider == "naive":
        from clipfast.ops import contrastive_loss_ref

        return contrastive_loss_ref  # one N×N matmul, CE of it and of its transpose
    raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")


def fwd_bwd(fn, i, t, s):
    for x in (i, t, s):
        x.grad = None
    loss = fn(i, t, s)
    loss.backward()
    return loss


def measure_here(provider, n, d=512, dtype=None, device=None):
    """Seconds and peak extra bytes of one forward + backward in THIS process (a fresh one on CPU)."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or DTYPE)
    device = torch.device(device or DEVICE)
    fn = loss_fn(provider)
    fwd_bwd(fn, *inputs(256, d, dtype, device))  # warm-up: BLAS/OpenMP buffers, lazy imports, kernel compiles
    i, t, s = inputs(n, d, dtype, device)
    out = {}

    def call():
        start = time.perf_counter()
        loss = fwd_bwd(fn, i, t, s)
        harness.synchronize(device)
        out["seconds"] = time.perf_counter() - start
        out["loss"] = float(loss.detach())
        return loss

    peak = harness.peak_memory(call, device)
    flops, _ = costs.contrastive_loss(n, d, i.element_size(), provider)
    return dict(out, provider=provider, n=n, d=d, dtype=str(dtype).removeprefix("torch."), device=str(device),
                peak_extra_bytes=peak, grad_bytes=2 * n * d * i.element_size(), gflop_per_s=flops / out["seconds"] / 1e9,
                threads=torch.get_num_threads())


COUNTED = "clipfast triton bf16 (counted)"


def count_triton(n, d=512, dtype=torch.bfloat16):
    """The Triton path's peak extra bytes (forward + backward, gradients included, as ``measure_here``),
    counted from its allocations on meta tensors (``clipfast.ops.contrastive_loss.triton_memory``): no GPU,
    nothing runs, so ``seconds`` is None. Peak: the forward's, or the saved LSEs + the backward's."""
    from clipfast.ops.contrastive_loss import triton_memory

    fwd, bwd = triton_memory(n, d, dtype)
    return dict(provider=COUNTED, n=n, d=d, dtype=str(dtype).removeprefix("torch."), device="meta (counted)",
                peak_extra_bytes=max(fwd.peak, fwd.returned + bwd.peak), grad_bytes=2 * n * d * dtype.itemsize,
                seconds=None)


def measure(provider, n, d=512, timeout=None):
    """``measure_here``: in a fresh interpreter on CPU (peak RSS), in this process on CUDA."""
    if DEVICE.type == "cuda":
        return measure_here(provider, n, d)
    return harness.in_fresh_process("bench_contrastive_loss:measure_here", timeout=timeout, provider=provider, n=n, d=d)


@pytest.mark.parametrize("shape", list(CONTRASTIVE_LOSS))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_contrastive_loss_fwd_bwd(timed, benchmark, provider, shape):
    n, d = CONTRASTIVE_LOSS[shape]
    fn = loss_fn(provider)
    i, t, s = inputs(n, d)
    timed(fwd_bwd, fn, i, t, s, rounds=3)
    del i, t, s
    mem = measure(provider, n, d)
    flops, moved = costs.contrastive_loss(n, d, DTYPE.itemsize, provider)
    harness.record(benchmark, flops=flops, bytes_moved=moved, peak_bytes=mem.get("peak_extra_bytes"), n=n, d=d,
                   memory_error=mem.get("error"))


def sweep(ns, providers, d=512, max_n=32768, clipfast_max_n=262144, out=None, log=print):
    """``measure`` each (N, provider), skipping N above ``max_n`` (``clipfast_max_n`` for clipfast), and with
    clipfast also ``count_triton`` at every N; rows are written to ``out`` (JSON) after each measurement."""
    rows = []
    for n in ns:
        for p in providers:
            if n > (clipfast_max_n if p == "clipfast" else max_n):
                continue
            rows.append(measure(p, n, d))
            if p == "clipfast":
                rows.append(count_triton(n, d))
            log(json.dumps(rows[-1]))
            if out:
                os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
                with open(out, "w") as f:
                    json.dump(rows, f, indent=1)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description="contrastive-loss time and peak memory vs N, each in a fresh process")
    ap.add_argument("--ns", default="1024,2048,4096,8192,16384,32768,65536,131072,262144")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--max-n", type=int, default=32768, help="largest N for open_clip / naive")
    ap.add_argument("--clipfast-max-n", type=int, default=262144)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    sweep([int(v) for v in args.ns.split(",")], args.providers.split(","), args.d, args.max_n, args.clipfast_max_n,
          args.out)


if __name__ == "__main__":
    main()
