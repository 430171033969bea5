"""CLIP contrastive loss, forward + backward: clipfast (chunked) vs OpenCLIP ``ClipLoss`` vs a naive
full-matrix loss. Time and peak extra memory (gradients included), each measured in its own process.

Default (CI-sized, seconds): ``pytest bench/bench_contrastive_loss.py`` — N ∈ {1024, 4096}, d = 512 fp32;
time by pytest-benchmark in this process, peak memory from a fresh subprocess in ``extra_info``.
Set ``CLIPFAST_BENCH_FULL=1`` to parametrize the full N list instead.

Full sweep (heavy: OpenCLIP needs ~17 GB at N = 32768; clipfast at N = 262144 runs ~30 min on 2 cores):

    flock /tmp/clipfast-heavy.lock python -m bench.bench_contrastive_loss --sweep \
        [--providers clipfast,open_clip,naive] [--max-n 32768] [--clipfast-max-n 262144] \
        [--out bench/results/contrastive_loss.json]
    python -m bench.plot_contrastive_loss bench/results/contrastive_loss.json   # → PNG next to the JSON

Each (provider, N) runs in a fresh interpreter (``--one PROVIDER N``), which builds the inputs, warms
up BLAS on a small problem, resets the peak-RSS counter (``/proc/self/clear_refs``), times one
forward + backward and reports VmHWM − RSS-after-inputs: the loss's extra memory, with the gradients
of both feature tensors and of logit_scale (2·N·d·4 bytes of them).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

D = 512
PROVIDERS = ("clipfast", "open_clip", "naive")
CI_NS = (1024, 4096)
FULL_NS = (1024, 2048, 4096, 8192, 16384, 32768)
CLIPFAST_ONLY_NS = (65536, 131072, 262144)


def _inputs(n, d=D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    i = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(dtype).requires_grad_()
    t = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(dtype).requires_grad_()
    return i, t, torch.tensor(1 / 0.07, requires_grad=True)  # logit_scale at CLIP's init, exponentiated


def _loss_fn(provider):
    if provider == "clipfast":
        from clipfast.ops.contrastive_loss import contrastive_loss

        return contrastive_loss
    if provider == "open_clip":
        import open_clip

        return open_clip.loss.ClipLoss()
    if provider == "naive":
        from clipfast.ops.contrastive_loss import contrastive_loss_ref

        return contrastive_loss_ref  # one N×N matmul, CE of it and of its transpose
    raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")


def fwd_bwd(fn, i, t, s):
    for x in (i, t, s):
        x.grad = None
    loss = fn(i, t, s)
    loss.backward()
    return loss


def flops(n, d=D, provider="clipfast"):
    """Matmul FLOPs of forward + backward: 4 N²d products for clipfast, 6 for OpenCLIP, 3 for naive."""
    return {"clipfast": 4, "open_clip": 6, "naive": 3}[provider] * 2 * n * n * d


def _rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_here(provider, n, d=D):
    """Time and peak extra memory of one forward + backward in THIS process (call in a fresh one)."""
    fn = _loss_fn(provider)
    fwd_bwd(fn, *_inputs(256, d))  # warm-up: BLAS/OpenMP buffers, lazy imports
    i, t, s = _inputs(n, d)
    base = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    loss = fwd_bwd(fn, i, t, s)
    seconds = time.perf_counter() - start
    peak = _rss("VmHWM") - base
    return {"provider": provider, "n": n, "d": d, "seconds": seconds, "peak_extra_bytes": peak,
            "grad_bytes": 2 * n * d * 4, "loss": float(loss.detach()), "gflops": flops(n, d, provider) / seconds / 1e9,
            "threads": torch.get_num_threads()}


def measure(provider, n, d=D, timeout=None):
    """``measure_here`` in a fresh interpreter; returns its dict (or {"error": ...})."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the CPU path, not the interpreter
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "bench.bench_contrastive_loss", "--one", provider, str(n), "--d", str(d)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"provider": provider, "n": n, "d": d, "error": f"timeout after {timeout} s"}
    if out.returncode != 0:
        return {"provider": provider, "n": n, "d": d, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark entry (CI-sized by default).

NS = FULL_NS if os.environ.get("CLIPFAST_BENCH_FULL") == "1" else CI_NS


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_contrastive_loss_fwd_bwd(benchmark, provider, n):
    if provider == "open_clip":
        pytest.importorskip("open_clip")
    fn = _loss_fn(provider)
    i, t, s = _inputs(n)
    benchmark.pedantic(fwd_bwd, args=(fn, i, t, s), rounds=3, warmup_rounds=1, iterations=1)
    mem = measure(provider, n)
    benchmark.extra_info.update({
        "n": n, "d": D, "matmul_flops": flops(n, D, provider),
        "peak_extra_bytes_own_process": mem.get("peak_extra_bytes"),
        "seconds_own_process": mem.get("seconds"),
    })


# ---------------------------------------------------------------------------------------------------
# Command line: one measurement, or the full sweep.

def _sweep(args):
    rows = []
    providers = args.providers.split(",")
    for n in ([int(v) for v in args.ns.split(",")] if args.ns else FULL_NS + CLIPFAST_ONLY_NS):
        for p in providers:
            limit = args.clipfast_max_n if p == "clipfast" else args.max_n
            if n > limit:
                continue
            r = measure(p, n, args.d)
            rows.append(r)
            print(json.dumps(r), flush=True)
            if args.out:
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                with open(args.out, "w") as f:
                    json.dump(rows, f, indent=1)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one", nargs=2, metavar=("PROVIDER", "N"), help="measure one case in this process")
    ap.add_argument("--sweep", action="store_true", help="measure every case, each in a fresh process")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--max-n", type=int, default=32768, help="largest N for open_clip / naive")
    ap.add_argument("--clipfast-max-n", type=int, default=262144)
    ap.add_argument("--ns", default=None, help="comma-separated N list for --sweep (default: all)")
    ap.add_argument("--d", type=int, default=D)
    ap.add_argument("--out", default=None, help="write the sweep's results as JSON here")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_here(args.one[0], int(args.one[1]), args.d)))
    elif args.sweep:
        _sweep(args)
    else:
        ap.error("give --one PROVIDER N or --sweep")


if __name__ == "__main__":
    main()
