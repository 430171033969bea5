"""``clipfast bench``'s outputs from its results dict: ``results.json``, ``report.md`` (rendered from the JSON
alone, every figure through :func:`fmt`), ``loss_memory.png`` and ``speed_ratios.png``; and the roofline
estimates at the GPU shapes of the suite's ``shapes.py`` with its ``costs.py`` counts.
"""
import importlib
import json
import os
import sys
from pathlib import Path

import torch

import clipfast

__all__ = ["fmt", "roofline_rows", "render_markdown", "plot_loss_memory", "plot_speed_ratios", "write_report"]

MIB = 2**20


def fmt(value, digits=3):
    """The one number format of the report: ``digits`` significant figures, whole numbers from 10^digits up."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 10**digits else str(round(value))


def _suite_modules(suite):
    sys.path.insert(0, str(suite))
    try:
        return importlib.import_module("shapes"), importlib.import_module("costs")
    finally:
        sys.path.remove(str(suite))


def _param_count(config, part):
    with torch.device("meta"):
        model = clipfast.CLIP(**clipfast.get_model_config(config))
    return sum(p.numel() for p in (model.visual if part == "visual" else model).parameters())


# AdamW modes priced by the roofline: bytes per parameter of (weights, gradient, per-element state).
ADAM_MODES = {"fp32 w, fp32 m/v": (4, 4, 8), "fp32 w, bf16 m/v": (4, 4, 4), "bf16 w (SR), bf16 m/v": (2, 2, 4)}


def roofline_rows(suite, suite_rows=(), train_rows=()):
    """Lower-bound seconds per (op, GPU shape, GPU) at datasheet peaks — estimates, not measurements. The train
    step's FLOPs are clipfast's measured per-sample FLOPs (``FlopCounterMode``, of the suite's ``test_train_step``
    or else of the interleaved ``train_step`` stage) times the GPU batch."""
    shapes, costs = _suite_modules(suite)
    gpu = shapes.SETS["gpu"]
    work = []
    for name, (rows, cols) in gpu["QUICK_GELU"].items():
        work.append(("quick_gelu fwd+bwd bf16", name, *costs.quick_gelu(rows, cols, 2, "fwd_bwd")))
    for name, (n, d) in gpu["CONTRASTIVE_LOSS"].items():
        work.append(("contrastive_loss fwd+bwd bf16 (clipfast)", name, *costs.contrastive_loss(n, d, 2)))
    for name, (config, part) in gpu["FUSED_ADAM"].items():
        n = _param_count(config, part)
        for mode, (w, g, s) in ADAM_MODES.items():
            work.append((f"AdamW step, {mode}", name, *costs.fused_adam(n, w, g, s)))
    for name, (b, h, length, d, causal) in gpu.get("ATTENTION", {}).items():
        work.append(("attention fwd+bwd bf16", name, *costs.attention(b, h, length, d, causal, 2)))
    for name, (config, batch, _) in gpu["TRAIN_STEP"].items():
        measured = [r for r in suite_rows if r["test"] == "test_train_step" and r["variant"] == "clipfast"
                    and r["case"] == f"shape={name}" and r["extra_info"].get("flops")]
        per_sample = [r["extra_info"]["flops"] / r["extra_info"]["batch"] for r in measured]
        per_sample += [r["providers"]["clipfast"]["flops"] / r["batch"] for r in train_rows
                       if r["shape"] == name and r["providers"]["clipfast"].get("flops")]
        if per_sample:
            work.append((f"train step {config} (compute only)", f"{name} batch {batch}", per_sample[0] * batch, 0))
    return [dict(op=op, shape=shape, gpu=g, flops=flops, bytes=nbytes, estimate=True, **costs.roofline(flops, nbytes, g))
            for op, shape, flops, nbytes in work for g in costs.GPUS]


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _suite_section(run):
    lines = ["## Suite (pytest-benchmark, one run)", "", f"Command: `{run['command']}`", ""]
    if run.get("error"):
        return lines + [f"**Failed**: {run['error']}", ""]
    lines += ["### Speed ratios (baseline mean time / provider mean time; > 1: faster than the baseline)", ""]
    lines += _table(["test", "case", "provider", "baseline", "provider ms", "baseline ms", "ratio"],
                    [(r["test"], r["case"], r["provider"], r["baseline"], fmt(r["provider_mean_s"] * 1e3),
                      fmt(r["baseline_mean_s"] * 1e3), fmt(r["ratio"])) for r in run["ratios"]])
    lines += ["", "### Every case", ""]
    keys = ("samples_per_s", "gflop_per_s", "gb_per_s", "peak_mb", "saved_mb", "state_bytes_per_param")
    lines += _table(["test", "case", "variant", "mean ms", "rounds", *keys],
                    [(r["test"], r["case"], r["variant"], fmt(r["mean_s"] * 1e3), r["rounds"],
                      *(fmt(r["extra_info"].get(k)) for k in keys)) for r in run["rows"]])
    return lines + [""]


def _train_step_section(rows):
    lines = ["## Train step: clipfast vs OpenCLIP, interleaved step by step", "",
             "Forward, loss, backward, grad clip, AdamW (`bench_train_step.interleaved_compare`); median step time "
             "over the rounds; peak memory of each provider's first step (optimizer state allocation included).", ""]
    lines += _table(["model", "batch", "precision", "rounds", "provider", "samples/s", "median s", "first-step peak MiB",
                     "speed ratio vs open_clip"],
                    [(r["config"], r["batch"], r["precision"], r["rounds"], p, fmt(v["samples_per_s"]),
                      fmt(v["median_s"]), fmt(None if v["first_step_peak_bytes"] is None else v["first_step_peak_bytes"] / MIB),
                      fmt(r["ratio"]) if p == "clipfast" else "1")
                     for r in rows for p, v in r["providers"].items()])
    return lines + [""]


def _all_ratios(results):
    """The suite's ratios and the interleaved train-step ratios, for the chart."""
    out = list(results.get("suite_run", {}).get("ratios", []))
    out += [{"test": "train_step_interleaved", "case": f"{r['config']} batch {r['batch']}", "provider": "clipfast",
             "baseline": "open_clip", "ratio": r["ratio"]} for r in results.get("train_step", [])]
    return out


