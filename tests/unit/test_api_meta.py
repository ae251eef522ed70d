"""The OpenAPI document matches the routes; errors are JSON everywhere; health and readiness probes."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from gradcheck_service.service.app import create_app
from tests.unit.service_api import Project


def test_openapi_lists_every_api_route_and_method(api_app: Flask, client: FlaskClient) -> None:
    response = client.get("/api/v1/openapi.json")  # public: no token
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.1")
    for rule in api_app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1") and rule.rule not in ("/healthz", "/readyz"):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        assert path in document["paths"], f"{rule.rule} missing from the OpenAPI document"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in document["paths"][path], f"{method} {rule.rule} missing"
    assert set(document["paths"]) >= {"/api/v1/runs", "/api/v1/runs/{run_id}", "/api/v1/runs/{run_a}/compare/{run_b}"}


def test_openapi_references_resolve(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").get_json()
    schemas = document["components"]["schemas"]

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    all_refs = refs(document)
    assert all_refs
    for ref in all_refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    post = document["paths"]["/api/v1/runs"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"202", "413", "422", "401"} <= set(post["responses"])
    assert "mode" in schemas["CheckOptions"]["properties"]


def test_errors_are_json_never_html_or_tracebacks(api_app: Flask, project: Project) -> None:
    def explode() -> str:
        raise RuntimeError("secret internals")

    api_app.add_url_rule("/api/v1/explode", view_func=explode)
    client = api_app.test_client()
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and missing.is_json and missing.get_json()["error"]["code"] == "not_found"
    wrong = client.put("/api/v1/runs", headers=project.headers)
    assert wrong.status_code == 405 and wrong.get_json()["error"]["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["Allow"]
    crash = client.get("/api/v1/explode", headers=project.headers)
    assert crash.status_code == 500 and crash.is_json
    assert crash.get_json()["error"]["code"] == "internal_error"
    assert "secret internals" not in crash.get_data(as_text=True) and "Traceback" not in crash.get_data(as_text=True)


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["checks"]["database"]["ok"] and ready.get_json()["checks"]["broker"]["ok"]


def test_readiness_reports_an_unreachable_broker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app({"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                      "BROKER_URL": "redis://127.0.0.1:1/0"})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable" and body["checks"]["database"]["ok"]
    assert body["checks"]["broker"]["ok"] is False and body["checks"]["broker"]["error"]


def test_submission_while_the_broker_is_down_is_503_and_the_run_is_not_left_queued(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.migrate import upgrade
    from gradcheck_service.service.store.models import Run
    from gradcheck_service.service.store.tokens import create_token
    from tests.service_support import spec

    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    upgrade(url)
    app = create_app({"DATA_DIR": str(tmp_path), "DATABASE_URL": url, "BROKER_URL": "redis://127.0.0.1:1/0"})
    with app.app_context():
        token = create_token(store.session(), "p").token
        store.session().commit()
    response = app.test_client().post("/api/v1/runs", json={"spec": spec()},
                                      headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503 and response.headers["Retry-After"]
    with app.app_context():
        run = store.session().query(Run).one()
        assert run.status == "error" and run.error_code == "broker_unavailable"


def test_database_down_is_503_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.service_support import free_port

    app = create_app({"DATA_DIR": str(tmp_path), "BROKER_URL": f"sqla+sqlite:///{tmp_path / 'b.sqlite3'}",
                      "DATABASE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"})
    response = app.test_client().get("/api/v1/runs", headers={"Authorization": "Bearer gcs_x"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.get_json()["error"]["code"] == "unavailable"
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["database"]["ok"] is False
