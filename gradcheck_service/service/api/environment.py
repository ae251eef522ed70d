"""``GET /api/v1/environment``: the Python packages the workers provide, as each worker recorded them at start."""

from __future__ import annotations

from flask import jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ..extensions import store
from ..store.models import WorkerEnvironment
from . import bp
from .openapi import documented
from .schemas import EnvironmentOut


@bp.get("/environment")
@documented("The Python packages and versions the workers provide", responses={200: EnvironmentOut},
            tag="environment")
def environment() -> ResponseReturnValue:
    """One entry per worker that has started (newest first): its queues, Python version and every installed
    distribution with its version. A model file may import these; anything else must be sent with the model."""
    rows = store.session().scalars(select(WorkerEnvironment).order_by(WorkerEnvironment.seen_at.desc())).all()
    return jsonify({"workers": [
        {"worker": row.worker, "queues": row.queues, "python": row.python, "started_at": row.seen_at.isoformat(),
         "packages": [{"name": name, "version": version} for name, version in row.packages.items()]}
        for row in rows
    ]})
