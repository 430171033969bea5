"""argparse ``type=`` callables that refuse meaningless values of numeric flags, naming the expected range.

    p.add_argument("--lr", type=positive_float)          # finite, > 0
    p.add_argument("--beta1", type=unit_interval_open)   # [0, 1)
    p.add_argument("--workers", type=int_at_least(0))

argparse reports an :class:`argparse.ArgumentTypeError` as ``argument --lr: expected a finite number > 0,
got '-1'``, so the flag and the range are both in the message and nothing has run yet. ``--config`` values
are turned into command-line tokens and go through the same callables (``clipfast.train.cli``).
"""
import argparse
import math

__all__ = ["number", "int_at_least", "positive_float", "nonnegative_float", "unit_interval_open", "fraction", "seed"]


def number(kind=float, *, low=None, high=None, low_open=False, high_open=False, name=None):
    """A ``type=`` callable: ``kind(text)`` that must be finite and in the interval ``low .. high``.

    Args:
        kind: ``int`` or ``float``. ``int`` refuses ``"2.5"`` (and ``"2.0"``): a count is a whole number.
        low, high: bounds (None: unbounded); ``low_open``/``high_open`` exclude the bound itself.
        name: the callable's ``__name__`` (argparse shows it for unconvertible text).
    """
    if kind not in (int, float):
        raise TypeError(f"kind: expected int or float, got {kind!r}")
    def fmt(x):
        return str(x) if isinstance(x, int) else f"{x:g}"

    parts = []
    if low is not None and high is not None:
        parts.append(f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}")
    elif low is not None:
        parts.append(f"{'>' if low_open else '>='} {fmt(low)}")
    elif high is not None:
        parts.append(f"{'<' if high_open else '<='} {fmt(high)}")
    what = ("an integer " if kind is int else "a finite number ") + " ".join(parts)

    def convert(text):
        try:
            value = kind(text) if kind is float or not isinstance(text, str) else int(text, 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what.strip()}, got {text!r}") from None
        if kind is int and isinstance(text, float):
            raise argparse.ArgumentTypeError(f"expected {what.strip()}, got {text!r}")
        bad = not math.isfinite(value)
        if low is not None:
            bad |= value <= low if low_open else value < low
        if high is not None:
            bad |= value >= high if high_open else value > high
        if bad:
            raise argparse.ArgumentTypeError(f"expected {what.strip()}, got {text!r}")
        return value

    convert.__name__ = name or ("int" if kind is int else "float")
    return convert


def int_at_least(low: int):
    """Integers ``>= low`` (counts, sizes, frequencies where 0 means never)."""
    return number(int, low=low)


positive_float = number(float, low=0, low_open=True)          # lr, eps, grad-clip-norm
nonnegative_float = number(float, low=0)                      # weight decay
unit_interval_open = number(float, low=0, high=1, high_open=True)  # Adam betas: [0, 1)
fraction = number(float, low=0, high=1)                       # shares: [0, 1]
seed = number(int, low=0, high=2 ** 31 - 1)                   # numpy seeds < 2**32, with room for + rank
