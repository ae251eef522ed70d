"""Project-scoped reads and writes of runs for the API. Every function takes the caller's ``project_id``."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, delete, func, or_, select
from sqlalchemy.orm import Session, selectinload

from .models import Run, RunLabel, RunReport


class BadCursor(ValueError):
    """The ``cursor`` query parameter is not one this API handed out."""


@dataclass
class RunFilters:
    model: str | None = None
    status: list[str] = field(default_factory=list)
    branch: str | None = None
    commit: str | None = None
    label: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    passed: bool | None = None


def encode_cursor(run: Run) -> str:
    raw = json.dumps([run.created_at.isoformat(), run.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, run_id = json.loads(raw)
        when = dt.datetime.fromisoformat(created)
        if when.tzinfo is None or not isinstance(run_id, str):
            raise ValueError
        return when, run_id
    except (ValueError, TypeError) as exc:
        raise BadCursor("cursor is not valid; pass the next_cursor of a previous page") from exc


def get_run(session: Session, project_id: int, run_id: str, *, with_report: bool = False) -> Run | None:
    query = select(Run).where(Run.id == run_id, Run.project_id == project_id)
    if with_report:
        query = query.options(selectinload(Run.report))
    return session.scalar(query)


def _filtered(project_id: int, filters: RunFilters) -> Select[Run]:
    query = select(Run).where(Run.project_id == project_id)
    if filters.model is not None:
        query = query.where(Run.model_name == filters.model)
    statuses = list(filters.status)
    if filters.passed is not None:
        wanted = "passed" if filters.passed else "failed"
        statuses = [s for s in statuses if s == wanted] if statuses else [wanted]
        if not statuses:
            statuses = ["-none-"]
    if statuses:
        query = query.where(Run.status.in_(statuses))
    if filters.branch is not None:
        query = query.where(Run.git_branch == filters.branch)
    if filters.commit is not None:
        query = query.where(Run.git_commit == filters.commit)
    if filters.label is not None:
        # EXISTS on the (run_id, label) primary key: the planner walks the newest runs and probes each, which
        # stops after one page instead of collecting every labelled run first.
        query = query.where(
            select(RunLabel.run_id).where(RunLabel.run_id == Run.id, RunLabel.label == filters.label).exists()
        )
    if filters.since is not None:
        query = query.where(Run.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(Run.created_at < filters.until)
    return query


def list_runs(
    session: Session, project_id: int, filters: RunFilters, *, limit: int, cursor: str | None = None
) -> tuple[list[Run], str | None]:
    """A page of runs, newest first, and the cursor of the next page (None on the last page)."""
    query = _filtered(project_id, filters)
    if cursor:
        created, run_id = decode_cursor(cursor)
        query = query.where(
            or_(Run.created_at < created, and_(Run.created_at == created, Run.id < run_id))
        )
    query = query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit + 1)
    runs = list(session.scalars(query))
    next_cursor = encode_cursor(runs[limit - 1]) if len(runs) > limit else None
    return runs[:limit], next_cursor


def count_runs(session: Session, project_id: int, filters: RunFilters) -> int:
    query = _filtered(project_id, filters).with_only_columns(func.count()).order_by(None)
    return int(session.scalar(query) or 0)


def delete_run(session: Session, project_id: int, run_id: str) -> bool:
    result = session.execute(delete(Run).where(Run.id == run_id, Run.project_id == project_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


@dataclass
class ModelSummary:
    name: str
    runs: int
    last_run_at: dt.datetime
    history: list[dict[str, Any]]


def list_models(session: Session, project_id: int, *, history: int = 20) -> list[ModelSummary]:
    """Each model of the project with its run count and its latest ``history`` runs, newest model first.

    Two queries whatever the number of models: the counts, then every model's latest runs through a window.
    """
    rows = session.execute(
        select(Run.model_name, func.count(), func.max(Run.created_at))
        .where(Run.project_id == project_id)
        .group_by(Run.model_name)
        .order_by(func.max(Run.created_at).desc())
    ).all()
    rank = (
        func.row_number()
        .over(partition_by=Run.model_name, order_by=(Run.created_at.desc(), Run.id.desc()))
        .label("rank")
    )
    ranked = select(Run.id, rank).where(Run.project_id == project_id).subquery()
    histories: dict[str, list[dict[str, Any]]] = {}
    for run, report in session.execute(
        _history_query(project_id)
        .join(ranked, ranked.c.id == Run.id)
        .where(ranked.c.rank <= history)
    ).all():
        histories.setdefault(run.model_name, []).append(_history_item(run, report))
    return [
        ModelSummary(name=name, runs=count, last_run_at=last, history=histories.get(name, []))
        for name, count, last in rows
    ]


def model_history(session: Session, project_id: int, name: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """The model's latest runs with their headline figures, newest first (one query)."""
    rows = session.execute(_history_query(project_id).where(Run.model_name == name).limit(limit)).all()
    return [_history_item(run, report) for run, report in rows]


def _history_query(project_id: int) -> Select[Run, RunReport]:
    return (
        select(Run, RunReport)
        .outerjoin(RunReport, RunReport.run_id == Run.id)
        .where(Run.project_id == project_id)
        .order_by(Run.created_at.desc(), Run.id.desc())
    )


def _history_item(run: Run, report: RunReport | None) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "created_at": run.created_at,
        "git_branch": run.git_branch,
        "git_commit": run.git_commit,
        "check_s": run.check_s,
        "total_gradient_norm": report.total_gradient_norm if report else None,
        "peak_bytes": report.peak_bytes if report else None,
        "faulty_modules": report.faulty_modules if report else [],
    }
