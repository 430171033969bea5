"""``clipfast bench`` (clipfast.train.bench, clipfast.train.bench_report): the report's figures are its JSON's,
the suite is found (or a clear error), pytest-benchmark's JSON becomes rows and ratios, the dispatch works."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from clipfast.train import bench, bench_report
from clipfast.train.cli import main as cli_main

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIB = 2**20


def _tables(markdown):
    """{section heading: [row cells, ...]} of every Markdown table (header and separator rows dropped)."""
    tables, heading, rows = {}, None, None
    for line in markdown.splitlines():
        if line.startswith("#"):
            heading, rows = line.lstrip("# ").strip(), None
        elif line.startswith("|"):
            if rows is None:
                rows = tables.setdefault(heading, [])
                continue  # header
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        else:
            rows = None
    return tables


def _close(cell, value, sig=3):
    if value is None:
        return cell == "-"
    return abs(float(cell) - value) <= 0.5 * 10 ** (1 - sig) * abs(value) + 1e-12


def _results():
    rows = [{"file": "bench_x.py", "test": "test_quick_gelu", "variant_key": "provider", "variant": v,
             "case": "dtype=float32,mode=fwd_bwd,shape=s", "mean_s": m, "median_s": m, "rounds": 5,
             "extra_info": {"gb_per_s": g, "peak_mb": p}} for v, m, g, p in
            (("clipfast", 0.0123456, 41.2345, 76.54321), ("reference", 0.0456789, 11.1111, 187.25))]
    return {
        "command": "clipfast bench --quick", "subset": "quick", "stages": list(bench.STAGES), "seconds": 123.456,
        "started": "2026-12-01T00:00:00+00:00", "suite": "bench",
        "machine": {"cpu": "x", "cores": 2, "threads": 2, "python": "3.11", "torch": "2", "os": "linux", "gpu": None},
        "suite_run": {"command": "pytest ...", "rows": rows, "ratios": bench.ratios(rows)},
        "train_step": [{"shape": "vit_b32", "config": "ViT-B-32", "batch": 2, "precision": "fp32", "rounds": 2,
                        "device": "cpu", "threads": 2, "ratio": 1.2345,
                        "providers": {"clipfast": {"median_s": 8.1, "samples_per_s": 2 / 8.1, "first_step_peak_bytes": 2.1e9},
                                      "open_clip": {"median_s": 10.0, "samples_per_s": 0.2, "first_step_peak_bytes": 2.2e9}}}],
        "loss_memory": [{"provider": p, "n": n, "d": 512, "dtype": "float32", "peak_extra_bytes": b, "seconds": s}
                        for p, n, b, s in (("clipfast", 1024, 5.5e6, 0.1234), ("open_clip", 1024, 2.345e7, 0.3456))],
        "aot": [{"module": "quick_gelu", "kernel": "_k", "label": "cfg", "arch": 80, "num_warps": 4, "num_stages": 1,
                 "registers": 40, "shared": 0, "local": 0, "stack": 0, "error": None, "problems": []}],
        "roofline": [dict(op="quick_gelu", shape="s", gpu="H100-SXM5-80GB", flops=0, bytes=1.2345e9, estimate=True,
                          compute_s=0.0, memory_s=3.685e-4, bound_s=3.685e-4, bound="memory")],
    }


def _check_report_matches(results, markdown):
    tables = _tables(markdown)
    ratio_rows = tables["Speed ratios (baseline mean time / provider mean time; > 1: faster than the baseline)"]
    assert len(ratio_rows) == len(results["suite_run"]["ratios"])
    for cells, r in zip(ratio_rows, results["suite_run"]["ratios"]):
        assert cells[:4] == [r["test"], r["case"], r["provider"], r["baseline"]]
        assert _close(cells[4], r["provider_mean_s"] * 1e3) and _close(cells[5], r["baseline_mean_s"] * 1e3)
        assert _close(cells[6], r["ratio"])
    for cells, r in zip(tables["Every case"], results["suite_run"]["rows"]):
        assert cells[2] == r["variant"] and _close(cells[3], r["mean_s"] * 1e3)
        assert _close(cells[7], r["extra_info"].get("gb_per_s")) and _close(cells[8], r["extra_info"].get("peak_mb"))
    train = tables["Train step: clipfast vs OpenCLIP, interleaved step by step"]
    expected = [(r, p, v) for r in results["train_step"] for p, v in r["providers"].items()]
    assert len(train) == len(expected)
    for cells, (r, p, v) in zip(train, expected):
        assert cells[0] == r["config"] and cells[4] == p and _close(cells[5], v["samples_per_s"])
        assert _close(cells[6], v["median_s"]) and _close(cells[7], v["first_step_peak_bytes"] / MIB)
        assert _close(cells[8], r["ratio"] if p == "clipfast" else 1.0)
    loss = next(v for k, v in tables.items() if k.startswith("Contrastive loss: peak extra memory"))
    assert len(loss) == len(results["loss_memory"])
    for cells, r in zip(loss, results["loss_memory"]):
        assert cells[0] == r["provider"] and int(cells[1]) == r["n"]
        assert _close(cells[4], r["peak_extra_bytes"] / MIB) and _close(cells[5], r["seconds"])
    roof = tables["Roofline ESTIMATES at GPU shapes (not measurements)"]
    for cells, r in zip(roof, results["roofline"]):
        assert cells[2] == r["gpu"] and _close(cells[4], r["bytes"] / 1e6) and _close(cells[7], r["bound_s"] * 1e3)


def test_report_figures_match_json(tmp_path):
    results = _results()
    written = bench_report.write_report(results, tmp_path)
    assert {p.name for p in written} == {"results.json", "report.md", "loss_memory.png", "speed_ratios.png"}
    saved = json.loads((tmp_path / "results.json").read_text())
    markdown = (tmp_path / "report.md").read_text()
    assert markdown == bench_report.render_markdown(saved)
    _check_report_matches(saved, markdown)
    assert "clipfast bench --quick" in markdown and "ESTIMATES" in markdown
    assert (tmp_path / "loss_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A changed figure no longer matches: the check can fail.
    saved["loss_memory"][0]["peak_extra_bytes"] *= 1.1
    with pytest.raises(AssertionError):
        _check_report_matches(saved, markdown)


def test_suite_rows_and_ratios_from_pytest_benchmark_json():
    raw = {"benchmarks": [
        {"name": f"test_train_step[{p}-vit_b32]", "fullname": f"bench/bench_train_step.py::test_train_step[{p}-vit_b32]",
         "params": {"provider": p, "shape": "vit_b32"}, "stats": {"mean": m, "median": m, "rounds": 3},
         "extra_info": {"samples_per_s": 8 / m}} for p, m in (("clipfast", 2.0), ("open_clip", 3.0))]
        + [{"name": f"test_grad_checkpointing[vit_b32-{c}]", "fullname": "bench/bench_train_step.py::x",
            "params": {"shape": "vit_b32", "checkpointing": c}, "stats": {"mean": m, "median": m, "rounds": 3},
            "extra_info": {}} for c, m in (("off", 1.0), ("on", 1.25))]}
    rows = bench.suite_rows(raw)
    assert [(r["test"], r["variant"], r["case"]) for r in rows][:2] == [
        ("test_train_step", "clipfast", "shape=vit_b32"), ("test_train_step", "open_clip", "shape=vit_b32")]
    got = {(r["test"], r["provider"]): r["ratio"] for r in bench.ratios(rows)}
    assert got == {("test_train_step", "clipfast"): 1.5, ("test_grad_checkpointing", "on"): 0.8}


def test_suite_is_found_in_the_checkout_or_a_clear_error(tmp_path, monkeypatch, capsys):
    assert bench.find_suite() == ROOT / "bench"
    assert cli_main(["bench", "--suite", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--suite" in capsys.readouterr().err
    import clipfast

    monkeypatch.setattr(clipfast, "__file__", str(tmp_path / "site-packages" / "clipfast" / "__init__.py"))
    with pytest.raises(bench.BenchError, match="pip install -e"):
        bench.find_suite()


def test_bad_flags_are_usage_errors(tmp_path, capsys):
    assert cli_main(["bench", "--only", "suite,bogus", "--out", str(tmp_path)]) == 2
    assert "--only: unknown stage(s) bogus" in capsys.readouterr().err
    assert cli_main(["bench", "--only", "loss_memory", "--ns", "0", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_loss_memory_and_roofline_run_end_to_end(tmp_path):
    """``python -m clipfast.train bench --only loss_memory,roofline`` at tiny N: fresh-process memory figures, the
    report and the plot, and the report's figures are the JSON's."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "clipfast.train", "bench", "--only", "loss_memory,roofline", "--ns",
                           "128,256", "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["loss_memory"]
    counted = "clipfast triton bf16 (counted)"
    assert [(r["provider"], r["n"]) for r in rows] == [("clipfast", 128), (counted, 128), ("open_clip", 128),
                                                       ("clipfast", 256), (counted, 256), ("open_clip", 256)]
    assert all(r["peak_extra_bytes"] >= r["grad_bytes"] > 0 for r in rows)
    assert all((r["seconds"] is None) == (r["provider"] == counted) for r in rows)
    assert all(r["estimate"] is True for r in results["roofline"])
    assert {r["op"].split()[0] for r in results["roofline"]} >= {"quick_gelu", "contrastive_loss", "AdamW"}
    tables = _tables((tmp_path / "report.md").read_text())
    loss = next(v for k, v in tables.items() if k.startswith("Contrastive loss: peak extra memory"))
    for cells, r in zip(loss, rows, strict=True):
        assert _close(cells[4], r["peak_extra_bytes"] / MIB) and _close(cells[5], r["seconds"])
    assert (tmp_path / "loss_memory.png").is_file()


def test_quick_aot_stage_reports_resources_and_occupancy(tmp_path):
    """``clipfast bench --only aot --quick``: one config per Triton kernel, both archs, compiled for real (no
    interpreter), with the report's full rows (resources, occupancy) and no problem."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "clipfast.train", "bench", "--only", "aot", "--quick", "--out",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["aot"]
    from clipfast.kernels import _aot

    kernels = {spec.kernel.__name__ for m in _aot.kernel_modules() for spec in m.aot_specs()}
    assert {(r["kernel"], r["arch"]) for r in rows} == {(k, a) for k in kernels for a in _aot.ARCHS}
    assert all(r["problems"] == [] and r["ctas_per_sm"] >= 1 and r["registers"] > 0 for r in rows), rows
