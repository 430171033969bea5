"""Optimizer step benchmarks: ``clipfast.optim.AdamW`` against torch's AdamW (and torchao / bitsandbytes where
importable) on a ViT-B/32-sized parameter set.

Parameter set: the shapes of ``clipfast.CLIP(**get_model_config("ViT-B-32")).visual`` (the image tower, 87.8M
parameters in 152 tensors; ``--params all`` takes the whole CLIP, 151.3M), random fp32 weights and gradients.
Providers (weights / m, v):

    torch_foreach   torch.optim.AdamW(foreach=True)                 fp32 / fp32
    torch_fused     torch.optim.AdamW(fused=True)                   fp32 / fp32
    clipfast_fp32   clipfast.optim.AdamW                            fp32 / fp32
    clipfast_bf16   clipfast.optim.AdamW(state_dtype=bfloat16)      fp32 / bf16 (SR)
    clipfast_bf16sr clipfast.optim.AdamW(bf16 state, SR weights)    bf16 (SR) / bf16 (SR)
    torchao_bf16sr  torchao.optim.AdamW(bf16_stochastic_round=True) bf16 (SR) / bf16     (if importable)
    bnb_8bit        bitsandbytes.optim.AdamW8bit                    fp32 / 8-bit blocks  (if importable)

``extra_info``: ``state_bytes_per_param`` and ``weights_bytes_per_param``: ``numel * element_size`` summed over
the optimizer's per-element state tensors (m, v, masters) and over the parameters, per parameter;
``per_tensor_state_bytes_per_param``: the rest of the state (``step`` counters, fp16 scales), per parameter;
``gb_per_s`` — bytes the step must move (read weights, grads, m, v; write weights, m, v, at each provider's dtypes) over the mean
time; ``backend`` — what clipfast selected.

Run: ``pytest bench/bench_fused_adam.py --benchmark-only --benchmark-group-by=param:shape``.

pytest-benchmark times one provider after the other; for ratios on a shared CPU interleave them step by step
(median over rounds, every provider's step on the same gradients):

    python bench/bench_fused_adam.py --rounds 7        # the ratios of issue 15's "Done means" and bytes/param
"""
import argparse

import pytest
import torch

import costs
import harness
from shapes import DEVICE, FUSED_ADAM
import clipfast
from clipfast import backend
from clipfast.optim import AdamW

PROVIDERS = ["torch_foreach", "torch_fused", "clipfast_fp32", "clipfast_bf16", "clipfast_bf16sr", "torchao_bf16sr",
             "bnb_8bit"]
HYPER = dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)


def param_shapes(config="ViT-B-32", part="visual"):
    """Parameter shapes of ``config``'s ``part`` ("visual" or "all"), read from a model on the meta device."""
    with torch.device("meta"):
        model = clipfast.CLIP(**clipfast.get_model_config(config))
    module = model.visual if part == "visual" else model
    return [tuple(p.shape) for p in module.parameters()]


def _make(provider, shapes, grads32, seed=0):
    """(optimizer, params) of ``provider`` with grads set (bf16 providers get bf16 copies of ``grads32``)."""
    g = torch.Generator().manual_seed(seed)
    bf16 = provider in ("clipfast_bf16sr", "torchao_bf16sr")
    dtype = torch.bfloat16 if bf16 else torch.float32
    params = [torch.randn(s, generator=g).mul_(0.02).to(DEVICE, dtype).requires_grad_() for s in shapes]
    for p, gr in zip(params, grads32):
        p.grad = gr.to(dtype) if bf16 else gr
    if provider == "torch_foreach":
        opt = torch.optim.AdamW(params, foreach=True, **HYPER)
    elif provider == "torch_fused":
        opt = torch.optim.AdamW(params, fused=True, **HYPER)
    elif provider == "clipfast_fp32":
        opt = AdamW(params, **HYPER)
    elif provider == "clipfast_bf16":
        opt = AdamW(params, state_dtype=torch.bfloat16, **HYPER)
    elif provider == "clipfast_bf16sr":
        opt = AdamW(params, state_dtype=torch.bfloat16, stochastic_rounding=True, **HYPER)
    elif provider == "torchao_bf16sr":
        opt = harness.require(provider).AdamW(params, bf16_stochastic_round=True, **HYPER)
    elif provider == "bnb_8bit":
        opt = harness.require(provider).optim.AdamW8bit(params, **HYPER)
    else:
        raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")
    return opt, params


