"""The Flask application factory: API, health probes and (when present) the dashboard, on one SQL store."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from flask import Blueprint, Flask
from flask.json.provider import DefaultJSONProvider

from .. import strict_json
from . import config as service_config
from .extensions import celery_init_app, store


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app from ``GRADCHECK_*`` environment variables, then ``test_config`` on top.

    Nothing is created on disk or migrated here (``gradcheck-service serve`` and ``db upgrade`` do that), so
    importing the app in a worker or a test has no side effects beyond opening a lazy engine.
    """
    app = Flask(__name__)
    app.config.from_mapping(service_config.DEFAULTS)
    app.config.from_prefixed_env(service_config.ENV_PREFIX)
    if test_config:
        app.config.from_mapping(test_config)
    service_config.finalize(app.config)
    app.json = StrictJSONProvider(app)

    store.configure(app.config["DATABASE_URL"])
    app.teardown_appcontext(lambda _exc: store.session.remove())
    celery_init_app(app)

    from .api import bp as api_bp
    from .api import errors
    from .api.health import bp as health_bp
    from .api.limits import init_limits

    errors.register(app)
    app.register_blueprint(health_bp)
    app.register_blueprint(api_bp)
    init_limits(app)
    dashboard = _optional_blueprint(f"{__package__}.dashboard")
    if dashboard is not None:
        app.register_blueprint(dashboard)
    return app


class StrictJSONProvider(DefaultJSONProvider):
    """Every JSON answer is strict JSON: a NaN or infinite float (in a report, in stored options) is written as the
    string "NaN", "Infinity" or "-Infinity", as in the reports themselves; keys keep their order."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return super().dumps(strict_json.encode_non_finite(obj), allow_nan=False, **kwargs)


def _optional_blueprint(module_name: str) -> Blueprint | None:
    """The ``bp`` of a package that may not be there yet (the dashboard is built separately)."""
    if importlib.util.find_spec(module_name) is None:
        return None
    blueprint = getattr(importlib.import_module(module_name), "bp", None)
    return blueprint if isinstance(blueprint, Blueprint) else None
