"""State changes of a run made by workers and the reaper; each one commits on its own.

A run moves ``queued -> running -> passed|failed|inconclusive|error``. Every start of a run increments ``attempts``
in its own committed transaction *before* any work, so a job that kills its worker is counted even though the
worker never got to write anything else; past ``max_attempts`` it ends as ``error`` instead of looping.

Each start also writes a fresh ``claim`` token. Heartbeats and the final write only succeed for the current claim,
so when a run is delivered twice (a reaped run whose old message comes back), only one report is ever stored.

A worker notes when it takes a run's message off the queue (:func:`mark_received`: ``heartbeat_at`` of a run still
``queued``). A worker killed between that moment and the claim leaves an unacknowledged message that Redis would
only hand out again after its visibility timeout (an hour or more); the reaper sees the old receipt and requeues.

A worker rides out a database outage (``retry.py``): claims, final writes and error endings are retried with
backoff, and a heartbeat that cannot be written is skipped, so a finished check keeps its report until it is stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased

from .ingest import report_rows
from .models import REPORTED_STATUSES, Run, utcnow
from .retry import UNAVAILABLE, retrying

REQUEUED = "requeued"  # progress_stage of a run the reaper sent again (heartbeat_at: when)
log = logging.getLogger(__name__)

ClaimOutcome = Literal["run", "gone", "exhausted"]
REPORT_NOT_STORED = "report_not_stored"


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    run_id: str
    claim: str = ""
    attempts: int = 0


def claim_run(session: Session, run_id: str, worker_host: str) -> Claim:
    """Start an attempt at ``run_id``: count it, take ownership, commit. ``gone``: deleted or already finished."""
    return retrying(session, f"the claim of run {run_id}", lambda: _claim(session, run_id, worker_host))


def _claim(session: Session, run_id: str, worker_host: str) -> Claim:
    token = uuid.uuid4().hex
    now = utcnow()
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_(("queued", "running")))
        .values(
            attempts=Run.attempts + 1, status="running", claim=token, worker_host=worker_host[:255],
            started_at=now, heartbeat_at=now, progress=0.0, progress_stage="starting",
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return Claim("gone", run_id)
    run = session.execute(select(Run.attempts, Run.max_attempts).where(Run.id == run_id)).one()
    if run.attempts > run.max_attempts:
        lost = run.attempts - 1
        session.execute(
            update(Run).where(Run.id == run_id, Run.claim == token).values(
                status="error", finished_at=now, error_code="worker_lost", claim=None,
                error_message=f"worker lost {lost} times: the run was started {lost} times and its worker "
                f"vanished each time (killed, out of memory, or crashed); not retried again",
            )
        )
        session.commit()
        return Claim("exhausted", run_id, attempts=run.attempts)
    session.commit()
    return Claim("run", run_id, token, run.attempts)


def heartbeat(session: Session, run_id: str, claim: str, stage: str | None, fraction: float | None) -> bool:
    """Refresh liveness and progress; False when this delivery no longer owns the run (stop working on it).

    With the database unreachable the beat is skipped (True: keep working); the final write retries instead.
    """
    try:
        return _heartbeat(session, run_id, claim, stage, fraction)
    except UNAVAILABLE as exc:
        with contextlib.suppress(Exception):
            session.rollback()
        log.warning("heartbeat of run %s skipped, database unavailable: %s", run_id, exc)
        return True


def _heartbeat(session: Session, run_id: str, claim: str, stage: str | None, fraction: float | None) -> bool:
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if stage is not None:
        values["progress_stage"] = stage[:64]
    if fraction is not None:
        values["progress"] = max(0.0, min(1.0, float(fraction)))
    result = session.execute(
        update(Run).where(Run.id == run_id, Run.claim == claim, Run.status == "running").values(**values)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_run(session: Session, run_id: str, claim: str, report: dict[str, Any]) -> str:
    """Store the report and its verdict in one transaction; returns the run's new status (``passed``, ``failed`` or
    ``inconclusive``), or ``superseded`` when the run was taken over or deleted.

    Retried through a database outage (the report stays in this process until it is written). A report the
    database refuses (a value it cannot hold) ends the run at once as ``error`` with code ``report_not_stored`` and
    the database's reason (``error`` returned): checking the model again would only produce the same report."""
    try:
        stored = retrying(session, f"the report of run {run_id}", lambda: _finish(session, run_id, claim, report))
    except UNAVAILABLE:
        raise
    except (SQLAlchemyError, ValueError, TypeError) as exc:
        with contextlib.suppress(Exception):
            session.rollback()
        log.error("the report of run %s could not be stored: %s", run_id, exc)
        fail_run(session, run_id, claim, REPORT_NOT_STORED,
                 f"the check finished but its report could not be stored: {_refusal(exc)}")
        return "error"
    return stored or "superseded"


def run_status(report: Mapping[str, Any]) -> str:
    """The status a finished run gets from its report: the verdict (reports older than it: passed or failed)."""
    verdict = report.get("verdict")
    if verdict in REPORTED_STATUSES:
        return str(verdict)
    return "passed" if report.get("passed") else "failed"


def _refusal(exc: Exception) -> str:
    """The database's own words for a refused write (first lines, without the statement SQLAlchemy appends)."""
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {' '.join(lines[:3])}"[:1000]


