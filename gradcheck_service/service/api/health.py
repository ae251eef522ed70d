"""Liveness and readiness probes (no token needed)."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from ..extensions import store
from .openapi import documented
from .schemas import Health

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@documented("Liveness: the process answers", responses={200: Health}, tag="health")
def healthz() -> ResponseReturnValue:
    return jsonify({"status": "ok", "checks": {}})


def _timed(probe: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # any failure means "not ready"; the reason is reported, not raised
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def _database() -> None:
    with store.engine.connect() as connection:  # type: ignore[union-attr]
        connection.execute(text("SELECT 1"))


def _broker() -> None:
    celery_app = current_app.extensions["celery"]
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


@bp.get("/readyz")
@documented("Readiness: the database and the broker answer", responses={200: Health, 503: Health}, tag="health")
def readyz() -> ResponseReturnValue:
    checks = {"database": _timed(_database), "broker": _timed(_broker)}
    ready = all(c["ok"] for c in checks.values())
    return jsonify({"status": "ready" if ready else "unavailable", "checks": checks}), 200 if ready else 503
