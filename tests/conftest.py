"""Test harness: Triton interpreter on before any kernel import, seeded generators, devices, markers.

``TRITON_INTERPRET=1`` must be set before a ``@triton.jit`` module is imported (else "0 active
drivers"), so it is set here, at the top, before anything imports ``clipfast.kernels``. Set
``CLIPFAST_TEST_NO_INTERPRET=1`` to test the non-interpreter CPU paths instead.
"""
import os

if os.environ.get("CLIPFAST_TEST_NO_INTERPRET") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request):
    """Each available device: cpu always (kernels through the interpreter), cuda when present."""
    return torch.device(request.param)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
