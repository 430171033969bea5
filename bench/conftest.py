"""bench/ is on sys.path (``from shapes import ...``, ``import harness``); the ``timed`` fixture is
``harness.timed`` bound to pytest-benchmark's ``benchmark``."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


@pytest.fixture
def timed(benchmark):
    """``timed(fn, *args, rounds=None, **kwargs)``: ``harness.timed`` (CUDA synchronised inside the timed
    function); ``rounds`` fixes the rounds for slow cases."""

    def run(fn, *args, **kwargs):
        return harness.timed(benchmark, fn, *args, **kwargs)

    return run
