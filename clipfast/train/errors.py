"""Errors of a training run that the command line reports as one clear line (no traceback).

``clipfast train`` prints ``clipfast train: error: <message>`` and exits with ``exit_status``:
2 for refusals before any work (:class:`RunRefused`: the run folder is locked or holds another run),
1 for the others (unreadable or mismatched checkpoints, data with too many bad samples, an epoch that
trained nothing).
"""

__all__ = ["RunError", "RunRefused", "RunLockedError", "CheckpointError", "BadDataError"]


class RunError(RuntimeError):
    """A run stopped or refused for the reason in the message."""

    exit_status = 1


class RunRefused(RunError):
    """Refused before any work (nothing was written)."""

    exit_status = 2


class RunLockedError(RunRefused):
    """Another live process holds the run folder's lock."""


class CheckpointError(RunError):
    """A checkpoint file that cannot be used: empty, unreadable, plain weights, another batch or world size."""


class BadDataError(RunError):
    """The data yields too many bad samples (or none at all) to train on."""
