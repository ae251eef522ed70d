"""Dashboard sign-in: redirects, CSRF, the session cookie, sign-out, revocation, and the API kept apart."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.unit.service_api import Project

PAGES = ["/", "/models", "/models/mlp", "/compare", "/runs/0123456789abcdef0123456789abcdef"]


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    html = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, f"no CSRF token in {path}"
    return match.group(1)


def sign_in(client: FlaskClient, token: str) -> None:
    response = client.post("/login", data={"token": token, "csrf_token": csrf_token(client)})
    assert response.status_code == 302, response.get_data(as_text=True)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_redirects_to_login_when_signed_out(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_polled_json_answers_401_instead_of_redirecting(client: FlaskClient) -> None:
    response = client.get("/live.json?ids=abc")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_login_form_has_token_field_and_csrf_token(client: FlaskClient) -> None:
    html = client.get("/login").get_data(as_text=True)
    assert 'name="token"' in html and 'type="password"' in html
    assert 'name="csrf_token"' in html


def test_login_without_csrf_token_is_refused(client: FlaskClient, project: Project) -> None:
    response = client.post("/login", data={"token": project.token})
    assert response.status_code == 400
    assert "did not come from this site" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302  # still signed out


def test_login_with_forged_csrf_token_is_refused(client: FlaskClient, project: Project) -> None:
    csrf_token(client)  # a session exists, but the posted token is not the one it issued
    response = client.post("/login", data={"token": project.token, "csrf_token": "forged"})
    assert response.status_code == 400
    assert client.get("/").status_code == 302


def test_wrong_token_is_refused_with_a_message(client: FlaskClient, project: Project) -> None:
    response = client.post("/login", data={"token": "gcs_not-a-token", "csrf_token": csrf_token(client)})
    assert response.status_code == 401
    assert "unknown or revoked" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_empty_token_names_the_problem(client: FlaskClient) -> None:
    response = client.post("/login", data={"token": "", "csrf_token": csrf_token(client)})
    assert response.status_code == 400
    assert "Paste your project token" in response.get_data(as_text=True)


def test_sign_in_returns_to_the_page_asked_for(client: FlaskClient, project: Project) -> None:
    first = client.get("/models")
    target = first.headers["Location"]
    response = client.post(target, data={"token": project.token, "csrf_token": csrf_token(client)})
    assert response.headers["Location"] == "/models"
    page = client.get("/models")
    assert page.status_code == 200
    assert project.name in page.get_data(as_text=True)


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example"])
def test_sign_in_never_redirects_off_site(client: FlaskClient, project: Project, target: str) -> None:
    response = client.post("/login", query_string={"next": target},
                           data={"token": project.token, "csrf_token": csrf_token(client)})
    assert response.headers["Location"] == "/"


def test_session_cookie_holds_no_token_and_is_httponly_lax(client: FlaskClient, project: Project) -> None:
    response = client.post("/login", data={"token": project.token, "csrf_token": csrf_token(client)})
    cookie = next(v for k, v in response.headers.items() if k == "Set-Cookie" and v.startswith("session="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert project.token not in cookie
    assert project.token[4:20] not in cookie


def test_sign_out_needs_post_with_csrf(client: FlaskClient, project: Project) -> None:
    sign_in(client, project.token)
    assert client.get("/logout").status_code == 405
    refused = client.post("/logout", data={"csrf_token": "forged"})
    assert refused.status_code == 400
    assert client.get("/").status_code == 200  # still signed in
    response = client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert client.get("/").status_code == 302


def test_revoking_the_token_ends_its_dashboard_sessions(api_app: Flask, client: FlaskClient,
                                                        project: Project) -> None:
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.tokens import list_tokens, revoke_token

    sign_in(client, project.token)
    assert client.get("/").status_code == 200
    with api_app.app_context():
        session = store.session()
        assert revoke_token(session, list_tokens(session, project.name)[0].id)
        session.commit()
    assert client.get("/").status_code == 302


def test_dashboard_session_grants_no_api_access(client: FlaskClient, project: Project) -> None:
    sign_in(client, project.token)
    response = client.get("/api/v1/runs")
    assert response.status_code == 401
    assert response.is_json


def test_pages_carry_a_same_origin_content_security_policy(client: FlaskClient, project: Project) -> None:
    sign_in(client, project.token)
    policy = client.get("/").headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    assert "http" not in policy  # nothing from another origin, so the dashboard works offline
