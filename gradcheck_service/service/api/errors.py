"""JSON errors everywhere: ``{"error": {"code", "message", ...}}`` for every HTTP error and for crashes.

A crash is logged with its traceback on the server and answered with a generic 500 that reveals nothing of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, current_app, jsonify
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

# Machine-readable codes for the HTTP errors the API can answer.
_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    417: "expectation_failed", 422: "validation_error", 429: "too_many_requests", 431: "headers_too_large",
    500: "internal_error", 501: "not_implemented", 503: "unavailable",
}


def code_for(status: int) -> str:
    """The machine-readable code of an HTTP error status."""
    return _CODES.get(status, "http_error")


class ApiError(Exception):
    """An error answer with a status, a code, a message and optional details (e.g. ``problems``)."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 headers: dict[str, str] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.headers = headers or {}
        self.details = details


def validation_error(problems: Iterable[tuple[str, str]], message: str = "the request is not valid") -> ApiError:
    """422 listing each problem with its location (a JSON path such as ``$.spec.layers[2].out_features``)."""
    return ApiError(422, message, problems=[{"path": path, "message": msg} for path, msg in problems])


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **details: Any) -> Response:
    response = jsonify({"error": {"code": code, "message": message, **details}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.details)


def _http_error(exc: HTTPException) -> Response:
    if isinstance(exc.response, Response) and exc.response.is_json:  # already a JSON error (the rate limiter's)
        return exc.response
    status = exc.code or 500
    message = exc.description or exc.name
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = f"the request body is larger than the limit of {limit:,} bytes" if limit else message
    headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after", "www-authenticate")}
    return error_response(status, code_for(status), message, headers)


def _database_down(exc: OperationalError | InterfaceError) -> Response:
    current_app.logger.warning("database unavailable: %s", exc)
    return error_response(503, "unavailable", "the database is unavailable; retry shortly", {"Retry-After": "5"})


def _crash(exc: Exception) -> Response:
    current_app.logger.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal server error; the details are in the server log")


def register(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(OperationalError, _database_down)
    app.register_error_handler(InterfaceError, _database_down)
    app.register_error_handler(Exception, _crash)
