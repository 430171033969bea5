"""``clipfast bench``: run the benchmark suite (or a subset) and write ``results.json``, ``report.md`` and PNG
charts under ``--out``.

    clipfast bench --quick --out bench-report          # a few minutes on CPU
    clipfast bench --out bench-report                  # the whole suite (pytest bench/ --benchmark-only)
    clipfast bench --subset gpu-check --out DIR        # what ``make gpu-check`` runs

Stages (``--only`` picks some):

- ``suite``: ``pytest <suite>/bench_*.py --benchmark-only`` on the subset's selection (one pytest run, so the
  providers of a case run side by side); per case the ratio baseline time / provider time.
- ``train_step``: clipfast vs OpenCLIP train steps interleaved step by step (``bench_train_step.interleaved_compare``):
  the ratio a shared CPU can give (pytest-benchmark times one provider after the other).
- ``loss_memory``: contrastive-loss peak extra memory and time vs N for clipfast and OpenCLIP (fresh process
  per point on CPU).
- ``aot``: static GPU evidence per Triton kernel and arch — registers, shared memory, spills (and whatever else
  ``clipfast.kernels._aot.Resources`` reports) from the ahead-of-time compile; ``--quick``: one config per
  kernel (bf16, head dim 64 where listed).
- ``roofline``: lower-bound times at the GPU shapes from FLOP / byte counts and datasheet peaks — ESTIMATES.

The suite is the ``bench/`` folder of a source checkout: found next to the ``clipfast`` package when it is
installed editable (``pip install -e .``) or run from the checkout, else given with ``--suite DIR``; without
it the command stops with an error saying so. The report is rendered from ``results.json`` alone
(``clipfast.train.bench_report``), so its figures are the JSON's.
"""
import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

import clipfast
from clipfast.train.bench_report import roofline_rows, write_report

STAGES = ("suite", "train_step", "loss_memory", "aot", "roofline")
# subset: (pytest -k selection over bench_*.py, loss-memory Ns (None: shapes.LOSS_MEMORY_NS), AOT of every config,
# interleaved train-step shapes (None: all of shapes.TRAIN_STEP) and rounds)
SUBSETS = {
    "quick": ("(bench_quick_gelu and vit_b32_mlp and fwd_bwd and not torch_compile)"
              " or (bench_contrastive_loss and n1024)"
              " or (bench_fused_adam and (torch_f or clipfast_))", (1024, 2048, 4096), False, ("vit_b32",), 2),
    "gpu-check": ("bench_attention"
                  " or (bench_quick_gelu and not torch_compile)"
                  " or bench_contrastive_loss"
                  " or (bench_fused_adam and vit_b32_visual)"
                  " or (bench_train_step and test_train_step and vit_b32)", None, False, ("vit_b32",), 5),
    "full": (None, None, True, None, 3),
}
LOSS_MEMORY_PROVIDERS = ("clipfast", "open_clip")


class BenchError(Exception):
    """A usage or environment error reported as ``clipfast bench: error: ...`` (exit status 2)."""


def find_suite(suite=None) -> Path:
    """The benchmark suite folder: ``suite`` if given, else the checkout's ``bench/`` beside the package."""
    if suite is not None:
        path = Path(suite)
        if not (path / "harness.py").is_file():
            raise BenchError(f"--suite: {suite!r} is not clipfast's bench/ folder (no harness.py in it)")
        return path.resolve()
    path = Path(clipfast.__file__).resolve().parent.parent / "bench"
    if (path / "harness.py").is_file():
        return path
    raise BenchError(f"the benchmark suite (bench/ of a clipfast source checkout) is not next to the installed "
                     f"package ({Path(clipfast.__file__).parent}); clone the repository and `pip install -e .` it, "
                     f"or pass --suite PATH/TO/clipfast/bench")


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "os": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _child_env(shapes):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the paths users get, and the real Triton compiler for the AOT stage
    if shapes:
        env["CLIPFAST_BENCH_SHAPES"] = shapes
    return env


def _variant_key(test):
    return {"test_grad_checkpointing": "checkpointing", "test_optimizer_mode": "mode"}.get(test, "provider")


# Which provider a case's others are compared with (baseline time / provider time).
BASELINES = {"test_quick_gelu": "reference", "test_contrastive_loss_fwd_bwd": "open_clip",
             "test_fused_adam_step": "torch_fused", "test_train_step": "open_clip", "test_model": "open_clip",
             "test_grad_checkpointing": "off", "test_optimizer_mode": "torch_adamw"}


