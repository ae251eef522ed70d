"""A switch that hides bookkeeping work from the CPU allocation tracker.

Gradient-health hooks run inside the instrumented training step (so one pass serves both the memory profile and the
gradient statistics); the small tensors they compute (norms, per-unit activity) are not the model's memory and
must not count towards its peak.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_state = threading.local()


def is_untracked() -> bool:
    return getattr(_state, "depth", 0) > 0


@contextmanager
def untracked() -> Iterator[None]:
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
