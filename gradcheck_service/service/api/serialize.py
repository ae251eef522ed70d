"""Runs as the API answers them: one :class:`~gradcheck_service.runs.RunOut` for the list, the detail and the
dashboard's ``.json``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ...runs import Progress, RunError, RunGit, RunModel, RunOut, RunSummary, RunTimings
from ..store.models import Run, RunReport


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    return round((end - start).total_seconds(), 6) if start and end else None


def summary(report: RunReport) -> RunSummary:
    return RunSummary(
        passed=report.passed, faulty_modules=report.faulty_modules, failed_because=report.failed_because,
        inconclusive_because=report.inconclusive_because, diagnosis=report.diagnosis,
        total_gradient_norm=report.total_gradient_norm, parameter_bytes=report.parameter_bytes,
        gradient_bytes=report.gradient_bytes, optimizer_bytes=report.optimizer_bytes,
        activation_bytes=report.activation_bytes, peak_bytes=report.peak_bytes,
    )


def run_out(run: Run, *, report: RunReport | None = None, with_report: bool = False) -> RunOut:
    """A run; ``report`` adds the headline figures, ``with_report`` the full report as well."""
    out = RunOut(
        id=run.id, status=run.status,
        model=RunModel(name=run.model_name, hash=run.model_hash, kind=run.definition_kind),
        options=run.options, git=RunGit(repo=run.git_repo, branch=run.git_branch, commit=run.git_commit),
        labels=run.label_names, device=run.device, queue=run.queue,
        created_at=run.created_at, started_at=run.started_at, finished_at=run.finished_at,
        attempts=run.attempts, worker_host=run.worker_host,
        progress=Progress(stage=run.progress_stage, fraction=run.progress),
        timings=RunTimings(queued_s=_seconds(run.created_at, run.started_at),
                           run_s=_seconds(run.started_at, run.finished_at), check_s=run.check_s),
        error=RunError(code=run.error_code or "error", message=run.error_message or "")
        if run.status == "error" else None,
        summary=summary(report) if report is not None else None,
    )
    if with_report:
        out.report = report.report if report is not None else None
    return out


def run_json(run: Run, *, report: RunReport | None = None, with_report: bool = False) -> dict[str, Any]:
    """:func:`run_out` as JSON data; the full report's key is there only with ``with_report``."""
    out = run_out(run, report=report, with_report=with_report)
    return out.model_dump(mode="json", exclude=None if with_report else {"report"})
