"""POST /api/v1/runs: what is accepted, and how every kind of bad input is answered (JSON, with paths)."""

from __future__ import annotations

import io
import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import ValidationError

from gradcheck_service.definitions.json_input import NOT_FINITE
from gradcheck_service.options import CheckOptions
from gradcheck_service.service.api.schemas import RunOut
from gradcheck_service.service.extensions import machine_has_cuda
from tests.service_support import BUGGY_MODEL, spec
from tests.unit.service_api import Project


def _problems(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    body = response.get_json()
    assert body["error"]["code"] == "validation_error", body
    return {p["path"]: p["message"] for p in body["error"]["problems"]}


def test_json_spec_is_accepted_queued_and_readable(client: FlaskClient, project: Project) -> None:
    body = {"spec": spec(), "options": {"mode": "full", "seed": 3},
            "metadata": {"name": "mlp-a", "git": {"repo": "r", "branch": "main", "commit": "abc123"},
                         "labels": ["nightly", "ci"], "timeout_s": 30}}
    response = client.post("/api/v1/runs", json=body, headers=project.headers)
    assert response.status_code == 202, response.get_json()
    created = response.get_json()
    assert created["status"] == "queued" and created["queue"] == "cpu"
    assert response.headers["Location"] == created["url"] == f"/api/v1/runs/{created['id']}"
    run = client.get(created["url"], headers=project.headers).get_json()
    RunOut.model_validate(run)
    assert run["status"] == "queued" and run["report"] is None and run["error"] is None
    assert run["model"]["name"] == "mlp-a" and run["model"]["kind"] == "spec" and len(run["model"]["hash"]) == 64
    assert run["options"]["mode"] == "full" and run["options"]["seed"] == 3
    assert run["git"] == {"repo": "r", "branch": "main", "commit": "abc123"}
    assert run["labels"] == ["ci", "nightly"]


def test_cuda_runs_go_to_the_gpu_queue_when_gpu_workers_are_configured(api_app: Flask, client: FlaskClient,
                                                                        project: Project) -> None:
    api_app.config["GPU_WORKERS"] = True
    response = client.post("/api/v1/runs", json={"spec": spec(), "options": {"device": "cuda"}},
                           headers=project.headers)
    assert response.status_code == 202
    assert response.get_json()["queue"] == "gpu"


def test_cuda_runs_are_refused_where_no_worker_can_take_them(api_app: Flask, client: FlaskClient,
                                                            project: Project) -> None:
    # The embedded mode (this app's SQLite queue): its only worker runs on this machine.
    response = client.post("/api/v1/runs", json={"spec": spec(), "options": {"device": "cuda"}},
                           headers=project.headers)
    if machine_has_cuda():
        assert response.status_code == 202 and response.get_json()["queue"] == "gpu"
    else:
        assert response.status_code == 422
        assert "needs a GPU worker" in _problems(response)["$.options.device"]
    api_app.config["GPU_WORKERS"] = False  # an operator without GPU workers says so
    response = client.post("/api/v1/runs", json={"spec": spec(), "options": {"device": "cuda"}},
                           headers=project.headers)
    assert response.status_code == 422 and "$.options.device" in _problems(response)
    listed = client.get("/api/v1/runs", headers=project.headers).get_json()
    assert len(listed["runs"]) == (1 if machine_has_cuda() else 0)  # a refused run is not stored
    cpu = client.post("/api/v1/runs", json={"spec": spec()}, headers=project.headers)
    assert cpu.status_code == 202 and cpu.get_json()["queue"] == "cpu"


def test_model_file_and_spec_file_upload(client: FlaskClient, project: Project) -> None:
    py = client.post("/api/v1/runs", headers=project.headers, data={
        "model": (io.BytesIO(BUGGY_MODEL.encode()), "buggy.py"), "options": json.dumps({"mode": "fast"}),
        "metadata": json.dumps({"labels": ["x"]})}, content_type="multipart/form-data")
    assert py.status_code == 202, py.get_json()
    run = client.get(py.get_json()["url"], headers=project.headers).get_json()
    assert run["model"] == {"name": "buggy", "kind": "python", "hash": run["model"]["hash"]}
    assert run["options"]["mode"] == "fast"
    definition = client.get(py.get_json()["url"] + "/definition", headers=project.headers).get_json()
    assert definition["source"] == BUGGY_MODEL and definition["kind"] == "python"

    js = client.post("/api/v1/runs", headers=project.headers, data={
        "model": (io.BytesIO(json.dumps(spec(name="from-file")).encode()), "m.json")},
        content_type="multipart/form-data")
    assert js.status_code == 202, js.get_json()
    assert client.get(js.get_json()["url"], headers=project.headers).get_json()["model"]["name"] == "from-file"


def test_spec_errors_listed_with_their_paths(client: FlaskClient, project: Project) -> None:
    bad = spec(layers=[{"type": "linear", "out_features": 0}, {"type": "tanhh"}])
    response = client.post("/api/v1/runs", json={"spec": bad, "options": {"mode": "thorough"}},
                           headers=project.headers)
    assert response.status_code == 422
    problems = _problems(response)
    assert "$.spec.layers[0].out_features" in problems
    assert "$.spec.layers[1].type" in problems and "tanh" in problems["$.spec.layers[1].type"]
    assert "$.options.mode" in problems


def test_shape_errors_and_caps_are_422(client: FlaskClient, project: Project) -> None:
    huge = spec(layers=[{"type": "linear", "out_features": 100_000}, {"type": "linear", "out_features": 100_000}])
    problems = _problems(client.post("/api/v1/runs", json={"spec": huge}, headers=project.headers))
    assert any("parameters" in m and "cap" in m for m in problems.values()), problems


def test_unknown_fields_metadata_and_timeout(client: FlaskClient, project: Project) -> None:
    response = client.post("/api/v1/runs", headers=project.headers, json={
        "spec": spec(), "extra": 1, "metadata": {"labels": ["bad label!"], "timeout_s": 10**9}})
    problems = _problems(response)
    assert problems["$.extra"] == "unknown field 'extra'"
    assert "$.metadata.labels[0]" in problems
    response = client.post("/api/v1/runs", headers=project.headers,
                           json={"spec": spec(), "metadata": {"timeout_s": 10**6}})
    assert "over this server's limit" in _problems(response)["$.metadata.timeout_s"]


def test_python_file_problems_found_without_running_it(client: FlaskClient, project: Project) -> None:
    def upload(source: str, name: str = "m.py"):  # type: ignore[no-untyped-def]
        return client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data",
                           data={"model": (io.BytesIO(source.encode()), name)})

    assert _problems(upload("import os\n\ndef build(:\n")) == {"model:3": "syntax error: invalid syntax"}
    assert "no top-level build()" in _problems(upload("x = 1\n"))["model"]
    assert "expected a .py model file or a .json spec" in _problems(upload("x", "m.txt"))["model"]
    problems = _problems(upload('{"input": {"shape": [2, 3]}, "layers": []}', "m.json"))
    assert "model:$.layers" in problems
    response = client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data",
                           data={"options": "{}"})
    assert "missing file field 'model'" in _problems(response)["model"]


