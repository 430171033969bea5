"""Build clipfast and its C++/CUDA extension ``clipfast._C`` from ``csrc/``.

CPU kernels are always built. CUDA kernels are added when a CUDA toolkit and a CUDA-enabled torch are
present (or ``CLIPFAST_FORCE_CUDA=1``); we never ask ``torch.cuda.is_available()``, so GPU-less build
machines still produce the CUDA build. ``CLIPFAST_SKIP_EXTENSION=1`` (or no compiler / no torch)
gives a pure-Python install that still works: every op falls back to its PyTorch reference.

Environment: ``CUDA_HOME`` (toolkit root), ``TORCH_CUDA_ARCH_LIST`` (default ``8.0;9.0+PTX``),
``MAX_JOBS``. The source list is the glob rule in ``csrc/sources.cmake`` — CMakeLists.txt reads the same
file, so there is one list.
"""
import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def source_patterns():
    """Return {"CPP": [...], "CUDA": [...]} glob patterns from csrc/sources.cmake (shared with CMake)."""
    text = open(os.path.join(ROOT, "csrc", "sources.cmake")).read()
    found = dict(re.findall(r'set\(CLIPFAST_(CPP|CUDA)_GLOB\s+"([^"]+)"\)', text))
    return {kind: sorted(glob.glob(pattern, root_dir=ROOT)) for kind, pattern in found.items()}


def cuda_toolkit():
    """Return (CUDA_HOME, reason): the toolkit root if a CUDA build is possible, else None and why."""
    import torch

    if os.environ.get("CLIPFAST_FORCE_CUDA") == "1":
        return os.environ.get("CUDA_HOME", "/usr/local/cuda"), "forced by CLIPFAST_FORCE_CUDA=1"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU-only build"
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None and shutil.which("nvcc"):
        home = "/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return None, "no CUDA toolkit found (set CUDA_HOME to the toolkit root)"
    return home, f"CUDA toolkit at {home}, torch built with CUDA {torch.version.cuda}"


def extensions():
    if os.environ.get("CLIPFAST_SKIP_EXTENSION") == "1":
        print("clipfast: CLIPFAST_SKIP_EXTENSION=1 -> pure-Python install (reference ops only)")
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError:
        print("clipfast: torch not importable at build time -> pure-Python install")
        return [], {}
    sources = source_patterns()
    if not sources["CPP"]:
        print("clipfast: no C++ sources in csrc/ -> pure-Python install")
        return [], {}
    # torch.utils.cpp_extension picks the C++ standard torch needs. at::parallel_for is inlined into our
    # CPU kernels and only runs in parallel when they are compiled with OpenMP, like torch itself (Linux
    # wheels); the extension then shares the libgomp torch has loaded. Apple clang has no -fopenmp.
    import torch

    openmp = ["-fopenmp"] if torch.backends.openmp.is_available() and sys.platform != "darwin" else []
    # -fno-math-errno: sqrtf in a loop vectorizes only without errno (csrc/fused_adam_cpu.cpp; the pragma form
    # of the flag does not reach GCC's builtin expansion). No source here reads errno.
    cxx_flags, link_flags = ["-O3", "-fno-math-errno"] + openmp, openmp
    home, reason = cuda_toolkit()
    if home is None:
        print(f"clipfast: building the CPU extension only; CUDA skipped: {reason}")
        ext = cpp_extension.CppExtension(
            "clipfast._C", sources["CPP"], extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags
        )
    else:
        os.environ["CUDA_HOME"] = home
        cpp_extension.CUDA_HOME = home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        print(f"clipfast: building CPU + CUDA kernels ({reason}); archs {os.environ['TORCH_CUDA_ARCH_LIST']}")
        ext = cpp_extension.CUDAExtension(
            "clipfast._C",
            sources["CPP"] + sources["CUDA"],
            define_macros=[("CLIPFAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags,
        )
    build = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return [ext], {"build_ext": build}


ext_modules, cmdclass = extensions()
setup(
    packages=["clipfast", "clipfast.ops", "clipfast.nn", "clipfast.optim", "clipfast.train", "clipfast.kernels",
              "clipfast.model_configs"],
    package_dir={"clipfast.kernels": "kernels"},
    package_data={"clipfast": ["*.txt.gz", "*.md"], "clipfast.model_configs": ["*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
