"""Reading runs back: detail with report, filters, cursor paging, models, compare, delete, auth and scoping."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gradcheck_service.service.api.schemas import Comparison, ModelList, RunOut, RunPage
from tests.service_support import BUGGY_MODEL, real_report, spec
from tests.unit.service_api import Project, finish_with_report


def _submit(client: FlaskClient, project: Project, **metadata: Any) -> str:
    response = client.post("/api/v1/runs", json={"spec": spec(), "metadata": metadata}, headers=project.headers)
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


@pytest.fixture(scope="module")
def passing_report() -> dict[str, Any]:
    return real_report()


@pytest.fixture(scope="module")
def failing_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from gradcheck_service.checks.engine import check
    from gradcheck_service.definitions import load_definition

    path = Path(tmp_path_factory.mktemp("models")) / "buggy.py"
    path.write_text(BUGGY_MODEL)
    definition = load_definition(str(path))  # the test process may run a model file; the service never does
    return check(definition.module, definition.inputs, definition.loss_fn).model_dump(mode="json")


def test_finished_run_has_report_and_queryable_figures(api_app: Flask, client: FlaskClient, project: Project,
                                                      failing_report: dict[str, Any]) -> None:
    run_id = _submit(client, project, name="buggy")
    finish_with_report(api_app, run_id, failing_report)
    run = client.get(f"/api/v1/runs/{run_id}", headers=project.headers).get_json()
    RunOut.model_validate(run)
    assert run["status"] == "failed" and run["attempts"] == 1
    assert run["report"]["passed"] is False
    assert run["summary"]["faulty_modules"] == failing_report["localization"]["faulty_modules"] != []
    assert run["summary"]["peak_bytes"] == failing_report["memory"]["peak_bytes"] > 0
    assert run["summary"]["total_gradient_norm"] == pytest.approx(failing_report["gradient_norms"]["total_norm"])
    assert run["timings"]["check_s"] == pytest.approx(failing_report["timings"]["total_s"])
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.models import GradientStat, TensorResult

    with api_app.app_context():
        session = store.session()
        tensors = {t.name: t for t in session.query(TensorResult).filter_by(run_id=run_id)}
        expected = {p["name"]: p["passed"] for p in failing_report["gradient_check"]["parameters"]}
        assert {name: t.passed for name, t in tensors.items() if t.kind == "parameter"} == expected
        layers = session.query(GradientStat).filter_by(run_id=run_id, scope="layer").count()
        assert layers == len(failing_report["gradient_norms"]["layers"]) > 0


def test_filters_and_cursor_paging(api_app: Flask, client: FlaskClient, project: Project,
                                   passing_report: dict[str, Any], failing_report: dict[str, Any]) -> None:
    ids = {}
    for i in range(7):
        ids[i] = _submit(client, project, name="a" if i % 2 else "b", git={"branch": f"br{i % 3}", "commit": f"c{i}"},
                         labels=["even"] if i % 2 == 0 else [])
    finish_with_report(api_app, ids[0], passing_report)
    finish_with_report(api_app, ids[1], failing_report)

    def listed(query: str) -> list[str]:
        response = client.get(f"/api/v1/runs?{query}", headers=project.headers)
        assert response.status_code == 200, response.get_json()
        RunPage.model_validate(response.get_json())
        return [r["id"] for r in response.get_json()["runs"]]

    assert listed("") == [ids[i] for i in reversed(range(7))]  # newest first
    assert set(listed("model=a")) == {ids[1], ids[3], ids[5]}
    assert set(listed("branch=br0")) == {ids[0], ids[3], ids[6]}
    assert listed("commit=c4") == [ids[4]]
    assert set(listed("label=even")) == {ids[0], ids[2], ids[4], ids[6]}
    assert listed("status=passed") == [ids[0]] == listed("passed=true")
    assert listed("passed=false") == [ids[1]]
    assert set(listed("status=passed,failed")) == {ids[0], ids[1]}
    assert len(listed("status=queued")) == 5
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert listed(f"since={future.replace('+00:00', 'Z')}") == []
    assert len(listed(f"until={future.replace('+00:00', '%2B00:00')}")) == 7

    seen: list[str] = []
    cursor = ""
    while True:
        page = client.get(f"/api/v1/runs?limit=3{cursor}", headers=project.headers).get_json()
        seen += [r["id"] for r in page["runs"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == [ids[i] for i in reversed(range(7))]

    for query, path in (("limit=0", "query.limit"), ("cursor=zzz", "query.cursor"), ("status=done", "query.status"),
                        ("since=yesterday", "query.since"), ("colour=red", "query.colour")):
        response = client.get(f"/api/v1/runs?{query}", headers=project.headers)
        assert response.status_code == 422, query
        assert response.get_json()["error"]["problems"][0]["path"] == path


@pytest.mark.parametrize(("query", "path", "message"), [
    ("until=0.5", "query.until", "expected an ISO 8601 date or time"),  # not seconds since 1970
    ("since=1700000000", "query.since", "expected an ISO 8601 date or time"),
    ("status=passed&status=failed", "query.status", "given more than once"),
    ("passed=true&passed=false", "query.passed", "given more than once"),
    ("cursor=a&cursor=b", "query.cursor", "given more than once"),
    ("limit=1&limit=2", "query.limit", "given more than once"),
])
def test_numbers_as_dates_and_repeated_parameters_are_refused(client: FlaskClient, project: Project, query: str,
                                                              path: str, message: str) -> None:
    response = client.get(f"/api/v1/runs?{query}", headers=project.headers)
    assert response.status_code == 422 and response.is_json
    problems = response.get_json()["error"]["problems"]
    assert [p["path"] for p in problems] == [path] and message in problems[0]["message"], problems


def test_models_compare_definition_delete(api_app: Flask, client: FlaskClient, project: Project,
                                          passing_report: dict[str, Any], failing_report: dict[str, Any]) -> None:
    good, bad = _submit(client, project, name="net"), _submit(client, project, name="net")
    finish_with_report(api_app, good, passing_report)
    finish_with_report(api_app, bad, failing_report)
    _submit(client, project, name="other")

    models = client.get("/api/v1/models", headers=project.headers).get_json()
    ModelList.model_validate(models)
    by_name = {m["name"]: m for m in models["models"]}
    assert by_name["net"]["runs"] == 2 and [h["id"] for h in by_name["net"]["history"]] == [bad, good]
    assert by_name["net"]["history"][0]["faulty_modules"] == failing_report["localization"]["faulty_modules"]
    assert by_name["other"]["history"][0]["status"] == "queued"

    comparison = client.get(f"/api/v1/runs/{good}/compare/{bad}", headers=project.headers).get_json()
    Comparison.model_validate(comparison)
    assert comparison["verdict"] == {"a": "passed", "b": "failed", "changed": True, "same_definition": True}
    assert comparison["faulty_modules"]["added"] == failing_report["localization"]["faulty_modules"]
    assert comparison["memory"]["peak_bytes"]["b"] == failing_report["memory"]["peak_bytes"]
    assert comparison["time"]["check_s"]["delta"] == pytest.approx(
        failing_report["timings"]["total_s"] - passing_report["timings"]["total_s"])

    source = client.get(f"/api/v1/runs/{good}/definition", headers=project.headers).get_json()
    assert source["kind"] == "spec" and '"out_features": 4' in source["source"]

    assert client.delete(f"/api/v1/runs/{bad}", headers=project.headers).status_code == 204
    assert client.get(f"/api/v1/runs/{bad}", headers=project.headers).status_code == 404
    assert client.delete(f"/api/v1/runs/{bad}", headers=project.headers).status_code == 404
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.models import RunReport, TensorResult

    with api_app.app_context():
        assert store.session().get(RunReport, bad) is None
        assert store.session().query(TensorResult).filter_by(run_id=bad).count() == 0


# Every route that names a run, with the run placed in each position; a new route must be added here.
SCOPED_ROUTES = [
    ("GET", "/api/v1/runs/{b}"),
    ("GET", "/api/v1/runs/{b}/definition"),
    ("DELETE", "/api/v1/runs/{b}"),
    ("GET", "/api/v1/runs/{b}/compare/{a}"),
    ("GET", "/api/v1/runs/{a}/compare/{b}"),
]


def test_scoped_routes_cover_every_route_with_a_run(api_app: Flask) -> None:
    rules = {(m, r.rule) for r in api_app.url_map.iter_rules() if "<" in r.rule and r.rule.startswith("/api/v1")
             for m in r.methods - {"HEAD", "OPTIONS"}}
    covered = {(m, p.replace("{a}", "<run_a>").replace("{b}", "<run_b>")) for m, p in SCOPED_ROUTES}
    covered = {(m, p.replace("/runs/<run_b>", "/runs/<run_id>") if "compare" not in p else p) for m, p in covered}
    assert rules <= covered, f"routes without a scoping test: {rules - covered}"


@pytest.mark.parametrize(("method", "path"), SCOPED_ROUTES)
def test_another_projects_run_is_404_on_every_route(client: FlaskClient, project: Project,
                                                     other_project: Project, method: str, path: str) -> None:
    mine = _submit(client, project)
    theirs = _submit(client, other_project)
    response = client.open(path.format(a=mine, b=theirs), method=method, headers=project.headers)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    # ... and it is still there for its owner
    assert client.get(f"/api/v1/runs/{theirs}", headers=other_project.headers).status_code == 200
    listed = client.get("/api/v1/runs", headers=project.headers).get_json()["runs"]
    assert [r["id"] for r in listed] == [mine]
    models = client.get("/api/v1/models", headers=project.headers).get_json()["models"]
    assert sum(m["runs"] for m in models) == 1


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/v1/runs"), ("POST", "/api/v1/runs"),
                                              ("GET", "/api/v1/models"), ("GET", "/api/v1/runs/x"),
                                              ("GET", "/api/v1/runs/x/compare/y"), ("DELETE", "/api/v1/runs/x"),
                                              ("GET", "/api/v1/runs/x/definition")])
def test_token_required(api_app: Flask, client: FlaskClient, project: Project, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {project.token}"}):
        response = client.open(path, method=method, headers=headers)
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_revoked_token_is_refused_and_only_hashes_are_stored(api_app: Flask, client: FlaskClient,
                                                            project: Project) -> None:
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.models import ApiToken
    from gradcheck_service.service.store.tokens import hash_token, revoke_token

    assert client.get("/api/v1/runs", headers=project.headers).status_code == 200
    with api_app.app_context():
        session = store.session()
        row = session.query(ApiToken).one()
        assert row.token_hash == hash_token(project.token) and project.token not in (row.prefix, row.token_hash)
        assert revoke_token(session, row.id)
        session.commit()
    assert client.get("/api/v1/runs", headers=project.headers).status_code == 401
    database = Path(api_app.config["DATABASE_URL"].removeprefix("sqlite:///"))
    for path in database.parent.glob(database.name + "*"):  # the database and its write-ahead log
        assert project.token.encode() not in path.read_bytes()


def test_an_inconclusive_report_is_its_own_status_filtered_and_documented(
        api_app: Flask, client: FlaskClient, project: Project, passing_report: dict[str, Any],
        failing_report: dict[str, Any]) -> None:
    reason = "the forward is not reproducible: the loss at the same point differed between two evaluations"
    inconclusive = {**passing_report, "verdict": "inconclusive", "passed": False, "inconclusive_because": [reason]}
    ids = [_submit(client, project, name="net") for _ in range(3)]
    for run_id, report in zip(ids, (inconclusive, passing_report, failing_report), strict=True):
        finish_with_report(api_app, run_id, report)

    def listed(query: str) -> list[dict[str, Any]]:
        response = client.get(f"/api/v1/runs?{query}", headers=project.headers)
        assert response.status_code == 200, response.get_json()
        return list(RunPage.model_validate(response.get_json()).model_dump()["runs"])

    (found,) = listed("status=inconclusive")
    assert found["id"] == ids[0] and found["status"] == "inconclusive"
    assert found["summary"]["inconclusive_because"] == [reason]
    assert [r["id"] for r in listed("passed=false")] == [ids[2]]  # failed only: inconclusive is neither
    assert {r["id"] for r in listed("status=inconclusive,failed")} == {ids[0], ids[2]}
    unknown = client.get("/api/v1/runs?status=done", headers=project.headers).get_json()["error"]["problems"][0]
    assert "inconclusive" in unknown["message"]
    document = client.get("/api/v1/openapi.json").get_json()
    assert "inconclusive" in document["components"]["schemas"]["RunOut"]["properties"]["status"]["enum"]
