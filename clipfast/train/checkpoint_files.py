"""Checkpoints that lose nothing: atomic writes, keep-last-k, full resume state, signal-safe exit.

A checkpoint is one ``torch.save`` dict, loadable with ``torch.load(..., weights_only=True)``:

    {"epoch": int,            # epoch to resume in
     "step": int,             # optimizer steps done (global)
     "batch_in_epoch": int,   # micro-batches of ``epoch`` already consumed (data position)
     "name": str, "args": dict of str/int/float/bool/None/list,
     "state_dict": model (unwrapped, OpenCLIP key names),
     "optimizer": ..., "scaler": ... or None,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor] or None, "python": tuple, "numpy": dict},
     "metrics": dict,
     "batch_size": int, "world_size": int, "accum_freq": int}   # a resume must keep these (check_resumable)

Writes go to ``<path>.tmp-<pid>`` then ``os.replace`` to ``path``, so a crash or signal mid-write
never leaves a truncated checkpoint under the final name; :func:`remove_stale_temporaries` deletes the
temporaries of writers that died. :func:`find_resume` picks what ``--resume`` continues from (loaded once)
and :func:`check_resumable` refuses plain weights and another batch size, world size or accum_freq.
"""
import logging
import os
import random
import re
import signal
from pathlib import Path

import numpy as np
import torch

from clipfast.train.errors import CheckpointError

log = logging.getLogger(__name__)

_EPOCH_RE = re.compile(r"^epoch_(\d+)(?:_step_(\d+))?\.pt$")
_TMP_RE = re.compile(r"^.+\.tmp-(\d+)$")


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


def read_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist.
        CheckpointError: naming ``path`` when it is empty or cannot be read (truncated, not a torch file,
            or holding objects ``weights_only`` refuses); the cause is chained.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): an interrupted copy or write?")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - EOFError, RuntimeError (zip reader), UnpicklingError, ...
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded (truncated, not a PyTorch file, or "
                              f"refused by weights_only): {type(e).__name__}: {e}") from e


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


def is_trainer_state(state) -> bool:
    """True for a training checkpoint (clipfast's or ``open_clip_train``'s): a dict with ``state_dict`` and ``epoch``."""
    return isinstance(state, dict) and "state_dict" in state and "epoch" in state


# Fields that fix how the data position and the schedule count batches: a resume must keep them.
RUN_SHAPE_KEYS = ("batch_size", "world_size", "accum_freq")


def check_resumable(state, path, **current) -> None:
    """Refuse ``state`` (read from ``path``) for a run with ``current`` ``batch_size``/``world_size``/``accum_freq``.

    Raises:
        CheckpointError: for a plain weights file (no trainer state: suggests ``--pretrained``), or when a field of
            :data:`RUN_SHAPE_KEYS` saved in the checkpoint differs from ``current``. Checkpoints written before the
            fields existed (and OpenCLIP's) are accepted.
    """
    if not is_trainer_state(state):
        raise CheckpointError(f"--resume: {str(path)!r} is a plain weights file (a state dict without trainer state: "
                              f"epoch, step, optimizer); to start a new run from these weights pass --pretrained {path}")
    diff = [k for k in RUN_SHAPE_KEYS if state.get(k) is not None and k in current and current[k] != state[k]]
    if diff:
        saved = ", ".join(f"{k}={state[k]}" for k in diff)
        now = ", ".join(f"{k}={current[k]}" for k in diff)
        raise CheckpointError(f"--resume: {str(path)!r} was written with {saved}; this run has {now}. The data position "
                              "and the lr schedule are counted in those batches, so resuming needs the same --batch-size, "
                              "--accum-freq and number of processes; to continue with other values start a new run "
                              f"(another --name) with --pretrained {path}")


def find_resume(resume, ckpt_dir) -> tuple:
    """``--resume`` value -> ``(path, state)`` loaded once, or ``(None, None)`` for a fresh start.

    ``resume`` is None (no resume), a file, or ``"latest"``: the first loadable trainer checkpoint of
    ``ckpt_dir/latest.pt`` then ``epoch_*.pt`` newest first; files that do not load are skipped with a warning
    naming them. ``"latest"`` with no checkpoint file at all starts fresh.

    Raises:
        FileNotFoundError: an explicit file that does not exist.
        CheckpointError: an explicit file that does not load, or ``"latest"`` when checkpoint files exist but
            none loads.
    """
    if not resume:
        return None, None
    if resume != "latest":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {resume!r} does not exist")
        return path, read_checkpoint(path)
    ckpt_dir = Path(ckpt_dir)
    latest = ckpt_dir / "latest.pt"
    candidates = ([latest] if latest.is_file() else []) + checkpoint_files(ckpt_dir)[::-1]
    reasons = []
    for path in candidates:
        try:
            state = read_checkpoint(path)
            if not is_trainer_state(state):
                raise CheckpointError(f"checkpoint {str(path)!r} holds no trainer state (plain weights)")
        except CheckpointError as e:
            log.warning("--resume latest: skipping %s: %s", path, e)
            reasons.append(f"{path.name}: {e}")
            continue
        return path, state
    if candidates:
        raise CheckpointError(f"--resume latest: none of the {len(candidates)} checkpoint(s) in {str(ckpt_dir)!r} loads ("
                              + "; ".join(reasons) + "); pass --resume FILE, or move them away to start afresh")
    return None, None


def run_files(run_dir) -> list:
    """What a run folder holds that a new run would overwrite: checkpoint files and a non-empty metrics.jsonl."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(metrics)
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def remove_stale_temporaries(ckpt_dir) -> list:
    """Delete ``*.tmp-<pid>`` files of :func:`atomic_save` whose writer (another pid, on this host) is dead.

    Call it while holding the run folder's lock (no other writer is then expected). Returns the deleted paths.
    """
    removed = []
    for p in sorted(Path(ckpt_dir).glob("*.tmp-*")) if Path(ckpt_dir).is_dir() else []:
        m = _TMP_RE.match(p.name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        p.unlink(missing_ok=True)
        log.info("removed %s (a checkpoint write of process %s, which is no longer running)", p, m.group(1))
        removed.append(p)
    return removed


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
