"""Reads the dashboard needs beyond the API's: search, two-way keyset paging, filter choices, live status.

Everything is scoped to one project and bounded: a page reads ``limit + 1`` rows through the
``(project_id, created_at, id)`` indexes, never the whole table. Filtering reuses the store's own filter query.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session, defer

from ..store import queries as store_queries
from ..store.models import REPORTED_STATUSES, Run, RunLabel, RunReport
from ..store.queries import RunFilters, decode_cursor, encode_cursor

# Choices offered in the filter drop-downs are capped at this many values.
MAX_CHOICES = 200
# Labels offered are those of the project's latest runs: a bounded read however many runs there are.
LABEL_WINDOW = 1000
# The runs list counts matches up to this many and then says "10,000+": counting stays bounded too.
COUNT_CAP = 10_000


@dataclass
class RunsPage:
    """One page of runs, newest first, with the cursors of the neighbouring pages (None at either end)."""

    runs: list[Run]
    reports: dict[str, RunReport]
    older: str | None
    newer: str | None
    total: int


@dataclass
class FilterChoices:
    models: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def _matching(project_id: int, filters: RunFilters, search: str | None) -> Select[Any]:
    """The store's filter query plus a case-insensitive substring search over model, branch, commit and id."""
    query = store_queries._filtered(project_id, filters)
    if search:
        query = query.where(or_(
            Run.model_name.icontains(search, autoescape=True),
            Run.git_branch.icontains(search, autoescape=True),
            Run.git_commit.istartswith(search, autoescape=True),
            Run.id.startswith(search.lower(), autoescape=True),
        ))
    return query


def runs_page(session: Session, project_id: int, filters: RunFilters, *, search: str | None = None,
              limit: int = 50, older_than: str | None = None, newer_than: str | None = None) -> RunsPage:
    """A page of at most ``limit`` runs, newest first.

    ``older_than``/``newer_than`` are cursors (see :func:`encode_cursor`) of the last/first run of the page the
    user came from; raises :class:`store_queries.BadCursor` for a cursor this app did not hand out.
    """
    query = _matching(project_id, filters, search)
    newest_first = (Run.created_at.desc(), Run.id.desc())
    older = newer = None
    if newer_than:
        created, run_id = decode_cursor(newer_than)
        query = query.where(or_(Run.created_at > created, and_(Run.created_at == created, Run.id > run_id)))
        rows = list(session.scalars(query.order_by(Run.created_at.asc(), Run.id.asc()).limit(limit + 1)))
        has_more = len(rows) > limit
        runs = list(reversed(rows[:limit]))
        newer = encode_cursor(runs[0]) if has_more and runs else None
        older = encode_cursor(runs[-1]) if runs else None
    else:
        if older_than:
            created, run_id = decode_cursor(older_than)
            query = query.where(or_(Run.created_at < created, and_(Run.created_at == created, Run.id < run_id)))
        rows = list(session.scalars(query.order_by(*newest_first).limit(limit + 1)))
        runs = rows[:limit]
        older = encode_cursor(runs[-1]) if len(rows) > limit else None
        newer = encode_cursor(runs[0]) if older_than and runs else None
    return RunsPage(runs=runs, reports=headlines(session, [r.id for r in runs]), older=older, newer=newer,
                    total=count_matching(session, project_id, filters, search))


def count_matching(session: Session, project_id: int, filters: RunFilters, search: str | None = None,
                   cap: int = COUNT_CAP) -> int:
    """Matching runs, counted up to ``cap + 1`` (a result above ``cap`` means "more than cap")."""
    limited = _matching(project_id, filters, search).with_only_columns(Run.id).order_by(None).limit(cap + 1)
    return int(session.scalar(select(func.count()).select_from(limited.subquery())) or 0)


def headlines(session: Session, run_ids: Iterable[str]) -> dict[str, RunReport]:
    """Report rows of these runs without their JSON document (one query)."""
    ids = list(run_ids)
    if not ids:
        return {}
    rows = session.scalars(select(RunReport).where(RunReport.run_id.in_(ids)).options(defer(RunReport.report)))
    return {row.run_id: row for row in rows}


def filter_choices(session: Session, project_id: int) -> FilterChoices:
    """Distinct models and branches of the project (covering-index scans) and the labels of its latest
    ``LABEL_WINDOW`` runs, for the filter drop-downs."""
    def distinct(column: Any, query: Select[Any]) -> list[str]:
        return [value for value in session.scalars(query.distinct().order_by(column).limit(MAX_CHOICES)) if value]

    return FilterChoices(
        models=distinct(Run.model_name, select(Run.model_name).where(Run.project_id == project_id)),
        branches=distinct(Run.git_branch, select(Run.git_branch).where(Run.project_id == project_id,
                                                                       Run.git_branch.is_not(None))),
        labels=distinct(RunLabel.label, select(RunLabel.label).where(RunLabel.run_id.in_(
            select(Run.id).where(Run.project_id == project_id)
            .order_by(Run.created_at.desc(), Run.id.desc()).limit(LABEL_WINDOW)))),
    )


def live_runs(session: Session, project_id: int, run_ids: Iterable[str]) -> list[tuple[Run, RunReport | None]]:
    """The project's runs among ``run_ids`` (others are silently left out) with their report headlines."""
    ids = list(dict.fromkeys(run_ids))[:200]
    if not ids:
        return []
    runs = list(session.scalars(select(Run).where(Run.project_id == project_id, Run.id.in_(ids))))
    reports = headlines(session, [r.id for r in runs if r.status in REPORTED_STATUSES])
    return [(run, reports.get(run.id)) for run in runs]


def previous_run(session: Session, run: Run) -> str | None:
    """Id of the same model's run just before ``run`` (the natural baseline for a comparison)."""
    return session.scalar(
        select(Run.id).where(
            Run.project_id == run.project_id, Run.model_name == run.model_name,
            or_(Run.created_at < run.created_at, and_(Run.created_at == run.created_at, Run.id < run.id)),
        ).order_by(Run.created_at.desc(), Run.id.desc()).limit(1)
    )


def recent_runs(session: Session, project_id: int, limit: int = 50) -> list[Run]:
    """The project's latest runs, for the comparison picker."""
    page, _ = store_queries.list_runs(session, project_id, RunFilters(), limit=limit)
    return page


def model_runs(session: Session, project_id: int, name: str, limit: int = 100) -> list[tuple[Run, RunReport | None]]:
    """The model's latest ``limit`` runs with their report headlines, oldest first (the order charts read)."""
    rows = session.execute(
        select(Run, RunReport).outerjoin(RunReport, RunReport.run_id == Run.id)
        .where(Run.project_id == project_id, Run.model_name == name)
        .order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)
        .options(defer(RunReport.report))
    ).all()
    return [(run, report) for run, report in reversed(rows)]


def parse_day(text: str | None, *, end: bool = False) -> dt.datetime | None:
    """A ``YYYY-MM-DD`` date as UTC midnight (``end``: the midnight after it, so the day is included)."""
    if not text:
        return None
    day = dt.date.fromisoformat(text)
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return start + dt.timedelta(days=1) if end else start
