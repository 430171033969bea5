"""Distributed losses on gloo (2 and 4 processes): every mode equals the single-process loss on the
concatenated batch, with gradients after DDP-style averaging (features: local grad / P; logit_scale and
logit_bias: mean over ranks) matching to 1e-5 relative (fp32) — or, where fp32 cannot reach that (d logit_scale
is a sum that cancels to ~1e-4 of its terms), as close as twice the single-process fp32 loss's own error
against float64 (flash-attention's rule, as in tests/numerics.py); OpenCLIP's flag combinations give the
same gradients as OpenCLIP's own ClipLoss / SigLipLoss on the same ranks.

One spawn per world size covers all modes and both losses (spawning dominates the time).
"""
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import clipfast
from tests._spawn import leave_worker, run_workers

# Everything a worker needs is imported here, before any process group exists (architecture.md: a gloo
# thread still alive at interpreter exit aborts the worker).
open_clip = pytest.importorskip("open_clip")

B, D = 12, 24  # per-rank batch, feature size
CHUNK = 5  # small tiles: several per block, ragged edges


def _batch(world):
    g = torch.Generator().manual_seed(1234)
    n = world * B
    i = F.normalize(torch.randn(n, D, generator=g), dim=-1)
    t = F.normalize(i + 0.5 * torch.randn(n, D, generator=g), dim=-1)
    return i, t, torch.tensor(1 / 0.07), torch.tensor(-3.0)


def _grads(fn, inputs):
    x = [v.detach().clone().requires_grad_() for v in inputs]
    loss = fn(*x)
    loss.backward()
    return [loss.detach()] + [v.grad for v in x]


def _max_err(got, want):
    return (got.double() - want.double()).abs().max().item()


def _rel_close(got, want, what, rtol=1e-5, single32=None):
    """max|got − want| ≤ rtol·max|want|, or ≤ 2·max|single32 − want| (single32: fp32 single-process value)."""
    err = _max_err(got, want)
    ref = max(want.double().abs().max().item(), 1e-30)
    fp32_err = 0.0 if single32 is None else _max_err(single32, want)
    assert err <= max(rtol * ref, 2 * fp32_err), (
        f"{what}: max |diff| {err:.3e} > {rtol:.0e} x max |ref| {ref:.3e} "
        f"and > 2 x single-process fp32's {fp32_err:.3e}")


def _check_ddp(rank, world, local, single, single32, what):
    """Average like DDP and compare with the single-process run on the whole batch (float64 ``single``,
    float32 ``single32``)."""
    loss, gi, gt, *gs = local
    loss_avg = loss.clone()
    dist.all_reduce(loss_avg)
    _rel_close(loss_avg / world, single[0], f"{what}: mean loss", single32=single32[0])
    rows = slice(rank * B, (rank + 1) * B)
    _rel_close(gi / world, single[1][rows], f"{what}: d image_features", single32=single32[1][rows])
    _rel_close(gt / world, single[2][rows], f"{what}: d text_features", single32=single32[2][rows])
    for k, g in enumerate(gs):  # replicated parameters: DDP sums and divides by P
        g = g.clone()
        dist.all_reduce(g)
        _rel_close(g / world, single[3 + k], f"{what}: d {'logit_scale' if k == 0 else 'logit_bias'}",
                   single32=single32[3 + k])


def _worker(rank, world, port, errors):
    os.environ["CLIPFAST_BACKEND"] = "reference"
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        i, t, s, bias = _batch(world)
        rows = slice(rank * B, (rank + 1) * B)
        li, lt = i[rows], t[rows]
        # The single-process oracle on the concatenated batch, in float64.
        single_clip = _grads(lambda *x: clipfast.ClipLoss()(*x), [v.double() for v in (i, t, s)])
        single_sig = _grads(lambda *x: clipfast.SigLipLoss()(*x), [v.double() for v in (i, t, s, bias)])
        single_clip32 = _grads(lambda *x: clipfast.ClipLoss()(*x), [i, t, s])
        single_sig32 = _grads(lambda *x: clipfast.SigLipLoss()(*x), [i, t, s, bias])
        kw = dict(rank=rank, world_size=world)
        # Modes whose DDP-averaged gradients equal the single-process ones.
        cases = [
            ("ClipLoss gather", lambda: clipfast.ClipLoss(True, True, chunk_size=CHUNK, **kw), False),
            ("ClipLoss ring", lambda: clipfast.ClipLoss(mode="ring", chunk_size=CHUNK, **kw), False),
            ("SigLipLoss gather", lambda: clipfast.SigLipLoss(dist_impl="gather", chunk_size=CHUNK, **kw), True),
            ("SigLipLoss ring", lambda: clipfast.SigLipLoss(chunk_size=CHUNK, **kw), True),
        ]
        for what, make, sig in cases:
            inputs = (li, lt, s, bias) if sig else (li, lt, s)
            local = _grads(lambda *x, make=make: make()(*x), inputs)
            oracles = (single_sig, single_sig32) if sig else (single_clip, single_clip32)
            _check_ddp(rank, world, local, *oracles, what)
        # OpenCLIP's flag combinations: same loss and gradients as OpenCLIP's own module, rank by rank.
        for flags in [(False, False), (False, True), (True, False), (True, True)]:
            ours = _grads(clipfast.ClipLoss(*flags, chunk_size=CHUNK, **kw), (li, lt, s))
            theirs = _grads(open_clip.loss.ClipLoss(*flags, **kw), (li, lt, s))
            for k, (o, r) in enumerate(zip(ours, theirs)):
                _rel_close(o, r, f"ClipLoss{flags} vs open_clip, output {k}", rtol=2e-5)
        # SigLIP: loss and feature gradients rank by rank; the ring hands every rank the mean share of
        # d scale / d bias, so those are compared after DDP's sum.
        ours = _grads(lambda *x: clipfast.SigLipLoss(chunk_size=CHUNK, **kw)(*x), (li, lt, s, bias))
        theirs = _grads(lambda *x: open_clip.loss.SigLipLoss(**kw)(*x), (li, lt, s, bias))
        for k, (o, r) in enumerate(zip(ours, theirs)):
            if k >= 3:
                o, r = o.clone(), r.clone()
                dist.all_reduce(o)
                dist.all_reduce(r)
            _rel_close(o, r, f"SigLipLoss vs open_clip, output {k}", rtol=2e-5)
    except Exception:  # noqa: BLE001 - reported to the parent with the traceback
        errors.put(f"rank {rank}: {traceback.format_exc()}")
    finally:
        leave_worker()


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_modes_match_single_process(world):
    run_workers(_worker, world)
