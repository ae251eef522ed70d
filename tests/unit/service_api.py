"""API test fixtures: an app on a fresh SQLite database and queue, and two projects with tokens.

No worker runs here: submissions stay queued. Reports of finished runs are produced by the real engine in the
test process and stored through the same code path a worker uses (claim, then finish).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient


@dataclass
class Project:
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def api_app(tmp_path: Path) -> Iterator[Flask]:
    from gradcheck_service.service.app import create_app
    from gradcheck_service.service.store.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'service.sqlite3'}"
    upgrade(url)
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path), "DATABASE_URL": url,
                      "BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}", "MAX_CONTENT_LENGTH": 256 * 1024})
    yield app
    from gradcheck_service.service.extensions import store

    store.session.remove()


@pytest.fixture
def client(api_app: Flask) -> FlaskClient:
    return api_app.test_client()


def _project(app: Flask, name: str) -> Project:
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.tokens import create_token

    with app.app_context():
        session = store.session()
        new = create_token(session, name)
        session.commit()
    return Project(name, new.token)


@pytest.fixture
def project(api_app: Flask) -> Project:
    return _project(api_app, "alpha")


@pytest.fixture
def other_project(api_app: Flask) -> Project:
    return _project(api_app, "beta")


def finish_with_report(app: Flask, run_id: str, report: dict[str, Any]) -> None:
    """Store ``report`` for a queued run exactly as a worker does (claim, then finish)."""
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.lifecycle import claim_run, finish_run, run_status

    with app.app_context():
        session = store.session()
        claim = claim_run(session, run_id, "test:0")
        assert claim.outcome == "run"
        assert finish_run(session, run_id, claim.claim, report) == run_status(report)
