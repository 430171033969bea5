"""quick_gelu benchmarks: fused bias + QuickGELU against the unfused ways of computing ``q(x + b)``.

Providers: ``clipfast`` (``clipfast.ops.quick_gelu``, whatever backend it selects here), ``reference``
(eager ``quick_gelu_ref``: ``z = x + b`` then ``z * sigmoid(1.702 z)``), ``torch_compile`` (the same
reference under ``torch.compile``), ``open_clip`` (open_clip's ``QuickGELU`` module after its own bias
add). Modes: ``fwd`` and ``fwd_bwd`` (gradients of x and b). Shapes: ``bench/shapes.py`` (CPU-sized here).

``extra_info``: ``peak_mb`` — peak memory added by one call, outputs included (CUDA: the caching
allocator's peak; CPU on Linux: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above
its RSS before the call, with glibc's mmap threshold at 64 KiB during the measurement so freed tensors
leave RSS, then 32 MiB (trim 64 MiB) so later timings reuse the heap as glibc's steady state does);
``gb_per_s`` — the minimum bytes each mode must move (fwd: read x, write y; fwd_bwd: + read g, x,
write dx) over the mean time; ``backend`` — what clipfast selected.

Run: ``pytest bench/bench_quick_gelu.py --benchmark-only`` (add ``--benchmark-group-by=param:shape,param:mode``
to see providers side by side).
"""
import ctypes
import sys

import pytest
import torch

from shapes import DEVICE, ON_GPU, QUICK_GELU  # bench/ is on sys.path (its conftest.py)
from clipfast import backend
from clipfast.ops.quick_gelu import quick_gelu, quick_gelu_ref

DTYPES = [torch.bfloat16, torch.float32] if ON_GPU else [torch.float32]
PROVIDERS = ["clipfast", "reference", "torch_compile", "open_clip"]
MODES = ["fwd", "fwd_bwd"]
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def _open_clip_quick_gelu():
    open_clip = pytest.importorskip("open_clip")
    act = open_clip.transformer.QuickGELU()
    return lambda x, b: act(x + b)


_COMPILED = {}


def _provider_fn(provider):
    if provider == "clipfast":
        return quick_gelu
    if provider == "reference":
        return quick_gelu_ref
    if provider == "torch_compile":
        if "ref" not in _COMPILED:
            _COMPILED["ref"] = torch.compile(quick_gelu_ref, dynamic=False)
        return _COMPILED["ref"]
    return _open_clip_quick_gelu()


def _step(fn, mode, x, b, g):
    if mode == "fwd":
        with torch.no_grad():
            return fn(x, b)
    y = fn(x, b)
    return torch.autograd.grad(y, (x, b), g)


def _status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_bytes(call):
    """Peak memory added while ``call()`` runs (its outputs included), or None where it can't be read."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = call()
        torch.cuda.synchronize()
        del out
        return torch.cuda.max_memory_allocated() - base
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 64 * 1024)
    libc.malloc_trim(0)  # hand free heap memory back first, so the baseline RSS holds live data only
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_bytes("VmRSS")
        out = call()
        peak = _status_bytes("VmHWM")
        del out
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)
    return peak - base


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", list(QUICK_GELU))
def test_quick_gelu(timed, benchmark, provider, mode, dtype, shape):
    rows, cols = QUICK_GELU[shape]
    x = torch.randn(rows, cols, device=DEVICE, dtype=dtype, requires_grad=mode == "fwd_bwd")
    b = torch.randn(cols, device=DEVICE, dtype=dtype, requires_grad=mode == "fwd_bwd")
    g = torch.randn(rows, cols, device=DEVICE, dtype=dtype)
    fn = _provider_fn(provider)
    _step(fn, mode, x, b, g)  # warm-up: compile, lazy init
    timed(_step, fn, mode, x, b, g)
    peak = peak_bytes(lambda: _step(fn, mode, x, b, g))
    elem = x.element_size()
    moved = rows * cols * elem * (2 if mode == "fwd" else 5)
    benchmark.extra_info.update(
        peak_mb=None if peak is None else round(peak / 2**20, 1),
        gb_per_s=round(moved / benchmark.stats["mean"] / 1e9, 2),
        backend=backend.select("quick_gelu", DEVICE) if provider == "clipfast" else provider,
        threads=torch.get_num_threads(),
    )
