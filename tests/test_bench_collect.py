"""``pytest bench/ --benchmark-only`` (the README's command) collects every bench/bench_*.py."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pytest_bench_collects_every_bench_file():
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = {p.name for p in (ROOT / "bench").glob("bench_*.py")}
    collected = {line.split("::")[0].split("/")[-1] for line in proc.stdout.splitlines() if "::" in line}
    assert files and files <= collected, f"not collected: {sorted(files - collected)}"
    assert "bench_quick_gelu.py::test_quick_gelu[vit_b32_mlp-float32-fwd_bwd-open_clip]" in proc.stdout
