"""``python -m clipfast.info``: versions, the extension build, and which backend each op uses here.

For an op on ``triton`` whose kernel module states its limits (``clipfast.kernels.<op>.LIMITS``), the report
says what the kernels serve (any other problem runs the op's reference) and, when ``report()`` is called in a
process that already made such a fallback, its reason (``clipfast.ops._dispatch.fallback_reason``).

Args (command line): ``--device cpu|cuda`` (default: cuda when available, else cpu).
"""
import argparse
import importlib
import importlib.util
import platform

import torch

import clipfast
from clipfast import _extension, backend


def report(device):
    """Return the report as a list of text lines."""
    lines = [
        f"clipfast {clipfast.__version__}  python {platform.python_version()}  torch {torch.__version__}"
        f" (CUDA {torch.version.cuda or 'none'})",
    ]
    if importlib.util.find_spec("triton"):
        import triton

        lines.append(f"triton {triton.__version__}  interpreter {'ON' if backend.interpreter_on() else 'off'}"
                     " (TRITON_INTERPRET)")
    else:
        lines.append("triton: not installed")
    lines.append(f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    ext = _extension.load()
    if ext is None:
        lines.append(f"extension clipfast._C: not loaded — {_extension.load_error()}")
    else:
        archs = _extension.compiled_archs()
        archs_text = "unknown (no cuobjdump)" if archs is None else (", ".join(archs) or "none (CPU-only build)")
        lines.append(f"extension clipfast._C: {ext.__file__}")
        lines.append(f"  CUDA code compiled for: {archs_text}")
    if backend.forced():
        lines.append(f"CLIPFAST_BACKEND={backend.forced()} (forced)")
    lines.append(f"backends on {device} tensors:")
    width = max(map(len, backend.OP_BACKENDS))
    for op in backend.OP_BACKENDS:
        try:
            chosen = backend.select(op, device)
        except RuntimeError as exc:
            chosen = f"error: {exc}"
        lines.append(f"  {op:<{width}}  -> {backend.describe(chosen, device)}")
        for name, why in backend.explain(op, device).items():
            if name != chosen:
                lines.append(f"  {'':<{width}}     {name}: {why}")
        if chosen == "triton":
            lines += [f"  {'':<{width}}     {line}" for line in _kernel_limits(op)]
    return lines


def _kernel_limits(op):
    """What the Triton kernels of ``op`` serve and the last fallback to the reference in this process."""
    from clipfast.ops import _dispatch

    limits = getattr(importlib.import_module(f"clipfast.kernels.{op}"), "LIMITS", None)
    lines = [f"kernels serve: {limits}; anything else runs the reference"] if limits else []
    reason = _dispatch.fallback_reason(op)
    if reason:
        lines.append(f"last fallback to the reference here: {reason}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clipfast.info", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    print("\n".join(report(torch.device(args.device))))


if __name__ == "__main__":
    main()
