"""Every Triton kernel config the launchers can choose compiles for sm_80 and sm_90 with no spills and
shared memory within the arch limit (ahead of time, no GPU: ``python -m clipfast.kernels._aot``)."""
import json
import os
import subprocess
import sys

import pytest

from clipfast.kernels import _aot


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    # The compile runs without TRITON_INTERPRET: under the interpreter @triton.jit can't be compiled.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path_factory.mktemp("aot") / "report.json"
    proc = subprocess.run([sys.executable, "-m", "clipfast.kernels._aot", "--json", str(out)],
                          env=env, capture_output=True, text=True)
    assert out.exists(), f"AOT compile crashed:\n{proc.stdout}\n{proc.stderr}"
    print(proc.stdout)
    return json.loads(out.read_text())


def test_every_kernel_module_lists_specs():
    modules = _aot.kernel_modules()
    assert modules, "no kernel modules found in clipfast.kernels"
    for module in modules:
        assert module.aot_specs(), f"{module.__name__}.aot_specs() is empty"


def test_specs_cover_every_jit_kernel():
    """A @triton.jit kernel that no spec lists would escape the compile check. Device functions imported
    from helper modules (``kernels/_tiles.py``) are inlined into the kernels that call them."""
    for module in _aot.kernel_modules():
        jitted = {name for name, obj in vars(module).items()
                  if hasattr(obj, "fn") and hasattr(obj, "arg_names") and obj.fn.__module__ == module.__name__}
        covered = {spec.kernel.__name__ for spec in module.aot_specs()}
        assert jitted <= covered, f"{module.__name__}: kernels with no AOT spec: {sorted(jitted - covered)}"


def test_all_configs_compile_without_spills(rows):
    assert {r["arch"] for r in rows} == set(_aot.ARCHS)
    bad = [f"{r['kernel']}[{r['label']}] sm_{r['arch']}: {p}" for r in rows for p in _aot.problems(r)]
    assert not bad, "\n".join(bad)
