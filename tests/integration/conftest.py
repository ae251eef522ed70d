"""Integration fixtures: the service's (real PostgreSQL, Redis, Celery workers) are in service_fixtures.py."""

from tests.integration.service_fixtures import pg_url, redis_pg_service, redis_target  # noqa: F401
