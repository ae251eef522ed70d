"""Fixtures of the API tests (the service's store on a temporary SQLite file); see tests/unit/service_api.py."""

from tests.unit.service_api import api_app, client, other_project, project  # noqa: F401
