"""Pick the backend each op runs on, and say why.

Backends, fastest first:

- ``triton``: the op's Triton kernels (``clipfast.kernels.<op>``) — for CUDA tensors when triton is
  importable, and for CPU tensors under ``TRITON_INTERPRET=1`` (how the tests prove kernels here).
- ``extension``: the compiled extension ``clipfast._C`` (``torch.ops.clipfast.<op>_fwd``/``_bwd``), which
  holds a CUDA kernel and a C++ CPU kernel sharing the per-element math; used when it is loaded and
  has a kernel for the tensor's device (so on CPU tensors it is the C++ kernel, not CUDA).
- ``reference``: the op's plain PyTorch implementation (``clipfast.ops.<op>.<op>_ref``); always there.

``CLIPFAST_BACKEND=reference|triton|extension`` forces one for every op that has it (an op without it
uses ``reference``; ``cuda`` is accepted as the extension's old name); forcing a backend this machine can't
run raises an error that says why.

Ops call ``resolve(op, device)``: ``select`` cached per (op, device, environment) and a constant of a
``torch.compile`` graph (the extension and environment checks run once, eagerly, at trace time).
"""
import importlib.util
import os

import torch

from clipfast import _extension

BACKENDS = ("reference", "triton", "extension")
ALIASES = {"cuda": "extension"}  # CLIPFAST_BACKEND values kept for compatibility

# The accelerated backends each op has, in order of preference. ``reference`` is implied for all.
OP_BACKENDS = {
    "quick_gelu": ("triton", "extension"),
    "contrastive_loss": ("triton",),
    "sigmoid_loss": ("triton",),
    "attention": ("triton",),
    "attention_pool": ("triton",),
    "layer_norm": (),
    "fused_adam": ("triton", "extension"),
}


def interpreter_on():
    """True when ``TRITON_INTERPRET=1``: Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_reason(device):
    """None if Triton kernels can run on ``device``, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        return None if interpreter_on() else "CPU tensors need TRITON_INTERPRET=1 (interpreter, tests only)"
    return f"no Triton backend for device type {device.type!r}"


def _extension_reason(op, device):
    """None if the extension has ``op`` for ``device``, else why not."""
    if _extension.load() is None:
        return f"clipfast._C not loaded ({_extension.load_error()})"
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    name = f"clipfast::{op}_fwd"
    if key is None or not torch._C._dispatch_has_kernel_for_dispatch_key(name, key):
        built = "built" if torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU") else "has no such op"
        return f"clipfast._C {built} without a {device.type} kernel for {op}"
    return None


def _reason(op, backend, device):
    if backend == "reference":
        return None
    if backend not in OP_BACKENDS[op]:
        return f"{op} has no {backend} implementation"
    return _triton_reason(device) if backend == "triton" else _extension_reason(op, device)


def _check(op, device):
    if op not in OP_BACKENDS:
        raise ValueError(f"op: unknown op {op!r}; expected one of {sorted(OP_BACKENDS)}")
    return torch.device(device)


def forced():
    """The backend forced by ``CLIPFAST_BACKEND``, or None."""
    value = os.environ.get("CLIPFAST_BACKEND", "").strip().lower()
    value = ALIASES.get(value, value)
    if value and value not in BACKENDS:
        raise ValueError(f"CLIPFAST_BACKEND={value!r}: expected one of {BACKENDS}")
    return value or None


def select(op, device):
    """Return the backend ``op`` runs on for tensors on ``device``: "triton", "extension" or "reference"."""
    device = _check(op, device)
    want = forced()
    if want is not None:
        if want not in OP_BACKENDS[op]:
            return "reference"
        reason = _reason(op, want, device)
        if reason is not None:
            raise RuntimeError(f"CLIPFAST_BACKEND={want} but {op} can't run on {want} for {device}: {reason}")
        return want
    for backend in OP_BACKENDS[op]:
        if _reason(op, backend, device) is None:
            return backend
    return "reference"


_RESOLVED = {}


@torch.compiler.assume_constant_result
def _resolve(op, device):
    key = (op, device, os.environ.get("CLIPFAST_BACKEND"), os.environ.get("TRITON_INTERPRET"))
    if key not in _RESOLVED:
        _RESOLVED[key] = select(op, torch.device(device))
    return _RESOLVED[key]


def resolve(op, device):
    """``select(op, device)``, cached; under ``torch.compile`` a constant of the graph (the environment is
    read when the graph is traced)."""
    return _resolve(op, str(device))


def describe(backend, device):
    """Say where ``backend`` runs for tensors on ``device`` ("extension" on CPU tensors is _C's C++ kernel)."""
    kind = torch.device(device).type
    if backend == "extension":
        return "extension (clipfast._C, C++ CPU kernel)" if kind == "cpu" else "extension (clipfast._C, CUDA kernel)"
    if backend == "triton" and kind == "cpu":
        return "triton (interpreter)"
    return backend


def explain(op, device):
    """Map each backend to "available" or the reason ``op`` can't use it on ``device``."""
    device = _check(op, device)
    return {b: _reason(op, b, device) or "available" for b in BACKENDS}
