"""The REST API under ``/api/v1``: one blueprint, token-authenticated, every query scoped to the token's project."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from ..extensions import store
from ..store.tokens import authenticate
from .errors import ApiError
from .openapi import PUBLIC_PATHS, build_document, documented

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.before_request
def require_token() -> None:
    """Every route but the OpenAPI document needs ``Authorization: Bearer <token>``; sets ``g.project_id``."""
    if request.path in PUBLIC_PATHS:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing token: send 'Authorization: Bearer <token>' (gradcheck-service token create)",
                       headers={"WWW-Authenticate": "Bearer"})
    row = authenticate(store.session(), token.strip())
    if row is None:
        raise ApiError(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
    g.project_id = row.project_id
    g.project_name = row.project.name


@bp.get("/openapi.json")
@documented("This OpenAPI document", responses={200: None}, tag="meta")
def openapi_document() -> ResponseReturnValue:
    """Generated from the routes the app really serves."""
    return jsonify(build_document(current_app))


from . import environment, runs  # noqa: E402,F401  (registers the routes on bp)
