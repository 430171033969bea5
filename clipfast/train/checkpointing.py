"""Checkpoints that lose nothing: atomic writes, keep-last-k, full resume state, signal-safe exit.

A checkpoint is one ``torch.save`` dict, loadable with ``torch.load(..., weights_only=True)``:

    {"epoch": int,            # epoch to resume in
     "step": int,             # optimizer steps done (global)
     "batch_in_epoch": int,   # micro-batches of ``epoch`` already consumed (data position)
     "name": str, "args": dict of str/int/float/bool/None/list,
     "state_dict": model (unwrapped, OpenCLIP key names),
     "optimizer": ..., "scaler": ... or None,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor] or None, "python": tuple, "numpy": dict},
     "metrics": dict}

Writes go to ``<path>.tmp-<pid>`` then ``os.replace`` to ``path``, so a crash or signal mid-write
never leaves a truncated checkpoint under the final name.
"""
import logging
import os
import random
import re
import signal
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

_EPOCH_RE = re.compile(r"^epoch_(\d+)(?:_step_(\d+))?\.pt$")


def atomic_save(obj, path) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_files(ckpt_dir) -> list:
    """``epoch_K[_step_S].pt`` files in ``ckpt_dir``, oldest first (by epoch, then step)."""
    found = []
    for p in Path(ckpt_dir).glob("epoch_*.pt"):
        m = _EPOCH_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)) if m.group(2) else -1, p))
    return [p for *_, p in sorted(found)]


def keep_last_k(ckpt_dir, k: int) -> list:
    """Delete all but the newest ``k`` ``epoch_*.pt`` files (``k <= 0`` keeps all); returns the deleted."""
    if k <= 0:
        return []
    files = checkpoint_files(ckpt_dir)
    doomed = files[:-k]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def resolve_resume(resume, ckpt_dir) -> "Path | None":
    """``--resume`` value to a file: a path, or ``"latest"`` = ``ckpt_dir/latest.pt`` if it exists."""
    if not resume:
        return None
    if resume == "latest":
        latest = Path(ckpt_dir) / "latest.pt"
        return latest if latest.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {resume!r} does not exist")
    return path


def rng_state() -> dict:
    """Every RNG the run draws from, in weights_only-loadable types."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })


def plain_args(args) -> dict:
    """``vars(args)`` reduced to weights_only-safe values (Paths and other objects become str)."""
    out = {}
    for k, v in vars(args).items():
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (bool, int, float, str)) or x is None else str(x) for x in v]
        else:
            out[k] = str(v)
    return out


class StopSignal:
    """Turn SIGTERM/SIGINT into a flag the loop polls, so it can save and exit between steps.

    Use as a context manager; the previous handlers come back on exit. A second signal of the same
    kind while one is pending restores the default behaviour (a second Ctrl-C kills at once).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: saving a checkpoint after the current step, then exiting", signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
        return False