def test_malformed_and_wrongly_typed_bodies(client: FlaskClient, project: Project) -> None:
    response = client.post("/api/v1/runs", data="{not json", content_type="application/json",
                           headers=project.headers)
    assert _problems(response) == {"$": "the body is not valid JSON"}
    assert "$.spec" in _problems(client.post("/api/v1/runs", json={"spec": [1]}, headers=project.headers))
    response = client.post("/api/v1/runs", data="hello", content_type="text/plain", headers=project.headers)
    assert response.status_code == 415 and response.get_json()["error"]["code"] == "unsupported_media_type"


def test_body_over_the_limit_is_413_json(client: FlaskClient, project: Project) -> None:
    big = {"spec": spec(description="x" * 300_000)}
    response = client.post("/api/v1/runs", json=big, headers=project.headers)
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "too_large" and "262,144 bytes" in error["message"]
    upload = client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data",
                         data={"model": (io.BytesIO(b"#" * 300_000), "m.py")})
    assert upload.status_code == 413 and upload.is_json


_TINY = json.dumps(spec())


def _body(rest: str, spec_text: str = _TINY) -> str:
    """A body as JSON text (with tokens json.dumps would not write): the tiny spec, then ``rest``."""
    return '{"spec": ' + spec_text + (", " + rest if rest else "") + "}"