def _loss_section(rows, prefix):
    lines = ["## Contrastive loss: peak extra memory vs N (forward + backward, gradients included)", "",
             "Each point in its own process on CPU (peak RSS above the inputs), CUDA allocator peak on a GPU; "
             "`(counted)` rows: the Triton path's own allocations counted on meta tensors (no GPU, not timed).", ""]
    lines += _table(["provider", "N", "d", "dtype", "peak extra MiB", "seconds", "error"],
                    [(r["provider"], r["n"], r["d"], r.get("dtype", "-"),
                      fmt(None if r.get("peak_extra_bytes") is None else r["peak_extra_bytes"] / MIB),
                      fmt(r.get("seconds")), r.get("error", "")) for r in rows])
    return lines + ["", f"![loss memory vs N]({prefix}loss_memory.png)", ""]


def _aot_section(rows):
    base = {"module", "kernel", "label", "arch", "num_warps", "num_stages", "registers", "shared", "local", "stack",
            "error", "problems"}
    extra = sorted({k for r in rows for k in r} - base)
    lines = ["## Static GPU evidence: ahead-of-time compile (no GPU needed)", "",
             "Triton's compiler for sm_80 / sm_90, resources read from the cubin (`clipfast.kernels._aot`).", ""]
    lines += _table(["kernel", "config", "arch", "warps", "stages", "registers", "shared B", "spill B", *extra, "problems"],
                    [(r.get("kernel", "-"), r.get("label", "-"), f"sm_{r['arch']}" if "arch" in r else "-",
                      r.get("num_warps", "-"), r.get("num_stages", "-"), r.get("registers", "-"), r.get("shared", "-"),
                      r.get("local", "-"), *(r.get(k, "-") for k in extra), "; ".join(r.get("problems") or []) or "none")
                     for r in rows])
    return lines + [""]


def _roofline_section(rows):
    lines = ["## Roofline ESTIMATES at GPU shapes (not measurements)", "",
             "Lower bounds max(FLOPs / peak, bytes / bandwidth) at datasheet peaks (dense bf16 tensor cores, HBM); "
             "counts from `bench/costs.py`. No GPU was used for these rows.", ""]
    lines += _table(["op", "shape", "GPU", "GFLOP", "MB moved", "compute ms", "memory ms", "bound ms", "bound"],
                    [(r["op"], r["shape"], r["gpu"], fmt(r["flops"] / 1e9), fmt(r["bytes"] / 1e6),
                      fmt(r["compute_s"] * 1e3), fmt(r["memory_s"] * 1e3), fmt(r["bound_s"] * 1e3), r["bound"])
                     for r in rows])
    return lines + [""]


def _providers(found):
    have = [p for p, ok in found.items() if ok]
    missing = [p for p, ok in found.items() if not ok]
    return f"{', '.join(have) or 'none'}; not importable here (their cases skip): {', '.join(missing) or 'none'}."


