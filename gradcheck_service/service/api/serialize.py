"""Runs as JSON: the same shape for the list, the detail and the CLI (see ``schemas.RunOut``)."""

from __future__ import annotations

from typing import Any

from ..store.models import Run, RunReport


def _seconds(start: Any, end: Any) -> float | None:
    return round((end - start).total_seconds(), 6) if start and end else None


def summary(report: RunReport) -> dict[str, Any]:
    return {
        "passed": report.passed,
        "faulty_modules": report.faulty_modules,
        "failed_because": report.failed_because,
        "inconclusive_because": report.inconclusive_because,
        "diagnosis": report.diagnosis,
        "total_gradient_norm": report.total_gradient_norm,
        "parameter_bytes": report.parameter_bytes,
        "gradient_bytes": report.gradient_bytes,
        "optimizer_bytes": report.optimizer_bytes,
        "activation_bytes": report.activation_bytes,
        "peak_bytes": report.peak_bytes,
    }


def run_json(run: Run, *, report: RunReport | None = None, with_report: bool = False) -> dict[str, Any]:
    """A run; ``report`` adds the headline figures, ``with_report`` the full report as well."""
    out: dict[str, Any] = {
        "id": run.id,
        "status": run.status,
        "model": {"name": run.model_name, "hash": run.model_hash, "kind": run.definition_kind},
        "options": run.options,
        "git": {"repo": run.git_repo, "branch": run.git_branch, "commit": run.git_commit},
        "labels": run.label_names,
        "device": run.device,
        "queue": run.queue,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "attempts": run.attempts,
        "worker_host": run.worker_host,
        "progress": {"stage": run.progress_stage, "fraction": run.progress},
        "timings": {
            "queued_s": _seconds(run.created_at, run.started_at),
            "run_s": _seconds(run.started_at, run.finished_at),
            "check_s": run.check_s,
        },
        "error": {"code": run.error_code or "error", "message": run.error_message or ""}
        if run.status == "error" else None,
    }
    out["summary"] = summary(report) if report is not None else None
    if with_report:
        out["report"] = report.report if report is not None else None
    return out
