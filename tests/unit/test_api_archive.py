"""POST /api/v1/runs with a repository archive: accepted with its layout, stored with every file, shown on the
definition route and the run page; hostile or inconsistent archives are 422 naming the member or the field."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gradcheck_service.definitions.archive import pack
from tests.e2e.repository_layouts import LAYOUTS
from tests.unit.service_api import Project
from tests.unit.test_dashboard_auth import sign_in

SRC_PACKAGE = {path: text.encode() for path, text in LAYOUTS["src_package"].items() if path.endswith(".py")}


def _post(client: FlaskClient, project: Project, archive: bytes, **fields: Any) -> Any:
    data: dict[str, Any] = {"archive": (io.BytesIO(archive), "repository.zip"), **fields}
    return client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data", data=data)


def _problems(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.get_json()
    return {p["path"]: p["message"] for p in response.get_json()["error"]["problems"]}


def test_an_archive_is_stored_with_its_layout_and_every_file(api_app: Flask, client: FlaskClient,
                                                             project: Project) -> None:
    response = _post(client, project, pack(SRC_PACKAGE), entry="checks/net_check.py", pythonpath='["src"]',
                     metadata=json.dumps({"git": {"branch": "main"}}))
    assert response.status_code == 202, response.get_json()
    run_id = response.get_json()["id"]
    run = client.get(f"/api/v1/runs/{run_id}", headers=project.headers).get_json()
    assert run["model"]["name"] == "net_check" and run["model"]["kind"] == "python"
    definition = client.get(f"/api/v1/runs/{run_id}/definition", headers=project.headers).get_json()
    assert definition["entry"] == "checks/net_check.py" and definition["pythonpath"] == ["src", "."]
    assert {f["path"]: f["source"] for f in definition["files"]} == {k: v.decode() for k, v in SRC_PACKAGE.items()}
    assert definition["source"] == SRC_PACKAGE["checks/net_check.py"].decode()

    sign_in(client, project.token)
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "repository archive, 5 files" in html
    for path in SRC_PACKAGE:
        assert f'data-path="{path}"' in html
    assert html.index('data-path="checks/net_check.py"') < html.index('data-path="src/mylib/layers.py"')
    assert "grad * FACTOR * (1.0 - t * t)" in html  # the package module's source is shown, not only the check file

    again = _post(client, project, pack(SRC_PACKAGE), entry="checks/net_check.py", pythonpath='["src"]')
    other = client.get(f"/api/v1/runs/{again.get_json()['id']}", headers=project.headers).get_json()
    assert other["model"]["hash"] == run["model"]["hash"]  # the same files: the same definition


def _zip_with(name: str, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("check.py", "def build(): ...\n")
        archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(("archive", "fields", "path", "message"), [
    (_zip_with("../outside.py"), {"entry": "check.py"}, "archive:../outside.py", "unsafe path"),
    (_zip_with("blob.py", b"\xff\xfe"), {"entry": "check.py"}, "archive:blob.py", "not UTF-8 text"),
    (b"not an archive", {"entry": "check.py"}, "archive", "not a zip or gzip-compressed tar archive"),
    (pack(SRC_PACKAGE), {}, "entry", "required with an archive"),
    (pack(SRC_PACKAGE), {"entry": "checks/missing.py"}, "entry", "checks/missing.py: not in the archive"),
    (pack(SRC_PACKAGE), {"entry": "src/mylib/layers.py"}, "archive:src/mylib/layers.py",
     "defines no top-level build()"),
    (pack(SRC_PACKAGE), {"entry": "checks/net_check.py", "pythonpath": '["lib"]'}, "pythonpath[0]",
     "'lib' is not a directory of the archive"),
    (pack(SRC_PACKAGE), {"entry": "checks/net_check.py", "pythonpath": "src"}, "pythonpath",
     "expected a JSON list"),
])
def test_bad_archives_are_422_naming_the_member_or_field(client: FlaskClient, project: Project, archive: bytes,
                                                         fields: dict[str, str], path: str, message: str) -> None:
    problems = _problems(_post(client, project, archive, **fields))
    assert message in problems[path]


def test_an_archive_and_a_model_file_together_are_refused(client: FlaskClient, project: Project) -> None:
    response = client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data", data={
        "archive": (io.BytesIO(pack(SRC_PACKAGE)), "r.zip"), "model": (io.BytesIO(b"def build(): ...\n"), "m.py"),
        "entry": "checks/net_check.py"})
    assert "not both" in _problems(response)["model"]


def test_openapi_describes_the_archive(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").get_json()
    form = document["paths"]["/api/v1/runs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"model", "archive", "entry", "pythonpath"} <= set(form["properties"])
    assert "no '..', no links" in form["properties"]["archive"]["description"]
    assert "/api/v1/environment" in document["paths"]


def test_environment_lists_what_each_started_worker_recorded(api_app: Flask, client: FlaskClient,
                                                             project: Project) -> None:
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.lifecycle import record_worker_environment

    assert client.get("/api/v1/environment", headers=project.headers).get_json() == {"workers": []}
    with api_app.app_context():
        record_worker_environment(store.session(), "cpu1@host", ["cpu"])
    workers = client.get("/api/v1/environment", headers=project.headers).get_json()["workers"]
    assert [(w["worker"], w["queues"]) for w in workers] == [("cpu1@host", ["cpu"])]
    import torch

    assert workers[0]["packages"][0] == {"name": "torch", "version": torch.__version__}
    assert client.get("/api/v1/environment").status_code == 401


def test_file_names_with_bidi_controls_are_shown_escaped(api_app: Flask, client: FlaskClient,
                                                         project: Project) -> None:
    """U+202E (right-to-left override) in a file name would make "evil", U+202E, "yp.txt" display as
    "eviltxt.py"."""
    response = _post(client, project, pack({"check.py": b"def build(): ...\n", "evil\u202eyp.txt": b"x"}),
                     entry="check.py")
    assert response.status_code == 202, response.get_json()
    sign_in(client, project.token)
    html = client.get(f"/runs/{response.get_json()['id']}").get_data(as_text=True)
    assert "\u202e" not in html
    assert "<code>evil\\u202eyp.txt</code>" in html


@pytest.mark.parametrize("fields", [
    {"model": (io.BytesIO(b"def build(): ...\n"), "m.py"), "archive": (io.BytesIO(pack({"c.py": b""})), "r.zip"),
     "entry": "c.py"},  # both
    {"options": "{}"},  # neither
    {"model": (io.BytesIO(b"def build(): ...\n"), "m.py"), "entry": "c.py"},  # entry belongs with an archive
    {"archive": (io.BytesIO(pack({"c.py": b"def build(): ...\n"})), "r.zip")},  # an archive without its entry
])
def test_exactly_one_of_model_and_archive_as_the_openapi_document_says(api_app: Flask, client: FlaskClient,
                                                                      project: Project, fields: dict[str, Any]) -> None:
    from gradcheck_service.service.api.openapi import build_document

    with api_app.app_context():
        form = build_document(api_app)["paths"]["/api/v1/runs"]["post"]["requestBody"]["content"][
            "multipart/form-data"]["schema"]
    branches = form["oneOf"]
    assert [b["required"] for b in branches] == [["model"], ["archive", "entry"]]
    assert {n["required"][0] for n in branches[0]["not"]["anyOf"]} == {"archive", "entry", "pythonpath"}
    assert branches[1]["not"] == {"required": ["model"]}
    matches = [set(b["required"]) <= set(fields) and not any(set(n["required"]) <= set(fields) for n in (
        b["not"].get("anyOf") or [b["not"]])) for b in branches]
    assert matches.count(True) != 1  # the document refuses this form ...
    response = client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data", data=fields)
    assert response.status_code == 422 and response.is_json  # ... and so does the API