def render_markdown(results, prefix="") -> str:
    """The report of ``results`` (the dict written to results.json); ``prefix``: path from the report to the
    folder of results.json and the PNGs ("" when beside them)."""
    m = results["machine"]
    lines = ["# clipfast benchmark report", "",
             f"Command: `{results['command']}` (subset `{results['subset']}`, {fmt(results.get('seconds'))} s)  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, GPU: {m['gpu'] or 'none'}; "
             f"torch {m['torch']}, Python {m['python']}, {m['os']}  ",
             f"Started: {results['started']}; figures: [`results.json`]({prefix}results.json).  ",
             "Optional providers installed: " + _providers(results.get("optional_providers", {})), "",
             "CPU timings are only comparable side by side within this run (a shared machine drifts); no GPU speed "
             "is claimed unless the machine line names a GPU. Roofline rows are estimates.", ""]
    if "suite_run" in results:
        lines += _suite_section(results["suite_run"])
    if results.get("train_step"):
        lines += _train_step_section(results["train_step"])
    if _all_ratios(results):
        lines += [f"![speed ratios]({prefix}speed_ratios.png)", ""]
    if "loss_memory" in results:
        lines += _loss_section(results["loss_memory"], prefix)
    if "aot" in results:
        lines += _aot_section(results["aot"])
    if "roofline" in results:
        lines += _roofline_section(results["roofline"])
    return "\n".join(lines)


def _figure(width=7.0, height=4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="tight")
    FigureCanvasAgg(fig)
    return fig


def plot_loss_memory(rows, path):
    """Peak extra memory (MiB) and seconds vs N per provider, log-log; returns ``path``."""
    fig = _figure(11, 4.2)
    ax_mem, ax_time = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for index, provider in enumerate(sorted({r["provider"] for r in rows})):
        ok = sorted((r for r in rows if r["provider"] == provider and not r.get("error")), key=lambda r: r["n"])
        style = dict(label=provider, color=f"C{index}")  # one colour per provider in both panels
        if ok:
            ax_mem.plot([r["n"] for r in ok], [r["peak_extra_bytes"] / MIB for r in ok], "o-", **style)
            timed = [r for r in ok if r.get("seconds") is not None]  # counted rows have no time
            if timed:
                ax_time.plot([r["n"] for r in timed], [r["seconds"] for r in timed], "o-", **style)
    device = rows[0].get("device", "cpu") if rows else "cpu"
    for ax, label in ((ax_mem, "peak extra memory incl. gradients (MiB)"), (ax_time, "forward + backward (s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"batch N (d = {rows[0]['d'] if rows else '?'}, {device})")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("CLIP contrastive loss: clipfast vs OpenCLIP ClipLoss")
    fig.savefig(path, dpi=110)
    return path


def plot_speed_ratios(ratio_rows, path):
    """Horizontal bars: baseline time / provider time per (test, case, provider); returns ``path``."""
    fig = _figure(10, 1.2 + 0.32 * max(len(ratio_rows), 1))
    ax = fig.add_subplot()
    labels = [f"{r['test'].removeprefix('test_')} {r['case']} {r['provider']} vs {r['baseline']}" for r in ratio_rows]
    ax.barh(range(len(ratio_rows)), [r["ratio"] for r in ratio_rows], color="C0")
    ax.set_yticks(range(len(ratio_rows)), labels, fontsize=7)
    ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.invert_yaxis()
    ax.set_xlabel("baseline time / provider time (same run; > 1: faster)")
    fig.savefig(path, dpi=110)
    return path


def write_report(results, out_dir, markdown=None) -> list:
    """Write results.json, the report (``markdown``, default ``out_dir``/report.md) and the PNGs (those with
    data) under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", Path(markdown) if markdown else out / "report.md"]
    written[1].parent.mkdir(parents=True, exist_ok=True)
    prefix = os.path.relpath(out, written[1].parent).replace(os.sep, "/") + "/"
    written[0].write_text(json.dumps(results, indent=1, default=str))
    # Render from the JSON as written, so the report's figures are exactly the file's.
    written[1].write_text(render_markdown(json.loads(written[0].read_text()), "" if prefix == "./" else prefix))
    if results.get("loss_memory") and any(not r.get("error") for r in results["loss_memory"]):
        written.append(plot_loss_memory(results["loss_memory"], out / "loss_memory.png"))
    if _all_ratios(results):
        written.append(plot_speed_ratios(_all_ratios(results), out / "speed_ratios.png"))
    return written
