"""Names shared by every kernel module (Liger's ``ops/utils.py`` role): keep one definition here."""
import importlib.util
import os

import torch

# torch dtype -> the Triton/AOT signature name of a pointer to it; the dtypes the kernels serve.
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def input_precision(dtype):
    """``tl.dot``'s input precision: exact fp32 products for fp32 inputs, the tensor-core path for 16-bit."""
    return "ieee" if dtype == torch.float32 else "tf32"


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
