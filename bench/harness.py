"""The one benchmark harness every ``bench/bench_*.py`` uses (Liger-Kernel's ``benchmark/scripts/utils.py`` is
the model): timing with CUDA synchronised inside the timed function, one peak-memory helper, fresh-process
measurements, providers that skip when their package is missing, FLOP/s · GB/s · peak memory in
``benchmark.extra_info``, and interleaved side-by-side timings for ratios on a noisy shared CPU.

    timed(benchmark, fn, *args)                    # pytest-benchmark, CUDA synced inside; conftest's ``timed``
    record(benchmark, flops=..., bytes_moved=..., peak_bytes=...)   # gflop_per_s, gb_per_s, peak_mb, ...
    peak_memory(call)                              # bytes added while call() runs (CUDA allocator / CPU RSS)
    in_fresh_process("bench_contrastive_loss:measure_here", provider="clipfast", n=4096)
    interleaved({"a": fa, "b": fb}, rounds=5)      # {"a": median s, "b": median s}, order alternated

Memory, CPU: a process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) above its RSS before
the call, with glibc's mmap threshold at 64 KiB during the measurement so freed tensors leave RSS (then
32 MiB / trim 64 MiB, glibc's steady state, so later timings reuse the heap). Where earlier work in the same
process could hide the peak (allocator caches, lazy imports), measure in a fresh process. CUDA: the caching
allocator's ``max_memory_allocated`` above ``memory_allocated`` before the call.
"""
import ctypes
import importlib
import json
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

from clipfast import backend

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

# Providers that need a package beyond clipfast/torch, and the module whose import proves it is usable.
OPTIONAL_PROVIDERS = {
    "open_clip": "open_clip",
    "torchao_bf16sr": "torchao.optim",
    "bnb_8bit": "bitsandbytes",
    "liger": "liger_kernel",
    "xformers": "xformers.ops",
    "flash_attn": "flash_attn",
    "apex": "apex",
    "inf_cl": "inf_cl",
}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def synchronize(device=None):
    """Wait for queued CUDA work (no-op on CPU)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def require(provider):
    """Import what ``provider`` needs (``pytest.skip`` when it is not installed); returns the module or None."""
    module = OPTIONAL_PROVIDERS.get(provider)
    return pytest.importorskip(module) if module else None


# SDPA backends by provider name (``torch.nn.attention.SDPBackend`` members), for the attention benches.
SDPA = {"sdpa_math": "MATH", "sdpa_flash": "FLASH_ATTENTION", "sdpa_efficient": "EFFICIENT_ATTENTION",
        "sdpa_cudnn": "CUDNN_ATTENTION"}


def kernel_skip_reason(op, provider, sdpa_backends=()):
    """Why ``provider`` of ``op`` is not timed on this device, or None. ``clipfast``: its Triton kernels only
    count on CUDA (on CPU they run in the interpreter, or not at all); an SDPA backend other than ``sdpa_math``
    (``sdpa_backends``: the provider names that are SDPA backends) is CUDA-only."""
    device = _device()
    if provider == "clipfast":
        chosen = backend.select(op, device)
        if chosen != "triton":
            return f"clipfast's {op} runs {chosen} here: {backend.explain(op, device)['triton']}"
        if device.type != "cuda":
            return "Triton kernels on CPU run in the interpreter (correctness only, not a timing path)"
    if provider in sdpa_backends and provider != "sdpa_math" and device.type != "cuda":
        return f"{provider}: a CUDA-only SDPA backend"
    return None


def available(provider):
    """Whether ``provider``'s optional package imports here."""
    module = OPTIONAL_PROVIDERS.get(provider)
    if module is None:
        return True
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - an installed package that fails to import (wrong torch) is unusable too
        return False


SLOW_CALL_S = 0.25  # a first call slower than this: fixed rounds instead of pytest-benchmark's calibration
SLOW_ROUNDS = 2 if not torch.cuda.is_available() else 5


