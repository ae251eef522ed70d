"""Fixtures of the API tests (the service's store on a temporary SQLite file); see tests/api_support.py."""

from tests.api_support import api_app, client, other_project, project  # noqa: F401