def _finish(session: Session, run_id: str, claim: str, report: dict[str, Any]) -> str | None:
    status = run_status(report)
    timings = report.get("timings") or {}
    result = session.execute(
        update(Run).where(Run.id == run_id, Run.claim == claim, Run.status == "running").values(
            status=status, finished_at=utcnow(), progress=1.0,
            progress_stage="done", check_s=timings.get("total_s"), claim=None,
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return None
    session.add_all(report_rows(run_id, report))
    try:
        session.commit()
    except IntegrityError:  # a report for this run exists already (unique run_id)
        session.rollback()
        return None
    return status


def fail_run(session: Session, run_id: str, claim: str | None, code: str, message: str) -> bool:
    """End the run as ``error`` with a reason; with ``claim=None`` any non-terminal run is ended."""
    return retrying(session, f"the error ending of run {run_id}",
                    lambda: _fail(session, run_id, claim, code, message))


def _fail(session: Session, run_id: str, claim: str | None, code: str, message: str) -> bool:
    query = update(Run).where(Run.id == run_id, Run.status.in_(("queued", "running")))
    if claim is not None:
        query = query.where(Run.claim == claim)
    result = session.execute(
        query.values(status="error", finished_at=utcnow(), error_code=code[:32], error_message=message, claim=None)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_received(session: Session, run_id: str, worker_host: str) -> bool:
    """A worker received the run's message and is about to start it; False when the run is no longer queued."""
    result = session.execute(
        update(Run).where(Run.id == run_id, Run.status == "queued").values(
            heartbeat_at=utcnow(), worker_host=worker_host[:255], progress_stage="received")
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def reap_stale_runs(session: Session, stale_after_s: float) -> list[str]:
    """Runs whose worker vanished, back to ``queued`` (ids returned, for the caller to enqueue after this commit):

    * ``running`` with no heartbeat for ``stale_after_s`` -- or ``error`` when their attempts are used up;
    * ``queued`` but received by a worker ``stale_after_s`` ago and never started (the worker died holding it);
    * ``queued``, its message (first or requeued) never received, while a run sent after it on the same queue was
      started ``stale_after_s`` ago. Kombu's Redis transport pops a message before it records it as
      unacknowledged, so a worker killed in between loses it without a trace; the queue is first-in first-out, so
      the later run's start proves the earlier message was taken.

    A requeued run keeps the time it was sent again in ``heartbeat_at`` (``progress_stage`` "requeued"), so its new
    message is watched the same way as a first one.
    """
    now = utcnow()
    threshold = now - dt.timedelta(seconds=stale_after_s)
    stale = session.execute(
        select(Run.id, Run.attempts, Run.max_attempts).where(
            Run.status == "running", or_(Run.heartbeat_at < threshold, Run.heartbeat_at.is_(None))
        )
    ).all()
    requeue: list[str] = []
    for run_id, attempts, max_attempts in stale:
        guard = update(Run).where(
            Run.id == run_id, Run.status == "running",
            or_(Run.heartbeat_at < threshold, Run.heartbeat_at.is_(None)),
        )
        if attempts >= max_attempts:
            session.execute(guard.values(
                status="error", finished_at=now, error_code="worker_lost", claim=None,
                error_message=f"worker lost {attempts} times: no heartbeat for {stale_after_s:.0f} s after "
                f"attempt {attempts} of {max_attempts}; not retried again",
            ))
        elif session.execute(guard.values(
            status="queued", claim=None, heartbeat_at=now, progress=None, progress_stage=REQUEUED,
        )).rowcount:  # type: ignore[attr-defined]
            requeue.append(run_id)
    received = (Run.status == "queued", Run.progress_stage == "received", Run.heartbeat_at < threshold)
    for run_id in session.scalars(select(Run.id).where(*received)).all():
        if session.execute(update(Run).where(Run.id == run_id, *received)
                           .values(heartbeat_at=now, progress_stage=REQUEUED)).rowcount:  # type: ignore[attr-defined]
            requeue.append(run_id)
    # When the message now on the queue was sent: at submission, or when the reaper sent it again.
    first = (Run.attempts == 0) & Run.progress_stage.is_(None)
    again = Run.progress_stage == REQUEUED
    later = aliased(Run)
    never_received = (Run.status == "queued", first | again)
    sent_at = case((again, func.coalesce(Run.heartbeat_at, Run.created_at)), else_=Run.created_at)
    lost = session.scalars(select(Run.id).where(
        *never_received,
        select(later.id).where(later.queue == Run.queue, later.created_at > sent_at,
                               later.started_at < threshold).exists(),
    )).all()
    for run_id in lost:
        if session.execute(update(Run).where(Run.id == run_id, *never_received)
                           .values(heartbeat_at=now, progress_stage=REQUEUED)).rowcount:  # type: ignore[attr-defined]
            requeue.append(run_id)
    session.commit()
    return requeue


def record_worker_environment(session: Session, worker: str, queues: list[str]) -> None:
    """Store (or refresh) the Python version and packages of the worker ``worker`` (its Celery node name)."""
    from ..environment import installed_packages, python_version
    from .models import WorkerEnvironment

    row = session.get(WorkerEnvironment, worker) or WorkerEnvironment(worker=worker)
    row.queues, row.python, row.packages, row.seen_at = queues, python_version(), installed_packages(), utcnow()
    session.add(row)
    session.commit()