def timed(benchmark, fn, *args, rounds=None, warmup_rounds=1, **kwargs):
    """Benchmark ``fn(*args, **kwargs)`` with CUDA synchronised inside the timed function; returns its result.

    ``rounds`` fixes the rounds, after ``warmup_rounds`` untimed calls. ``rounds=None``: one untimed call first
    (the warm-up); if it took more than ``SLOW_CALL_S``, ``SLOW_ROUNDS`` rounds, else pytest-benchmark
    calibrates (at least its ``--benchmark-min-rounds``), so slow steps keep the suite's time bounded.
    """
    def call():
        out = fn(*args, **kwargs)
        synchronize()
        return out

    if rounds is None:
        start = time.perf_counter()
        call()
        if time.perf_counter() - start <= SLOW_CALL_S:
            return benchmark(call)
        rounds, warmup_rounds = SLOW_ROUNDS, 0
    return benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)


def mean_seconds(benchmark):
    """Mean seconds of the timed rounds, or None when benchmarking is disabled (``--benchmark-disable``)."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.mean


def record(benchmark, *, flops=None, bytes_moved=None, peak_bytes=None, samples=None, **extra):
    """Put the standard figures into ``benchmark.extra_info`` (after timing):

    ``flops`` and ``gflop_per_s`` (FLOPs of one call), ``bytes`` and ``gb_per_s`` (minimum bytes one call
    must move), ``peak_mb`` (``peak_bytes`` / 2^20), ``samples_per_s`` (``samples`` per call), ``threads``,
    ``device`` and any ``extra`` key. Rates are left out when benchmarking is disabled.
    """
    info = benchmark.extra_info
    seconds = mean_seconds(benchmark)
    info.update(extra, threads=torch.get_num_threads(), device=str(_device()))
    if flops is not None:
        info["flops"] = float(flops)
        if seconds:
            info["gflop_per_s"] = flops / seconds / 1e9
    if bytes_moved is not None:
        info["bytes"] = float(bytes_moved)
        if seconds:
            info["gb_per_s"] = bytes_moved / seconds / 1e9
    if peak_bytes is not None:
        info["peak_mb"] = peak_bytes / 2**20
    if samples is not None and seconds:
        info["samples_per_s"] = samples / seconds
    return info


def _device():
    from shapes import DEVICE  # bench/ is on sys.path (conftest.py, or in_fresh_process)

    return DEVICE


def _status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_memory(call, device=None, *, tensors=False):
    """Peak memory (bytes) added while ``call()`` runs, its outputs included, or None where it can't be read.

    CUDA: ``max_memory_allocated`` above the allocated bytes before the call. CPU (Linux): peak RSS above the
    RSS before the call (see the module docstring); call it in a fresh process when earlier work matters.
    ``tensors=True`` on CPU: the peak of live tensor bytes instead (all of them, parameters included), from
    the torch profiler's memory timeline — exact, slow, and free of the allocator's caching.
    """
    device = torch.device(device) if device is not None else _device()
    if tensors and device.type != "cuda":
        from torch.profiler import ProfilerActivity, profile  # the profiler's memory timeline: this mode only
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
            call()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(device)
        return max((sum(s) for s in sizes), default=0)
    if device.type == "cuda":
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
    libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024)
    libc.malloc_trim(0)  # hand free heap memory back first, so the baseline RSS holds live data only
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_bytes("VmRSS")
        out = call()
        peak = _status_bytes("VmHWM")
        del out
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)
    return peak - base


def in_fresh_process(target, timeout=None, **kwargs):
    """Run ``module:function(**kwargs)`` (a bench/ module) in a fresh interpreter and return its dict result
    (JSON-serialisable), or ``{"error": ...}``. The child runs the plain CPU path (no TRITON_INTERPRET)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    root = os.path.dirname(BENCH_DIR)
    env["PYTHONPATH"] = os.pathsep.join([BENCH_DIR, root, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, os.path.join(BENCH_DIR, "harness.py"), target, json.dumps(kwargs)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(kwargs, error=f"timeout after {timeout} s")
    if out.returncode != 0:
        return dict(kwargs, error=(out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved(fns, rounds, warmup=1, clock=time.perf_counter):
    """Median seconds per call of each ``fns[name]()``, calling them in turn (order reversed every other
    round, CUDA synchronised after each) so a shared machine's drift lands on every provider alike.
    ``clock=time.process_time`` counts this process's CPU seconds (with one thread on a shared CPU, not the
    time spent waiting for a core)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize()
    times = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            start = clock()
            fns[name]()
            synchronize()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _main(argv):
    """``python bench/harness.py module:function JSON_KWARGS``: print the function's dict as one JSON line."""
    module, function = argv[0].split(":")
    result = getattr(importlib.import_module(module), function)(**json.loads(argv[1]))
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])
