"""Run routes: submit, read, list with filters and cursor paging, models, compare, definition, delete."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from flask import current_app, g, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import defer

from .. import config as service_config
from ..extensions import RUN_TASK, gpu_workers_expected, queue_for_device, store
from ..store import queries
from ..store.compare import compare_runs
from ..store.lifecycle import fail_run
from ..store.models import RUN_STATUSES, Run, RunFile, RunLabel, RunReport
from . import bp
from .errors import ApiError, validation_error
from .limits import check_queue_quota
from .openapi import documented
from .schemas import (
    Comparison,
    Definition,
    ErrorOut,
    ModelList,
    RunCreated,
    RunOut,
    RunPage,
    RunQuery,
    RunSubmission,
)
from .serialize import run_json
from .submission import _pydantic_problems, parse_submission, text_problem

# Run ids are UUID4 hex; anything else names no run (and is never sent to the database).
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def _no_such_run(run_id: str) -> ApiError:
    return ApiError(404, f"no run {run_id[:64]!r} in project {g.project_name!r}")


def _scoped_run(run_id: str) -> Run:
    run = queries.get_run(store.session(), g.project_id, run_id) if _RUN_ID.fullmatch(run_id) else None
    if run is None:
        raise _no_such_run(run_id)
    return run


def _check_body_size() -> None:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit and request.content_length and request.content_length > limit:
        raise ApiError(413, f"the request body ({request.content_length:,} bytes) is larger than the limit of "
                       f"{limit:,} bytes")


def _timeout(requested: float | None) -> float:
    config = current_app.config
    if requested is None:
        return float(config["RUN_TIMEOUT_S"])
    if requested > float(config["MAX_RUN_TIMEOUT_S"]):
        raise validation_error([("$.metadata.timeout_s", f"{requested:g} s is over this server's limit of "
                                 f"{float(config['MAX_RUN_TIMEOUT_S']):g} s")])
    return float(requested)


@bp.post("/runs")
@documented("Submit a model for checking", body=RunSubmission, multipart=True,
            responses={202: RunCreated, 413: ErrorOut, 415: ErrorOut, 422: ErrorOut, 429: ErrorOut, 503: ErrorOut})
def submit_run() -> ResponseReturnValue:
    """A JSON spec (JSON body) or a model file (multipart field ``model``) plus options and metadata. The run is
    committed first, then enqueued on the ``cpu`` or ``gpu`` queue by its device."""
    _check_body_size()
    submission = parse_submission(request)
    timeout_s = _timeout(submission.metadata.timeout_s)
    device = submission.options.device
    if queue_for_device(device) == "gpu" and not gpu_workers_expected(current_app.config):
        # Refused rather than queued: no worker of this service takes the gpu queue, so the run would wait forever.
        raise validation_error([("$.options.device", f"{device!r} needs a GPU worker and this service has none "
                                 "(no CUDA on the embedded worker's machine, or GRADCHECK_GPU_WORKERS=0); "
                                 "submit with device 'cpu'")])
    session = store.session()
    check_queue_quota(session, g.project_id, current_app.config.get("MAX_QUEUED_PER_PROJECT"))
    run = Run(
        project_id=g.project_id, status="queued", model_name=submission.name, model_hash=submission.model_hash,
        definition_kind=submission.kind, definition=submission.source, layout=submission.layout,
        files=[RunFile(path=path, content=text) for path, text in (submission.files or {}).items()],
        options=submission.options.model_dump(mode="json"), git_repo=submission.metadata.git.repo,
        git_branch=submission.metadata.git.branch, git_commit=submission.metadata.git.commit, device=device,
        queue=queue_for_device(device), timeout_s=timeout_s,
        max_attempts=int(current_app.config["MAX_ATTEMPTS"]),
        labels=[RunLabel(label=label) for label in dict.fromkeys(submission.metadata.labels)],
    )
    session.add(run)
    session.commit()  # enqueue only after the row is committed: a worker must always find its run
    config = current_app.config
    try:
        current_app.extensions["celery"].send_task(
            RUN_TASK, args=[run.id], queue=run.queue,
            soft_time_limit=service_config.soft_time_limit_s(config, timeout_s),
            time_limit=service_config.hard_time_limit_s(config, timeout_s),
        )
    except Exception as exc:  # broker down: the run cannot be queued, say so and do not leave it dangling
        current_app.logger.warning("enqueue of run %s failed: %s", run.id, exc)
        fail_run(session, run.id, None, "broker_unavailable", f"the queue was unreachable at submission: {exc}")
        raise ApiError(503, "the queue is unavailable; retry shortly", headers={"Retry-After": "5"}) from None
    url = url_for("api.get_run", run_id=run.id)
    body = {"id": run.id, "status": "queued", "queue": run.queue, "url": url}
    return jsonify(body), 202, {"Location": url}


@bp.get("/runs/<run_id>")
@documented("A run: status, progress, timings, error, and the report when finished",
            responses={200: RunOut, 404: ErrorOut})
def get_run(run_id: str) -> ResponseReturnValue:
    run = _scoped_run(run_id)
    report = store.session().get(RunReport, run.id)
    return jsonify(run_json(run, report=report, with_report=True))


@bp.get("/runs/<run_id>/definition")
@documented("The definition as submitted (JSON spec, Python source, or every file of a repository archive)",
            responses={200: Definition, 404: ErrorOut})
def get_definition(run_id: str) -> ResponseReturnValue:
    """``source`` is the spec, the model file or the archive's check file; for an archive, ``entry`` names the
    check file, ``pythonpath`` its import roots and ``files`` holds every file with its content."""
    run = _scoped_run(run_id)
    body: dict[str, Any] = {"kind": run.definition_kind, "name": run.model_name, "hash": run.model_hash,
                            "source": run.definition}
    if run.layout:
        body.update(entry=run.layout.get("entry"), pythonpath=run.layout.get("pythonpath"),
                    files=[{"path": f.path, "source": f.content} for f in run.files])
    return jsonify(body)


@bp.delete("/runs/<run_id>")
@documented("Delete a run and its report", responses={204: None, 404: ErrorOut})
def delete_run(run_id: str) -> ResponseReturnValue:
    session = store.session()
    if not _RUN_ID.fullmatch(run_id) or not queries.delete_run(session, g.project_id, run_id):
        raise _no_such_run(run_id)
    session.commit()
    return "", 204


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


@bp.get("/runs")
@documented("Runs of the project, newest first, filtered, with cursor paging", query=RunQuery,
            responses={200: RunPage, 422: ErrorOut})
def list_runs() -> ResponseReturnValue:
    unstorable = [(f"query.{name}", why) for name, value in request.args.items(multi=True)
                  if (why := text_problem(value)) is not None]
    repeated = [(f"query.{name}", "given more than once; give it once (status takes several statuses separated "
                 "by commas)") for name in request.args if len(request.args.getlist(name)) > 1]
    if unstorable or repeated:
        raise validation_error(unstorable + repeated)
    try:
        query = RunQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_error([(p.replace("$.", "query.", 1), m) for p, m in _pydantic_problems(exc, [])]) from None
    statuses = [s.strip() for s in (query.status or "").split(",") if s.strip()]
    bad = [s for s in statuses if s not in RUN_STATUSES]
    if bad:
        raise validation_error([("query.status", f"unknown status {bad[0]!r} ({', '.join(RUN_STATUSES)})")])
    filters = queries.RunFilters(model=query.model, status=statuses, branch=query.branch, commit=query.commit,
                                 label=query.label, since=_utc(query.since), until=_utc(query.until),
                                 passed=query.passed)
    config = current_app.config
    limit = min(query.limit or int(config["PAGE_SIZE"]), int(config["MAX_PAGE_SIZE"]))
    session = store.session()
    try:
        runs, next_cursor = queries.list_runs(session, g.project_id, filters, limit=limit, cursor=query.cursor)
    except queries.BadCursor as exc:
        raise validation_error([("query.cursor", str(exc))]) from None
    reports = {r.run_id: r for r in session.scalars(
        select(RunReport).where(RunReport.run_id.in_([r.id for r in runs]))
        .options(_without_report_json())
    )} if runs else {}
    return jsonify({"runs": [run_json(r, report=reports.get(r.id)) for r in runs], "next_cursor": next_cursor,
                    "limit": limit})


def _without_report_json() -> Any:
    return defer(RunReport.report)


@bp.get("/models")
@documented("Each model of the project with its run history", responses={200: ModelList})
def list_models() -> ResponseReturnValue:
    history = request.args.get("history", "20")
    if not history.isdigit() or not 1 <= int(history) <= 500:
        raise validation_error([("query.history", "an integer from 1 to 500")])
    models = queries.list_models(store.session(), g.project_id, history=int(history))
    return jsonify({"models": [
        {"name": m.name, "runs": m.runs, "last_run_at": m.last_run_at.isoformat(),
         "history": [{**h, "created_at": h["created_at"].isoformat()} for h in m.history]}
        for m in models
    ]})


@bp.get("/runs/<run_a>/compare/<run_b>")
@documented("What changed from run a to run b: verdicts, per-tensor errors, norms, memory, time",
            responses={200: Comparison, 404: ErrorOut})
def compare(run_a: str, run_b: str) -> ResponseReturnValue:
    a, b = _scoped_run(run_a), _scoped_run(run_b)
    return jsonify(compare_runs(store.session(), a, b))