def suite_rows(benchmark_json: dict) -> list:
    """pytest-benchmark's JSON as flat rows: file, test, case (params but the variant), variant, times, extra."""
    rows = []
    for b in benchmark_json.get("benchmarks", []):
        test = b["name"].split("[")[0]
        params = dict(b.get("params") or {})
        key = _variant_key(test)
        variant = str(params.pop(key, "-"))
        rows.append({"file": b["fullname"].split("::")[0].rsplit("/", 1)[-1], "test": test, "variant_key": key,
                     "variant": variant, "case": ",".join(f"{k}={v}" for k, v in sorted(params.items())),
                     "mean_s": b["stats"]["mean"], "median_s": b["stats"]["median"],
                     "rounds": b["stats"]["rounds"], "extra_info": b.get("extra_info", {})})
    return rows


def ratios(rows: list) -> list:
    """Per (test, case), baseline mean / provider mean for every other provider of that case."""
    out = []
    for r in rows:
        base = BASELINES.get(r["test"])
        if base is None or r["variant"] == base:
            continue
        match = [b for b in rows if b["test"] == r["test"] and b["case"] == r["case"] and b["variant"] == base]
        if match:
            out.append({"test": r["test"], "case": r["case"], "provider": r["variant"], "baseline": base,
                        "provider_mean_s": r["mean_s"], "baseline_mean_s": match[0]["mean_s"],
                        "ratio": match[0]["mean_s"] / r["mean_s"]})
    return out


