"""Names shared by every kernel module (Liger's ``ops/utils.py`` role): keep one definition here."""
import contextlib
import functools
import importlib.util
import os

import torch

# torch dtype -> the Triton/AOT signature name of a pointer to it; the dtypes the kernels serve.
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def input_precision(dtype):
    """``tl.dot``'s input precision. fp16/bf16: the tensor cores ("tf32" is ignored for them). fp32:
    ``"ieee"`` (exact fp32 products on the FMA units) by default, or ``"tf32x3"`` when the user allows
    TF32 for fp32 matmuls (``torch.backends.cuda.matmul.fp32_precision = "tf32"``, or the legacy
    ``allow_tf32 = True`` / ``torch.set_float32_matmul_precision("high")``): three TF32 tensor-core
    products a_hi·b_hi + a_hi·b_lo + a_lo·b_hi, ≈ 2⁻²² relative error per product, near fp32 — never
    plain TF32, whose 2⁻¹¹ would cost the losses ≈ 0.05 in a logit at scale 100. Read at each launch."""
    if dtype != torch.float32:
        return "tf32"
    return "tf32x3" if torch.backends.cuda.matmul.fp32_precision == "tf32" else "ieee"


@contextlib.contextmanager
def fp32_precision(value):
    """``torch.backends.cuda.matmul.fp32_precision`` set to ``value`` ("tf32", "ieee", "none") inside."""
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = value
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved


def with_fp32_precision(value, fn):
    """``fn`` run under ``fp32_precision(value)`` (for the AOT launch lists: the precision is read at launch)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with fp32_precision(value):
            return fn(*args, **kwargs)
    return run


def check_scalar(name, t, device):
    """A 1-element tensor on ``device`` (scale, bias, grad) as the 1-element fp32 tensor the kernels read."""
    if not isinstance(t, torch.Tensor) or t.numel() != 1:
        raise ValueError(f"{name}: expected a 1-element tensor, got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device}, got {t.device}")
    return t.detach().reshape(1).to(torch.float32).contiguous()


def triton_cuobjdump():
    """Path of the ``cuobjdump`` bundled with triton (found without importing triton), or None."""
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else None
