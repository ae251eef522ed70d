"""Signing in to the dashboard with a project token; every other page needs the signed session.

The login form posts the token once (CSRF-protected by Flask-WTF); the session cookie (signed with the app's
``SECRET_KEY``, HttpOnly, SameSite=Lax) then holds only the token's row id, never the token. Each request re-reads
that row, so revoking a token (``gradcheck-service token revoke``) signs its dashboard sessions out too.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import g, jsonify, redirect, render_template, request, session, url_for
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from wtforms import PasswordField
from wtforms.validators import DataRequired

from ..extensions import store
from ..store.models import ApiToken
from ..store.tokens import authenticate
from . import bp

# Endpoints reachable without signing in.
PUBLIC_ENDPOINTS = {"dashboard.login", "dashboard.static"}
# Endpoints that answer JSON (polled by scripts): a 401 instead of a redirect to the login page.
JSON_ENDPOINTS = {"dashboard.live_status", "dashboard.run_json"}


class LoginForm(FlaskForm):
    token = PasswordField("Project token", validators=[DataRequired(message="Paste your project token.")])


class LogoutForm(FlaskForm):
    """Only the CSRF token: signing out is a POST, so another site cannot sign a user out with a link."""


@bp.record_once
def _cookie_defaults(state: BlueprintSetupState) -> None:
    # Flask leaves SameSite unset; Lax keeps the cookie off cross-site POSTs (a second line behind CSRF tokens).
    config = state.app.config
    if config.get("SESSION_COOKIE_SAMESITE") is None:
        config["SESSION_COOKIE_SAMESITE"] = "Lax"


@bp.before_request
def require_sign_in() -> ResponseReturnValue | None:
    """Set ``g.project_id``/``g.project_name`` from the session, or send the visitor to the login page."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    token_id = session.get("token_id")
    row = store.session().get(ApiToken, token_id) if isinstance(token_id, int) else None
    if row is None or row.revoked_at is not None:
        session.clear()
        if request.endpoint in JSON_ENDPOINTS:
            return jsonify({"error": {"code": "unauthorized", "message": "sign in at /login"}}), 401
        return redirect(url_for("dashboard.login", next=_here()))
    g.project_id = row.project_id
    g.project_name = row.project.name
    return None


def _here() -> str:
    return request.full_path.rstrip("?") if request.query_string else request.path


def _safe_next(target: str | None) -> str:
    """Only a path on this site: an absolute or scheme-relative URL would make the login an open redirect."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//") \
                and "\\" not in target:
            return target
    return url_for("dashboard.runs")


@bp.context_processor
def _forms() -> dict[str, object]:
    signed_in = "project_id" in g
    return {"logout_form": LogoutForm() if signed_in else None,
            "project_name": g.get("project_name")}


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    form = LoginForm()
    error = None
    status = 200
    if request.method == "POST":
        if form.validate_on_submit():
            row = authenticate(store.session(), form.token.data.strip())
            if row is not None:
                session.clear()
                session.permanent = True
                session["token_id"] = row.id
                return redirect(_safe_next(request.args.get("next")))
            error, status = "That token is unknown or revoked.", 401
        elif form.csrf_token.errors:
            error, status = "The sign-in form expired or did not come from this site; please try again.", 400
        else:
            error, status = "Paste your project token.", 400
    return render_template("dashboard/login.html", form=form, error=error), status


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    form = LogoutForm()
    if not form.validate_on_submit():
        return render_template("dashboard/error.html", code=400, title="Sign-out refused",
                               message="The sign-out form expired or did not come from this site."), 400
    session.clear()
    return redirect(url_for("dashboard.login"))