def run_suite(suite: Path, select, extra_k, out: Path, shapes, log) -> dict:
    """One ``pytest --benchmark-only`` run over the suite's bench_*.py with ``-k select [and extra_k]``."""
    raw = (out / "pytest-benchmark.json").resolve()
    k = " and ".join(f"({e})" for e in (select, extra_k) if e)
    # Paths relative to the checkout (the child's cwd), so the command reads the same on every machine.
    files = sorted(f"{suite.name}/{p.name}" for p in suite.glob("bench_*.py"))
    args = ["-m", "pytest", *files, "--benchmark-only", f"--benchmark-json={os.path.relpath(raw, suite.parent)}",
            "-q", "-p", "no:cacheprovider", "--rootdir", "."] + (["-k", k] if k else [])
    shown = shlex.join(["python", *args])
    log(f"suite: {shown}")
    proc = subprocess.run([sys.executable, *args], cwd=suite.parent, env=_child_env(shapes), capture_output=True,
                          text=True)
    (out / "pytest.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode not in (0, 5) or not raw.is_file():  # 5: nothing collected
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return {"command": shown, "error": f"pytest exit status {proc.returncode}: " + " | ".join(tail),
                "rows": [], "ratios": []}
    rows = suite_rows(json.loads(raw.read_text()))
    return {"command": shown, "exit_status": proc.returncode, "rows": rows, "ratios": ratios(rows)}


def run_loss_memory(suite: Path, ns, log) -> list:
    """Contrastive-loss peak extra memory and seconds per (N, provider), via the suite's measure()."""
    sys.path.insert(0, str(suite))
    try:
        loss_bench = importlib.import_module("bench_contrastive_loss")
        shapes = importlib.import_module("shapes")
        ns = ns or shapes.LOSS_MEMORY_NS
        return loss_bench.sweep(ns, LOSS_MEMORY_PROVIDERS, log=lambda line: log(f"loss_memory: {line}"))
    finally:
        sys.path.remove(str(suite))


def optional_providers(suite: Path) -> dict:
    """{provider: whether its package imports here} for the suite's optional providers (``harness.available``)."""
    sys.path.insert(0, str(suite))
    try:
        harness = importlib.import_module("harness")
        return {name: harness.available(name) for name in harness.OPTIONAL_PROVIDERS}
    finally:
        sys.path.remove(str(suite))


def run_train_step(suite: Path, shapes, rounds, log) -> list:
    """``bench_train_step.interleaved_compare`` for each shape (default: all of the suite's TRAIN_STEP)."""
    sys.path.insert(0, str(suite))
    try:
        train_bench = importlib.import_module("bench_train_step")
        rows = []
        for shape in shapes or list(train_bench.TRAIN_STEP):
            log(f"train_step: {shape}, {rounds} interleaved rounds")
            rows.append(train_bench.interleaved_compare(shape, rounds))
        return rows
    finally:
        sys.path.remove(str(suite))


def aot_rows(all_configs: bool) -> list:
    """Resources per (kernel config, arch) from ``clipfast.kernels._aot``: every config (``all_configs``), or
    one config of each kernel (bf16 and head dim 64 preferred). Run with TRITON_INTERPRET unset."""
    from clipfast.kernels import _aot  # here: it needs triton, which only this stage does

    if all_configs:
        return _aot.compile_all(int(os.environ.get("MAX_JOBS", "2")))
    rows = []
    for module in _aot.kernel_modules():
        chosen = {}
        for spec in module.aot_specs():  # per kernel, a config CLIP trains with: bf16, head dim 64 where listed
            score = ("bf16" in spec.label) * 2 + ("d64" in spec.label)
            if spec.kernel.__name__ not in chosen or score > chosen[spec.kernel.__name__][0]:
                chosen[spec.kernel.__name__] = (score, spec)
        model = getattr(module, "aot_bytes_per_flop", None)
        for _, spec in chosen.values():
            for arch in _aot.ARCHS:  # the report's own row: resources, occupancy, B/FLOP or the compile error
                row = _aot.spec_row(spec, arch, model(spec) if model is not None else None)
                rows.append(dict(row, module=module.__name__.rsplit(".", 1)[-1]))
    return rows


def run_aot(all_configs: bool, log) -> list:
    log(f"aot: compiling {'every config' if all_configs else 'one config per kernel'} for sm_80 and sm_90")
    code = f"import json; from clipfast.train.bench import aot_rows; print(json.dumps(aot_rows({all_configs})))"
    proc = subprocess.run([sys.executable, "-c", code], env=_child_env(None), capture_output=True, text=True)
    if proc.returncode != 0:
        return [{"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}]
    from clipfast.kernels import _aot  # needs triton

    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for row in rows:
        row["problems"] = _aot.problems(row) if "arch" in row else [row["error"]]
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipfast bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="bench-report", help="folder for results.json, report.md, *.png; default: %(default)s")
    p.add_argument("--quick", action="store_true", help="= --subset quick: a few minutes on CPU")
    p.add_argument("--subset", choices=sorted(SUBSETS), default="full", help="which benchmarks; default: %(default)s")
    p.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages of {', '.join(STAGES)}")
    p.add_argument("-k", dest="k", default=None, help="further pytest -k selection of the suite's cases")
    p.add_argument("--ns", default=None, help="comma-separated N of the loss-memory sweep (default: the subset's)")
    p.add_argument("--shapes", choices=("cpu", "gpu"), default=None,
                   help="bench/shapes.py set (default: gpu with CUDA, else cpu)")
    p.add_argument("--suite", default=None, help="the bench/ folder (default: the checkout's, beside clipfast)")
    p.add_argument("--markdown", default=None, help="write the report here instead of OUT/report.md (links adjusted)")
    return p


def main(argv=None) -> int:
    """``clipfast bench [flags]``; returns the exit status (2: usage / environment error, 1: a stage failed)."""
    args = build_parser().parse_args(argv)
    subset = "quick" if args.quick else args.subset
    stages = [s for s in args.only.split(",") if s]
    try:
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise BenchError(f"--only: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        ns = tuple(int(v) for v in args.ns.split(",")) if args.ns else None
        if ns is not None and any(n < 1 for n in ns):
            raise BenchError(f"--ns: expected positive integers, got {args.ns!r}")
        suite = find_suite(args.suite)
    except (BenchError, ValueError) as e:
        print(f"clipfast bench: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(line):
        print(line, flush=True)

    select, quick_ns, all_configs, train_shapes, train_rounds = SUBSETS[subset]
    if args.shapes:
        os.environ["CLIPFAST_BENCH_SHAPES"] = args.shapes
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {"command": "clipfast bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
               "subset": subset, "stages": stages, "machine": machine(), "started": started.isoformat(timespec="seconds"),
               "suite": str(suite), "optional_providers": optional_providers(suite)}
    if "suite" in stages:
        results["suite_run"] = run_suite(suite, select, args.k, out, args.shapes, log)
    if "train_step" in stages:
        results["train_step"] = run_train_step(suite, train_shapes, train_rounds, log)
    if "loss_memory" in stages:
        results["loss_memory"] = run_loss_memory(suite, ns or quick_ns, log)
    if "aot" in stages:
        results["aot"] = run_aot(all_configs, log)
    if "roofline" in stages:
        results["roofline"] = roofline_rows(suite, results.get("suite_run", {}).get("rows", []), results.get("train_step", []))
    results["seconds"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    written = write_report(results, out, args.markdown)
    log("wrote " + ", ".join(str(p) for p in written))
    failed = bool(results.get("suite_run", {}).get("error")) or any("error" in r for r in results.get("loss_memory", []))
    return 1 if failed else 0
