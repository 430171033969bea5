"""Benchmarks share one helper: run a callable and synchronize CUDA inside the timed region."""
import pytest
import torch


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@pytest.fixture
def timed(benchmark):
    """``timed(fn, *args)``: benchmark ``fn(*args)`` with CUDA synchronized inside the timed function."""

    def run(fn, *args, **kwargs):
        def call():
            out = fn(*args, **kwargs)
            synchronize()
            return out

        return benchmark(call)

    return run
