"""Error pages in the dashboard's style, security headers, and the API kept answering JSON.

A 404 for an unknown URL has no blueprint, so the handler is app-wide: paths of the API and the probes (and
clients that do not accept HTML) still get the API's JSON error shape; browsers get the page.
"""

from __future__ import annotations

from flask import Response, current_app, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from ..api.errors import error_response
from . import bp
from .auth import JSON_ENDPOINTS

# URL prefixes that belong to the JSON API and the health probes.
JSON_PREFIXES = ("/api/", "/healthz", "/readyz")

# Every script, style, image and fetch comes from this server: the dashboard works offline and runs no inline code.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
                           "form-action 'self'")


def _wants_html() -> bool:
    if request.path.startswith(JSON_PREFIXES) or request.endpoint in JSON_ENDPOINTS:
        return False
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return request.blueprint == "dashboard" or best == "text/html"


def _page(code: int, title: str, message: str) -> ResponseReturnValue:
    return render_template("dashboard/error.html", code=code, title=title, message=message), code


@bp.app_errorhandler(404)
def not_found(exc: HTTPException) -> ResponseReturnValue:
    if not _wants_html():
        return error_response(404, "not_found", exc.description or "not found")
    message = exc.description if request.blueprint == "dashboard" else "There is no page at this address."
    return _page(404, "Not found", message or "There is no page at this address.")


@bp.errorhandler(Exception)
def dashboard_error(exc: Exception) -> ResponseReturnValue:
    """Any other HTTP error or crash inside a dashboard page; a crash is logged, its details are not shown."""
    if isinstance(exc, HTTPException):
        return _page(exc.code or 500, exc.name, exc.description or exc.name)
    current_app.logger.exception("dashboard page crashed", exc_info=exc)
    return _page(500, "Something went wrong",
                 "The page could not be shown because of an error on the server. The details are in the server "
                 "log; reloading may help if the run was still being written.")


@bp.after_request
def security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response
