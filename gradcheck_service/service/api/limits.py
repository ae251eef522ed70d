"""Rate limits per API token and queue quotas per project; both answer ``429`` with ``Retry-After``.

* ``GRADCHECK_RATE_LIMIT`` (e.g. ``"120/minute"``, several joined by ``;``): requests to ``/api/v1`` per token (per
  client address for requests without a token), counted by Flask-Limiter in shared storage -- the broker's Redis by
  default, or ``GRADCHECK_RATE_LIMIT_STORAGE_URL`` -- so the limit holds across every gunicorn worker and API
  machine. Without Redis (the embedded mode) the counters are per process. While the storage is unreachable each
  process counts on its own (Flask-Limiter's in-memory fallback), so an outage never turns into errors.
* ``GRADCHECK_SUBMIT_RATE_LIMIT`` (default ``60/minute``; ``0`` turns it off): submissions (``POST
  /api/v1/runs``) per token, accepted or refused, in the same storage and on top of the limit above. Each
  submission is parsed and validated by the API (an archive is unpacked), so this bounds what one token can make
  the API do even when no general limit is set.
* ``GRADCHECK_MAX_QUEUED_PER_PROJECT``: runs one project may have ``queued`` or ``running`` at once; a submission
  over it is refused. Counted in the database under a lock on the project's row, so concurrent submissions
  through different processes cannot overshoot it (on PostgreSQL; SQLite serialises writers anyway).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any, cast

from flask import Flask, Response, request
from flask.typing import RouteCallable
from flask_limiter import Limiter, RequestLimit
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..store.models import Project, Run
from .errors import ApiError, error_response
from .openapi import PUBLIC_PATHS

# Seconds a client is told to wait when its project's queue is full: about the time a few small checks take.
QUEUE_FULL_RETRY_AFTER_S = 10
# Seconds the limiter waits for its Redis before letting the request through (it must not stall the API).
STORAGE_TIMEOUT_S = 1.0
# The endpoint of POST /api/v1/runs, which SUBMIT_RATE_LIMIT guards.
SUBMIT_VIEW = "api.submit_run"


def client_key() -> str:
    """The rate-limit key: a digest of the bearer token (never the token itself), else the client address."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "token:" + hashlib.sha256(token.strip().encode("utf-8")).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


def _exempt() -> bool:
    return not request.path.startswith("/api/v1/") or request.path in PUBLIC_PATHS


def _storage(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    url = config.get("RATE_LIMIT_STORAGE_URL") or ""
    broker = str(config["BROKER_URL"])
    if not url and broker.startswith(("redis://", "rediss://")):
        url = broker
    if url.startswith(("redis://", "rediss://")):
        return url, {"socket_connect_timeout": STORAGE_TIMEOUT_S, "socket_timeout": STORAGE_TIMEOUT_S}
    return url or "memory://", {}


def init_limits(app: Flask) -> Limiter | None:
    """Attach a limiter to ``app`` when ``RATE_LIMIT`` or ``SUBMIT_RATE_LIMIT`` is set (one limiter per app, so
    tests can make many). Call it after the API's blueprint is registered: it wraps the submission view."""
    rate, submit_rate = app.config.get("RATE_LIMIT"), app.config.get("SUBMIT_RATE_LIMIT")
    if not rate and not submit_rate:
        return None
    uri, options = _storage(dict(app.config))
    # Application limits: one budget per token shared by every route (not one per route).
    limiter = Limiter(
        client_key, app=app, application_limits=[str(rate)] if rate else [], application_limits_exempt_when=_exempt,
        storage_uri=uri, storage_options=options, strategy="moving-window",
        on_breach=_too_many("GRADCHECK_RATE_LIMIT", "requests"), swallow_errors=True,
        in_memory_fallback_enabled=True, key_prefix=f"{app.config.get('BROKER_KEY_PREFIX') or ''}gradcheck-ratelimit",
    )
    if submit_rate:
        limit = limiter.limit(str(submit_rate), scope="submit", override_defaults=False,
                              on_breach=_too_many("GRADCHECK_SUBMIT_RATE_LIMIT", "submissions"))
        app.view_functions[SUBMIT_VIEW] = cast(RouteCallable, limit(app.view_functions[SUBMIT_VIEW]))
    app.extensions["gradcheck_limiter"] = limiter
    return limiter


def _too_many(setting: str, what: str) -> Callable[[RequestLimit], Response]:
    """The 429 answer of a limit, with the seconds until the oldest counted request leaves the window."""

    def answer(limit: RequestLimit) -> Response:
        # reset_at is whole seconds, rounded up: never promise a wait longer than the window itself
        wait_s = min(max(1, math.ceil(limit.reset_at - time.time())), limit.limit.get_expiry())
        return error_response(429, "rate_limited", f"rate limit of {limit.limit} {what} per token reached "
                              f"({setting}); retry in {wait_s} s", {"Retry-After": str(wait_s)})

    return answer


def check_queue_quota(session: Session, project_id: int, limit: int | None) -> None:
    """Refuse a submission (429) when the project already has ``limit`` runs queued or running.

    Locks the project's row until the caller commits, so two submissions cannot both take the last slot.
    """
    if not limit:
        return
    session.execute(select(Project.id).where(Project.id == project_id).with_for_update())
    active = session.scalar(
        select(func.count()).select_from(Run).where(Run.project_id == project_id,
                                                    Run.status.in_(("queued", "running")))
    ) or 0
    if active >= int(limit):
        session.rollback()
        raise ApiError(429, f"the project has {active} runs queued or running, its limit is {int(limit)} "
                       "(GRADCHECK_MAX_QUEUED_PER_PROJECT); retry when some have finished",
                       code="queue_full", headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
                       limit=int(limit), active=int(active))
