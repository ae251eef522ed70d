"""Fixtures for the service integration tests: the real PostgreSQL and Redis of the machine, real workers.

A fresh PostgreSQL database per test session (dropped after) and a fresh Redis key prefix per session (its keys
deleted after). Outside CI an unreachable server skips these tests with the reason; with CI=true it fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.service_support import ServiceProcess, service_env

PG_URL = os.environ.get("GRADCHECK_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GRADCHECK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unavailable(what: str, error: BaseException) -> None:
    message = f"{what} is not reachable: {type(error).__name__}: {error}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: the service tests need it; .ci/run starts it)")
    pytest.skip(message)


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, drop it."""
    admin_url = make_url(PG_URL)
    name = f"gradcheck_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable(f"PostgreSQL at {admin_url.render_as_string(hide_password=True)}", exc)
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated database for the session."""
    from gradcheck_service.service.store.migrate import upgrade

    with fresh_pg_database() as url:
        upgrade(url)
        yield url


@dataclass
class RedisTarget:
    url: str
    prefix: str


@pytest.fixture(scope="session")
def redis_target() -> Iterator[RedisTarget]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        unavailable(f"Redis at {REDIS_URL}", exc)
    prefix = f"gradcheck-test-{uuid.uuid4().hex[:8]}:"
    yield RedisTarget(REDIS_URL, prefix)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@dataclass
class Service:
    """Settings shared by the in-process API and the worker subprocesses of one test."""

    settings: dict[str, Any]
    tmp: Path

    def env(self, **overrides: Any) -> dict[str, str]:
        return service_env(**{**self.settings, **overrides})

    def app(self) -> Any:
        from gradcheck_service.service.app import create_app

        return create_app({"TESTING": True, **self.settings})

    def worker(self, name: str, *args: str, **overrides: Any) -> ServiceProcess:
        proc = ServiceProcess(["worker", "--loglevel", "INFO", "-n", f"{name}@%h", *args], self.env(**overrides),
                              self.tmp / f"{name}.log")
        proc.wait_for(" ready.", timeout=90)
        return proc


@pytest.fixture
def redis_pg_service(pg_url: str, redis_target: RedisTarget, tmp_path: Path) -> Service:
    """PostgreSQL + Redis, a queue namespace of this test's own (so a stale message never leaks in)."""
    return Service({
        "DATABASE_URL": pg_url, "BROKER_URL": redis_target.url,
        "BROKER_KEY_PREFIX": f"{redis_target.prefix}{uuid.uuid4().hex[:6]}:", "DATA_DIR": str(tmp_path),
        "HEARTBEAT_INTERVAL_S": 0.5, "STALE_AFTER_S": 6, "REAPER_INTERVAL_S": 2,
    }, tmp_path)
