"""Harness of the spawned multi-process (gloo) tests: start the workers, collect their errors, leave cleanly.

A worker ``worker(rank, world, port, *args, errors)`` puts a traceback string on ``errors`` (a SimpleQueue, written
synchronously) for each failure and ends with :func:`leave_worker` in a ``finally``. Import everything a worker
needs at module level, before any process group exists: a gloo thread still alive at interpreter exit aborts
the worker (``clipfast.train.distributed.cleanup`` documents the race).
"""
import os
import socket
import sys

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from clipfast.train.distributed import cleanup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(worker, world: int, *args) -> None:
    """Spawn ``world`` processes of ``worker(rank, world, port, *args, errors)``; fail with every reported error."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    errors = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(worker, args=(world, free_port(), *args, errors), nprocs=world, join=True, start_method="spawn")
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, "\n".join(found)


def leave_worker() -> None:
    """Destroy the process group, then leave without interpreter finalisation (where a late gloo thread could
    still abort the process); the worker's results are already in its queue."""
    cleanup()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
