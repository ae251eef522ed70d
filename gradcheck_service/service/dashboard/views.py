"""Dashboard pages: runs list, one run, a model's history, a comparison, and the small JSON the pages poll."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, g, jsonify, render_template, request, url_for
from flask.typing import ResponseReturnValue

from ..api.serialize import run_json as api_run_json
from ..extensions import store
from ..store import queries as store_queries
from ..store.compare import compare_runs
from ..store.models import RUN_STATUSES, Run, RunReport
from . import bp, charts
from . import queries as dash_queries
from .formatting import duration, seconds
from .report_view import check_rows, definition_files, definition_text, findings, readable_report

ACTIVE = ("queued", "running")
PAGE_SIZE = 50


def _scoped(run_id: str, *, with_report: bool = False) -> Run:
    run = store_queries.get_run(store.session(), g.project_id, run_id, with_report=with_report)
    if run is None:
        abort(404, description=f"There is no run {run_id!r} in project {g.project_name!r}.")
    return run


def _filters_from_args() -> tuple[store_queries.RunFilters, str | None, dict[str, str]]:
    """Filters from the query string; invalid values are a 400 page naming the parameter."""
    args = {k: v.strip() for k, v in request.args.items() if k in
            ("model", "status", "branch", "label", "since", "until", "q") and v.strip()}
    status = args.get("status")
    if status and status not in RUN_STATUSES:
        abort(400, description=f"status must be one of {', '.join(RUN_STATUSES)}, not {status!r}.")
    try:
        since = dash_queries.parse_day(args.get("since"))
        until = dash_queries.parse_day(args.get("until"), end=True)
    except ValueError:
        abort(400, description="since and until must be dates written YYYY-MM-DD.")
    filters = store_queries.RunFilters(model=args.get("model"), status=[status] if status else [],
                                       branch=args.get("branch"), label=args.get("label"), since=since, until=until)
    return filters, args.get("q"), args


@bp.get("/")
def runs() -> ResponseReturnValue:
    filters, search, args = _filters_from_args()
    session = store.session()
    limit = min(int(current_app.config.get("PAGE_SIZE") or PAGE_SIZE), 200)
    try:
        page = dash_queries.runs_page(session, g.project_id, filters, search=search, limit=limit,
                                      older_than=request.args.get("older") or None,
                                      newer_than=request.args.get("newer") or None)
    except store_queries.BadCursor:
        abort(400, description="That page link is not valid any more; start again from the newest runs.")
    any_runs = bool(page.runs) or bool(args) or dash_queries.count_matching(
        session, g.project_id, store_queries.RunFilters()) > 0
    return render_template("dashboard/runs.html", page=page, args=args, statuses=RUN_STATUSES,
                           choices=dash_queries.filter_choices(session, g.project_id), any_runs=any_runs,
                           active=ACTIVE, count_cap=dash_queries.COUNT_CAP)


def _live_item(run: Run, report: RunReport | None) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "stage": run.progress_stage,
        "progress": run.progress,
        "duration": seconds(duration(run)),
        "faulty_modules": list(report.faulty_modules) if report else [],
        "failed_because": list(report.failed_because) if report else [],
        "inconclusive_because": list(report.inconclusive_because) if report else [],
        "error": run.error_code if run.status == "error" else None,
        "url": url_for("dashboard.run_detail", run_id=run.id),
    }


@bp.get("/live.json")
def live_status() -> ResponseReturnValue:
    """Status of the listed runs (``ids`` comma-separated): what the pages poll while runs are active."""
    ids = [i for i in request.args.get("ids", "").split(",") if i][:200]
    rows = dash_queries.live_runs(store.session(), g.project_id, ids)
    return jsonify({"runs": [_live_item(run, report) for run, report in rows]})


@bp.get("/runs/<run_id>")
def run_detail(run_id: str) -> ResponseReturnValue:
    run = _scoped(run_id, with_report=True)
    report = readable_report(run.report.report) if run.report is not None else {}
    session = store.session()
    figures = {
        "flow": charts.gradient_flow(report),
        "param_norms": charts.parameter_norms(report),
        "memory": charts.memory_breakdown(report),
        "activations": charts.activations_by_module(report),
        "scaling": charts.batch_scaling(report),
    }
    return render_template(
        "dashboard/run.html", run=run, report=report, charts={k: v for k, v in figures.items() if v},
        checks=check_rows(report), findings=findings(report), definition=definition_text(run),
        definition_files=definition_files(run),
        previous=dash_queries.previous_run(session, run), active=ACTIVE,
    )


@bp.get("/runs/<run_id>.json")
def run_json(run_id: str) -> ResponseReturnValue:
    """The raw run with its full report, in the API's own JSON shape (readable with the dashboard session)."""
    run = _scoped(run_id)
    report = store.session().get(RunReport, run.id)
    response = jsonify(api_run_json(run, report=report, with_report=True))
    response.headers["Content-Disposition"] = f'inline; filename="run-{run.id}.json"'
    return response


@bp.get("/models")
def models() -> ResponseReturnValue:
    summaries = store_queries.list_models(store.session(), g.project_id, history=1)
    return render_template("dashboard/models.html", models=summaries)


@bp.get("/models/<path:name>")
def model_detail(name: str) -> ResponseReturnValue:
    rows = dash_queries.model_runs(store.session(), g.project_id, name)
    if not rows:
        abort(404, description=f"Project {g.project_name!r} has no runs of a model named {name!r}.")
    return render_template("dashboard/model.html", name=name, rows=list(reversed(rows)),
                           charts=charts.model_history(rows))


@bp.get("/compare")
def compare() -> ResponseReturnValue:
    a_id, b_id = request.args.get("a", "").strip(), request.args.get("b", "").strip()
    session = store.session()
    if not a_id or not b_id:
        return render_template("dashboard/compare.html", comparison=None, a=a_id, b=b_id,
                               recent=dash_queries.recent_runs(session, g.project_id))
    a, b = _scoped(a_id), _scoped(b_id)
    comparison = compare_runs(session, a, b)
    return render_template("dashboard/compare.html", comparison=comparison, a=a, b=b,
                           flow=charts.compare_flow(comparison),
                           recent=dash_queries.recent_runs(session, g.project_id))