def _grads(shapes, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).mul_(1e-3).to(DEVICE) for s in shapes]


def state_bytes(opt, per_element=True):
    """Bytes of the optimizer's state tensors: those shaped like their parameter (m, v, masters; bitsandbytes'
    8-bit moments) with ``per_element``, else the others (``step`` counters, scales, quantization maps)."""
    total = 0
    for p, s in opt.state.items():
        for t in s.values():
            if torch.is_tensor(t) and (t.shape == p.shape) == per_element:
                total += t.numel() * t.element_size()
    return total


def bytes_per_param(opt, params):
    """(state bytes / parameter, weight bytes / parameter, per-tensor state bytes / parameter), measured from
    the tensors after a step."""
    n = sum(p.numel() for p in params)
    return (state_bytes(opt) / n, sum(p.numel() * p.element_size() for p in params) / n,
            state_bytes(opt, per_element=False) / n)


@pytest.mark.parametrize("shape", list(FUSED_ADAM))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_fused_adam_step(timed, benchmark, provider, shape):
    shapes = param_shapes(*FUSED_ADAM[shape])
    opt, params = _make(provider, shapes, _grads(shapes))
    opt.step()  # allocates the state
    state, weights, other = bytes_per_param(opt, params)
    n = sum(p.numel() for p in params)
    timed(opt.step)
    _, moved = costs.fused_adam(n, weights, params[0].grad.element_size(), state)
    harness.record(benchmark, bytes_moved=moved, state_bytes_per_param=state, weights_bytes_per_param=weights,
                   per_tensor_state_bytes_per_param=other, n_params=n,
                   backend=backend.describe(backend.select("fused_adam", DEVICE), DEVICE))


def interleaved(providers, shapes, rounds):
    """Median seconds per step of each provider, stepping them in turn (order reversed every other round) after
    a warm-up step each. Returns ({provider: median_s}, {provider: (state B/param, weights B/param)})."""
    grads = _grads(shapes)
    runs = {}
    for name in providers:
        try:
            runs[name] = _make(name, shapes, grads)
        except pytest.skip.Exception as e:
            print(f"{name}: skipped ({e})")
    med = harness.interleaved({name: opt.step for name, (opt, _) in runs.items()}, rounds)
    return med, {name: bytes_per_param(*runs[name]) for name in runs}


def main(argv=None):
    parser = argparse.ArgumentParser(description="AdamW steps on a ViT-B/32 parameter set, interleaved (CPU ratios)")
    parser.add_argument("--params", choices=("visual", "all"), default="visual")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    shapes = param_shapes("ViT-B-32", args.params)
    n = sum(torch.Size(s).numel() for s in shapes)
    med, sizes = interleaved(args.providers.split(","), shapes, args.rounds)
    print(f"ViT-B-32 {args.params}: {n / 1e6:.1f}M params in {len(shapes)} tensors on {DEVICE} "
          f"({torch.get_num_threads()} threads), median of {args.rounds} interleaved steps; "
          f"clipfast backend {backend.describe(backend.select('fused_adam', DEVICE), DEVICE)}")
    for name, t in med.items():
        state, weights, other = sizes[name]
        print(f"  {name:<16} {t * 1e3:8.1f} ms   state {state:.2f} B/param (+{other:.1e} per-tensor)   "
              f"weights + state {weights + state:.2f} B/param")
    ratios = [("clipfast_bf16", "torch_fused", 0.8), ("clipfast_bf16", "torch_foreach", 0.5),
              ("clipfast_fp32", "torch_fused", 1.0), ("clipfast_bf16sr", "torch_fused", None)]
    for ours, theirs, target in ratios:
        if ours in med and theirs in med:
            goal = f" (target <= {target})" if target else ""
            print(f"  {ours} / {theirs}: {med[ours] / med[theirs]:.3f}x{goal}")


if __name__ == "__main__":
    main()
