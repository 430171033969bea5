"""One writer per run folder: an exclusive ``fcntl.flock`` on ``{run_dir}/.lock`` held for the whole run.

    with RunLock(run_dir):        # RunLockedError if another live process holds it
        ...train, write metrics and checkpoints...

The lock file holds ``{"pid", "host", "started"}`` of the holder while it runs (for the refusal message) and
is emptied on release. The kernel drops a flock when its holder dies (SIGKILL, crash), so a lock file that
still names a holder but is not locked is stale: it is taken over, with a warning naming the dead holder.
The file itself is never deleted (deleting it would let two processes lock two different files).
On Linux NFS clients ``flock`` is emulated with a whole-file POSIX lock, which other hosts see too.
Forked children (DataLoader workers) share the locked file description: after a SIGKILL of the trainer
the lock lasts until they notice and exit (seconds); the refusal message names the holder's pid.
Under torchrun only rank 0 takes it (``clipfast.train.run``).
"""
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional

from clipfast.train.errors import RunLockedError, RunRefused

__all__ = ["RunLock"]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _holder(text: str) -> Optional[dict]:
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def _describe(info: Optional[dict]) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('started')})"


class RunLock:
    """Exclusive lock of ``run_dir`` (created if needed). Re-entrant use of one object is not supported.

    Attributes:
        path: the lock file.
        stale_holder: ``{"pid", "host", "started"}`` of a previous holder that died without releasing, or None.
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.stale_holder: Optional[dict] = None
        self._file = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunLockedError` naming the holder; returns self."""
        if self._file is not None:
            raise RuntimeError(f"RunLock {self.path} is already held by this object")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a live process
            f.seek(0)
            holder = _describe(_holder(f.read()))
            f.close()
            raise RunLockedError(f"run folder {str(self.run_dir)!r} is in use by {holder} (lock file {self.path}); "
                                 "wait for that run to end, or pass another --name") from None
        except OSError as e:  # ENOLCK / EOPNOTSUPP: a file system without flock (NFS without lockd, some FUSE)
            f.close()
            raise RunRefused(f"cannot lock {self.path}: {e.strerror} (a file system without flock? put --logs on a "
                             "local or lock-capable file system)") from e
        f.seek(0)
        previous = f.read().strip()
        if previous:
            self.stale_holder = _holder(previous) or {"pid": None, "host": None, "started": None}
            log.warning("taking over the stale lock %s of %s, which ended without releasing it", self.path,
                        _describe(self.stale_holder))
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        """Empty the lock file and unlock it (idempotent)."""
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.seek(0)
            f.truncate()
            f.flush()
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
