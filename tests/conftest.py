"""Fixtures shared by the unit, integration and end-to-end tests.

Helpers that tests import live in support modules, never in test modules: tests/service_support.py (specs, real
reports, service processes, prerequisites), tests/api_support.py (the API on a temporary SQLite store, projects),
tests/dashboard_support.py (runs seeded through the API, dashboard sign-in), tests/integration/service_fixtures.py
(PostgreSQL, Redis, Celery workers).
"""

from __future__ import annotations

import pytest

from tests.service_support import require_bubblewrap


@pytest.fixture(scope="session")
def bubblewrap() -> None:
    """The sandbox's bubblewrap is installed (skipped without it; failed with CI=true)."""
    require_bubblewrap()
