"""The build: every CUDA source compiles with nvcc for sm_80 and sm_90 (torch-free .cu files, ~1 s
each), and the installed extension carries that code and its CPU kernels."""
import glob
import os
import shutil
import subprocess

import pytest
import torch

from clipfast import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cu")))
NVCC = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
EXTENSION_EXPECTED = os.environ.get("CLIPFAST_SKIP_EXTENSION") != "1"


@pytest.mark.skipif(not os.path.exists(NVCC), reason="no nvcc on this machine")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=os.path.basename)
def test_cuda_source_compiles_for_sm80_and_sm90(source, tmp_path):
    cmd = [NVCC, "-c", "-O3", "-std=c++17", "-I", os.path.join(ROOT, "csrc"),
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           "-Xptxas", "-warn-spills", source, "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "spill" not in proc.stderr.lower(), proc.stderr


def test_cuda_sources_exist():
    assert CUDA_SOURCES, "csrc/ has no .cu files"


@pytest.mark.skipif(not EXTENSION_EXPECTED, reason="CLIPFAST_SKIP_EXTENSION=1: pure-Python install")
def test_extension_loads_with_cpu_kernels():
    assert _extension.load() is not None, _extension.load_error()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("clipfast::quick_gelu_fwd", "CPU")


@pytest.mark.skipif(not EXTENSION_EXPECTED or torch.version.cuda is None, reason="CPU-only torch: no CUDA build")
def test_extension_carries_sm80_and_sm90_code():
    archs = _extension.compiled_archs()
    assert archs is not None, "cuobjdump not found"
    assert {"sm_80", "sm_90"} <= set(archs), archs
    assert torch._C._dispatch_has_kernel_for_dispatch_key("clipfast::quick_gelu_fwd", "CUDA")


@pytest.mark.skipif(not EXTENSION_EXPECTED or not torch.backends.openmp.is_available(),
                    reason="torch without OpenMP: at::parallel_for uses its own thread pool")
def test_cpu_kernels_are_built_with_openmp():
    """With torch's OpenMP backend, at::parallel_for only runs in parallel in code compiled with -fopenmp:
    the extension must call into libgomp (GOMP_parallel)."""
    ext = _extension.load()
    assert ext is not None, _extension.load_error()
    with open(ext.__file__, "rb") as f:
        assert b"GOMP_parallel" in f.read(), "clipfast._C was built without -fopenmp: its CPU kernels run serially"
