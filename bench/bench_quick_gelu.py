"""quick_gelu benchmarks: fused bias + QuickGELU against the unfused ways of computing ``q(x + b)``.

Providers: ``clipfast`` (``clipfast.ops.quick_gelu``, whatever backend it selects here), ``reference``
(eager ``quick_gelu_ref``: ``z = x + b`` then ``z * sigmoid(1.702 z)``), ``torch_compile`` (the same
reference under ``torch.compile``), ``open_clip`` (open_clip's ``QuickGELU`` module after its own bias
add). Modes: ``fwd`` and ``fwd_bwd`` (gradients of x and b). Shapes: ``QUICK_GELU`` in ``bench/shapes.py``.

``extra_info`` (``harness.record``): ``peak_mb`` — peak memory added by one call, outputs included
(``harness.peak_memory``); ``bytes`` / ``gb_per_s`` — the minimum bytes each mode must move (``costs.quick_gelu``)
over the mean time; ``backend`` — what clipfast selected.

Run: ``pytest bench/bench_quick_gelu.py --benchmark-only`` (add ``--benchmark-group-by=param:shape,param:mode``
to see providers side by side).
"""
import pytest
import torch

import costs
import harness
from shapes import DEVICE, ON_GPU, QUICK_GELU
from clipfast import backend
from clipfast.ops.quick_gelu import quick_gelu, quick_gelu_ref

DTYPES = ["bfloat16", "float32"] if ON_GPU else ["float32"]  # names: pytest-benchmark's JSON keeps strings
PROVIDERS = ["clipfast", "reference", "torch_compile", "open_clip"]
MODES = ["fwd", "fwd_bwd"]
_COMPILED = {}


def provider_fn(provider):
    """``fn(x, b)`` computing QuickGELU(x + b) the way ``provider`` does."""
    if provider == "clipfast":
        return quick_gelu
    if provider == "reference":
        return quick_gelu_ref
    if provider == "torch_compile":
        if "ref" not in _COMPILED:
            _COMPILED["ref"] = torch.compile(quick_gelu_ref, dynamic=False)
        return _COMPILED["ref"]
    if provider == "open_clip":
        act = harness.require("open_clip").transformer.QuickGELU()
        return lambda x, b: act(x + b)
    raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")


def step(fn, mode, x, b, g):
    if mode == "fwd":
        with torch.no_grad():
            return fn(x, b)
    y = fn(x, b)
    return torch.autograd.grad(y, (x, b), g)


def inputs(rows, cols, dtype, mode):
    x = torch.randn(rows, cols, device=DEVICE, dtype=dtype, requires_grad=mode == "fwd_bwd")
    b = torch.randn(cols, device=DEVICE, dtype=dtype, requires_grad=mode == "fwd_bwd")
    return x, b, torch.randn(rows, cols, device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", list(QUICK_GELU))
def test_quick_gelu(timed, benchmark, provider, mode, dtype, shape):
    rows, cols = QUICK_GELU[shape]
    x, b, g = inputs(rows, cols, getattr(torch, dtype), mode)
    fn = provider_fn(provider)
    step(fn, mode, x, b, g)  # warm-up: compile, lazy init
    timed(step, fn, mode, x, b, g)
    flops, moved = costs.quick_gelu(rows, cols, x.element_size(), mode)
    harness.record(benchmark, bytes_moved=moved, peak_bytes=harness.peak_memory(lambda: step(fn, mode, x, b, g)),
                   backend=backend.select("quick_gelu", DEVICE) if provider == "clipfast" else provider)
