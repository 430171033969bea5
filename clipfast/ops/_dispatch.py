"""Kernel-or-reference dispatch of the attention ops, with the reason of every fallback kept.

``use_kernels(op, device, why)`` is True when ``clipfast.backend`` selects ``triton`` for ``op`` on
``device`` and ``why()`` (the kernels' own check of this problem) returns None. Otherwise the op runs its
reference; a reason is recorded (``fallback_reason(op)``, shown by ``python -m clipfast.info`` in the
process that made the call) and logged once per distinct reason at WARNING level on ``clipfast.ops``.
The backend choice is ``clipfast.backend.resolve`` (cached; a constant of a ``torch.compile`` graph).
"""
import logging

import torch

from clipfast import backend as _backend

_log = logging.getLogger("clipfast.ops")
_FALLBACKS = {}
_LOGGED = set()


def use_kernels(op, device, why):
    """True when ``op``'s Triton kernels serve this call; ``why``: a callable returning the reason they
    can't (a string) or None. A fallback's reason is recorded and logged once."""
    if _backend.resolve(op, device) != "triton":
        return False
    reason = why()
    if reason is None:
        return True
    _FALLBACKS[op] = reason
    if not torch.compiler.is_compiling() and (op, reason) not in _LOGGED:
        _LOGGED.add((op, reason))
        _log.warning("%s: the Triton kernels can't serve %s; running the reference", op, reason)
    return False


def fallback_reason(op):
    """Why the last call of ``op`` that had the triton backend ran the reference instead (None if none did)."""
    return _FALLBACKS.get(op)
