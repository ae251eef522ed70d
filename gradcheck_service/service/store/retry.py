"""Riding out a database outage in the worker: a write is retried with backoff instead of being lost.

A worker that finished a check holds the report in memory. When PostgreSQL is down at that moment (a restart, a
failover), the write is retried until the database returns or :data:`policy` gives up, so the run completes with
the report it already computed rather than being checked again. Claims, heartbeats and error endings use the same
policy. The API does not retry: it answers 503 with ``Retry-After`` at once (see ``api/errors.py``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors that mean "the database is unreachable right now", not "this statement is wrong".
UNAVAILABLE = (OperationalError, InterfaceError)


@dataclass
class RetryPolicy:
    """How long a worker keeps trying one write, seconds: 0.5, 1, 2, 4, then every ``max_wait_s``."""

    total_s: float = 0.0  # 0: no retry (the API); a worker sets GRADCHECK_DB_RETRY_S at start
    first_wait_s: float = 0.5
    max_wait_s: float = 5.0


policy = RetryPolicy()


def configure(total_s: float) -> None:
    """Set how long writes are retried (``GRADCHECK_DB_RETRY_S``); 0 turns retrying off."""
    policy.total_s = max(0.0, float(total_s))


def retrying(session: Session, what: str, write: Callable[[], T]) -> T:
    """``write()`` (which commits), retried on a lost connection; the session is rolled back between tries.

    ``write`` must be safe to repeat: every write here is a guarded ``UPDATE`` or builds its rows afresh.
    The last error is raised when the database stays away longer than :data:`policy` allows.
    """

    def roll_back(state: object) -> None:
        with contextlib.suppress(Exception):  # the connection is gone; the rollback only resets the session
            session.rollback()
        log.warning("database unavailable during %s; retrying", what)

    attempts = Retrying(
        retry=retry_if_exception_type(UNAVAILABLE),
        stop=stop_after_delay(policy.total_s),
        wait=wait_exponential(multiplier=policy.first_wait_s, max=policy.max_wait_s),
        before_sleep=roll_back,
        reraise=True,
    )
    return attempts(write)
