"""The device memory a launcher allocates, counted at any size without a GPU.

``launcher_memory(fn, *args, **kwargs)`` runs a launcher on ``meta`` tensors (no memory, no data) inside
``_aot_capture.capture`` (its kernel launches compile and run nothing) under a ``TorchDispatchMode`` that
sees every tensor the launcher's torch calls create. A new storage counts its bytes while any tensor
viewing it lives (weak references), so the peak is the launcher's high-water mark of its own allocations,
the figure a CUDA caching allocator would add to ``max_memory_allocated`` (before its 512-byte rounding).
Inputs created outside the call are not counted.
"""
import dataclasses
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ._aot_capture import capture


@dataclasses.dataclass(frozen=True)
class LauncherMemory:
    """Bytes: ``peak`` of everything the call had allocated at once; ``returned``, the storages the call
    allocated that its result still holds (the outputs); ``workspace = peak − returned``, an upper bound
    on what it needs beside its outputs."""

    peak: int
    returned: int

    @property
    def workspace(self):
        return self.peak - self.returned


class _AllocationTracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.views = {}  # storage id -> live tensors viewing it (of storages allocated here)
        self.sizes = {}

    @staticmethod
    def _key(t):
        return t.untyped_storage()._cdata

    def _release(self, key):
        self.views[key] -= 1
        if not self.views[key]:
            self.live -= self.sizes.pop(key)
            del self.views[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {self._key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = self._key(t)
            if key not in self.views:
                if key in inputs:  # a view of a tensor made outside the call
                    continue
                self.views[key], self.sizes[key] = 0, t.untyped_storage().nbytes()
                self.live += self.sizes[key]
                self.peak = max(self.peak, self.live)
            self.views[key] += 1
            weakref.finalize(t, self._release, key)
        return out


def launcher_memory(fn, *args, **kwargs):
    """``LauncherMemory`` of ``fn(*args, **kwargs)``; the tensor arguments must be on the ``meta`` device."""
    leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    if any(t.device.type != "meta" for t in leaves):
        raise ValueError("launcher_memory: expected every tensor argument on the meta device")
    tracker = _AllocationTracker()
    with capture(), tracker:
        result = fn(*args, **kwargs)
    returned = sum(tracker.sizes.get(k, 0) for k in {tracker._key(t) for t in tree_leaves(result)
                                                         if isinstance(t, torch.Tensor)})
    return LauncherMemory(tracker.peak, returned)
