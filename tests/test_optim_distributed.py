"""clipfast.optim.AdamW under DDP and FSDP2 (gloo, 2 CPU processes) takes the single-process steps bit for bit.

The problem makes the data-parallel gradient exactly the single-process one, so any difference is the
optimizer's: the loss is ``sum_i <p_i, c_i>`` (gradient ``c_i``), rank 0 gets ``1.5 G``, rank 1 ``0.5 G`` with
``G`` small integers times 2^-10, so the average ``G`` is exact in fp32 and bf16 alike, and the single process
gets ``G``. Checked for every state dtype, with stochastically rounded bf16 weights (under FSDP2 each shard
must draw the random bits of its elements' positions in the full tensor), fp16 state with masters (its
per-tensor scales must be maxed over the shards) and Adam's L2 decay; parameters have odd shapes, one of a
single element (rank 1's FSDP2 shard of it is empty). Then an FSDP2 run saved after 3 steps through
``full_state_dicts`` and loaded into a fresh sharded model continues exactly.
"""
import os
import traceback

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from clipfast import _extension
from clipfast.optim import Adam, AdamW
from clipfast.train.distributed import full_state_dicts, load_full_state_dicts
from tests._spawn import leave_worker, run_workers

# Everything a worker needs is imported above, before any process group exists (architecture.md).
SHAPES = [(33, 7), (50,), (9, 4, 3), (1,)]
STEPS = 5
CASES = {
    "fp32": (torch.float32, AdamW, dict(state_dtype="float32")),
    "bf16-state": (torch.float32, AdamW, dict(state_dtype="bfloat16")),
    "bf16-sr": (torch.bfloat16, AdamW, dict(state_dtype="bfloat16", stochastic_rounding=True)),
    "fp16-state-masters": (torch.bfloat16, AdamW, dict(state_dtype="float16", master_weights=True)),
    "adam-l2-fp16-state": (torch.float32, Adam, dict(state_dtype="float16")),
}


class Probe(torch.nn.Module):
    """Parameters of ``SHAPES``; ``forward(coeffs) = sum_i <p_i, c_i>`` (so ``dL/dp_i = c_i``)."""

    def __init__(self, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES])

    def forward(self, coeffs):
        return sum((p * c.to(p.dtype)).float().sum() for p, c in zip(self.w, coeffs))


def _coeffs(step, share):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randint(-31, 32, s, generator=g).float() * 2.0**-10 * share for s in SHAPES]


def _train(case, wrap=lambda m: m, share=1.0, steps=STEPS, start=0, state=None):
    dtype, opt_cls, kw = CASES[case]
    model = Probe(dtype)
    wrapped = wrap(model)
    opt = opt_cls(model.parameters(), lr=1e-2, weight_decay=0.1, seed=7, **kw)
    if state is not None:
        load_full_state_dicts(model, opt, *state)
    for t in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        wrapped(_coeffs(t, share)).backward()
        opt.step()
    return model, opt


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _check_equal(model, opt, ref_model, ref_opt, what):
    for i, (p, q) in enumerate(zip(model.parameters(), ref_model.parameters())):
        for name, a, b in [("param", _full(p.detach()), q.detach())] + [
                (k, _full(opt.state[p][k]), ref_opt.state[q][k]) for k in ("exp_avg", "exp_avg_sq", "master")
                if k in ref_opt.state[q]]:
            if not (a.dtype == b.dtype and torch.equal(a, b)):
                diff = (a.double() - b.double()).abs()
                raise AssertionError(f"{what}: {name} of param {i} {tuple(b.shape)} differs from the single process "
                                     f"at {(diff > 0).sum().item()} of {b.numel()} elements (max {diff.max().item():.3e})")


def _worker(rank, world, port, backends, errors):
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        share = 1.5 if rank == 0 else 0.5
        for backend in backends:
            os.environ["CLIPFAST_BACKEND"] = backend
            for case in CASES:
                ref = _train(case)  # the single-process run (no collectives)
                ddp = _train(case, lambda m: torch.nn.parallel.DistributedDataParallel(m), share)
                _check_equal(*ddp, *ref, f"{backend} {case} DDP rank {rank}")
                fsdp = _train(case, lambda m: fully_shard(m), share)
                _check_equal(*fsdp, *ref, f"{backend} {case} FSDP2 rank {rank}")
            for case in ("bf16-sr", "fp16-state-masters"):
                model, opt = _train(case, lambda m: fully_shard(m), share, steps=3)
                saved = [full_state_dicts(model, opt)]  # collective; the full dicts land on rank 0
                dist.broadcast_object_list(saved, src=0)
                resumed = _train(case, lambda m: fully_shard(m), share, steps=STEPS - 3, start=3, state=saved[0])
                _check_equal(*resumed, *_train(case), f"{backend} {case} FSDP2 resumed after 3 steps, rank {rank}")
    except Exception:  # noqa: BLE001 - reported to the parent with the traceback
        errors.put(f"rank {rank}: {traceback.format_exc()}")
    finally:
        leave_worker()


def test_ddp_and_fsdp2_equal_single_process():
    backends = ["reference"] + (["extension"] if _extension.load() is not None else [])  # the C++ CPU kernel
    run_workers(_worker, 2, backends)
