"""Load the compiled extension ``clipfast._C`` once, keeping the error instead of raising it.

A missing or broken extension never breaks ``import clipfast``: ops fall back to their references and
``python -m clipfast.info`` shows why (``load_error()``).
"""
import functools
import importlib
import logging
import os
import re
import shutil
import subprocess

from clipfast.kernels._common import triton_cuobjdump

logger = logging.getLogger(__name__)
_error = None


@functools.lru_cache(maxsize=None)
def load():
    """Return the imported ``clipfast._C`` module (its ops registered under ``torch.ops.clipfast``),
    or None if it is absent or fails to load."""
    global _error
    try:
        return importlib.import_module("clipfast._C")
    except Exception as exc:  # ImportError, OSError (undefined symbol, wrong torch ABI), ...
        _error = f"{type(exc).__name__}: {exc}"
        logger.info("clipfast._C not loaded (%s); using reference ops", _error)
        return None


def load_error():
    """Why the extension is not loaded (None if it is, or was never asked for)."""
    load()
    return _error


def cuobjdump():
    """Path of a ``cuobjdump`` binary (the one bundled with triton, else CUDA_HOME's, else on PATH), or None."""
    candidates = [triton_cuobjdump(), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    found = [c for c in candidates if c and os.path.exists(c)]
    return found[0] if found else shutil.which("cuobjdump")


def compiled_archs():
    """CUDA code embedded in the extension, as listed by ``cuobjdump``: e.g. ``["sm_80", "sm_90",
    "compute_90"]`` (cubins, then PTX). [] for a CPU-only build, None if it can't be read."""
    module = load()
    tool = cuobjdump()
    if module is None or tool is None:
        return None
    archs = []
    for flag, prefix in (("-lelf", "sm_"), ("-lptx", "compute_")):
        out = subprocess.run([tool, flag, module.__file__], capture_output=True, text=True).stdout
        archs += sorted({prefix + m for m in re.findall(r"\.sm_(\d+a?)\.", out)})
    return archs
