"""kernels/_launcher_memory.py: the allocation counter the loss launchers' memory figures come from."""
import pytest
import torch

from clipfast.kernels._launcher_memory import launcher_memory


def _launcher(x):
    tmp = torch.empty(1000, device=x.device)  # 4000 B, freed before the output is made
    del tmp
    out = torch.zeros(10, 10, device=x.device)  # 400 B, returned
    view = x[:2]  # a view of an input: not an allocation
    both = torch.cat([out, out])  # 800 B, freed
    del both
    return out[0], view


def test_counts_peak_and_returned_bytes():
    mem = launcher_memory(_launcher, torch.empty(8, 10, device="meta"))
    assert mem.peak == 4000 and mem.returned == 400 and mem.workspace == 3600


def test_peak_is_concurrent_bytes():
    def keep_all(x):
        return torch.empty(100, device=x.device), torch.empty(50, dtype=torch.float16, device=x.device)

    assert launcher_memory(keep_all, torch.empty(1, device="meta")).peak == 400 + 100


def test_needs_meta_tensors():
    with pytest.raises(ValueError, match="meta device"):
        launcher_memory(_launcher, torch.empty(8, 10))