@pytest.mark.parametrize(("body", "path"), [
    (_body('"options": {"safety_factor": 1e999}'), "$.options.safety_factor"),
    (_body('"options": {"thresholds": {"exploding_norm": Infinity}}'),
     "$.options.thresholds.exploding_norm"),
    (_body('"metadata": {"timeout_s": NaN}'), "$.metadata.timeout_s"),
    (_body('"options": {"seed": -Infinity}'), "$.options.seed"),
    ('{"spec": {"name": "t", "input": {"shape": [4, 3]}, "layers": [{"type": "dropout", "p": -1e400}]}}',
     "$.spec.layers[0].p"),
])
def test_non_finite_numbers_are_refused_with_their_json_path(client: FlaskClient, project: Project, body: str,
                                                             path: str) -> None:
    response = client.post("/api/v1/runs", data=body, content_type="application/json", headers=project.headers)
    assert response.status_code == 422
    assert _problems(response) == {path: NOT_FINITE}
    assert client.get("/api/v1/runs", headers=project.headers).get_json()["runs"] == []  # nothing was stored


def test_non_finite_numbers_in_form_fields_and_spec_files_are_refused(client: FlaskClient, project: Project) -> None:
    response = client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data", data={
        "model": (io.BytesIO(BUGGY_MODEL.encode()), "m.py"), "options": '{"thresholds": {"vanishing_ratio": NaN}}'})
    assert _problems(response) == {"options.thresholds.vanishing_ratio": NOT_FINITE}
    text = _TINY.replace('"seed": 0', '"seed": 1e999')
    response = client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data",
                           data={"model": (io.BytesIO(text.encode()), "tiny.json")})
    assert _problems(response) == {"model:$.seed": NOT_FINITE}
    # the library and the CLI validate the same options model
    with pytest.raises(ValidationError, match="finite number"):
        CheckOptions(safety_factor=float("inf"))


@pytest.mark.parametrize(("body", "path", "key"), [
    (_body('"options": {"mode": "fast", "mode": "full"}'), "$.options", "mode"),
    (_body('"spec": ' + _TINY), "$", "spec"),
    (_body('"metadata": {"git": {"branch": "a", "branch": "b"}}'), "$.metadata.git", "branch"),
    (_body("", _TINY.replace('"seed": 0', '"seed": 0, "seed": 1')), "$.spec", "seed"),
])
def test_duplicate_keys_in_a_body_are_refused_naming_the_key(client: FlaskClient, project: Project, body: str,
                                                             path: str, key: str) -> None:
    response = client.post("/api/v1/runs", data=body, content_type="application/json", headers=project.headers)
    assert response.status_code == 422
    assert _problems(response) == {path: f"the key '{key}' appears more than once"}


def test_duplicate_keys_in_form_fields_and_spec_files_are_refused(client: FlaskClient, project: Project) -> None:
    response = client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data", data={
        "model": (io.BytesIO(BUGGY_MODEL.encode()), "m.py"), "metadata": '{"labels": ["a"], "labels": ["b"]}'})
    assert _problems(response) == {"metadata": "the key 'labels' appears more than once"}
    text = _TINY.replace('"seed": 0', '"seed": 0, "seed": 1')
    response = client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data",
                           data={"model": (io.BytesIO(text.encode()), "tiny.json")})
    assert _problems(response) == {"model:$": "the key 'seed' appears more than once"}
