"""Judging a data stream's bad samples: too many among the first loads is an error, not a silent skip.

The loader replaces bad samples (missing/corrupt images, short CSV rows, unreadable webdataset members or
shards) so batches stay full, and reports per batch how many loads failed and one example. A
:class:`BadSampleMonitor` adds them up per iteration (per rank):

    bad / loads > max_fraction      over the first ``window`` loads (good + bad; all of them if fewer)

raises :class:`~clipfast.train.errors.BadDataError` naming an example (file and row, or shard and member)
and the counts. ``max_fraction=1`` never raises (an epoch that then yields nothing is refused by the
trainer).
"""
from typing import Optional

from clipfast.train.errors import BadDataError

__all__ = ["BadSampleMonitor", "DEFAULT_MAX_BAD_FRACTION", "DEFAULT_BAD_WINDOW"]

DEFAULT_MAX_BAD_FRACTION = 0.5
DEFAULT_BAD_WINDOW = 1000


class BadSampleMonitor:
    """Counts of one pass over a dataset; :meth:`add` raises once the first ``window`` loads are judged bad.

    Args:
        max_fraction: the largest tolerated share of bad loads, in [0, 1].
        window: loads (good + bad) after which the share is judged (>= 1); :meth:`finish` judges a
            shorter pass.
        source: what is read (for the message), e.g. the CSV path or the shard spec.
    """

    def __init__(self, max_fraction: float = DEFAULT_MAX_BAD_FRACTION, window: int = DEFAULT_BAD_WINDOW,
                 source: str = "the data"):
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction: expected a share in [0, 1], got {max_fraction}")
        if window < 1:
            raise ValueError(f"window: expected >= 1, got {window}")
        self.max_fraction, self.window, self.source = float(max_fraction), int(window), source
        self.good = self.bad = 0
        self.example: Optional[str] = None
        self._judged = False

    @property
    def loads(self) -> int:
        return self.good + self.bad

    def add(self, good: int, bad: int, example: Optional[str] = None) -> None:
        """Count one batch: ``good`` samples served, ``bad`` failed loads, ``example`` one of them."""
        self.good += good
        self.bad += bad
        if self.example is None and example:
            self.example = example
        if not self._judged and self.loads >= self.window:
            self._judge()

    def finish(self) -> None:
        """End of the pass: judge it if the window was never reached."""
        if not self._judged and self.loads:
            self._judge()

    def _judge(self) -> None:
        self._judged = True
        if self.bad > self.max_fraction * self.loads:
            raise BadDataError(
                f"{self.source}: {self.bad} of the first {self.loads} sample loads failed, more than "
                f"{self.max_fraction:.0%} (--max-bad-sample-fraction, over --bad-sample-window {self.window}); "
                f"e.g. {self.example or 'no example recorded'}. Fix or filter the data, or raise the threshold")
