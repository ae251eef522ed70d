"""Engines and sessions: one engine per process, SQLite tuned for several processes, PostgreSQL via psycopg 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from ... import strict_json

# How long a SQLite writer waits for another process's lock before failing, milliseconds. The API, the
# embedded worker and the CLI write to the same file; WAL lets readers go on while one of them writes.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; for SQLite the file's directory is created and WAL + busy timeout switched on.

    JSON columns are written as strict JSON (NaN/Inf as strings): PostgreSQL refuses the bare tokens."""
    kwargs.setdefault("json_serializer", strict_json.dumps)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Store:
    """The process's engine and its thread-local session registry.

    ``store.session`` is a :class:`scoped_session`: each thread (request, task) gets its own session, removed at the
    end of the request or task. Forked worker processes call :meth:`dispose` so they never share connections.
    """

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.session: scoped_session[Session] = scoped_session(sessionmaker(expire_on_commit=False))

    def configure(self, url: str) -> Store:
        if self.engine is not None and str(self.engine.url) == str(make_url(url)):
            return self
        if self.engine is not None:
            self.session.remove()
            self.engine.dispose()
        self.engine = make_engine(url)
        self.session.configure(bind=self.engine)
        return self

    def dispose(self) -> None:
        """Forget connections inherited from a parent process (call right after fork)."""
        if self.engine is not None:
            self.engine.dispose(close=False)

    def new_session(self) -> Session:
        """A session outside the thread-local registry (the caller closes it)."""
        if self.engine is None:
            raise RuntimeError("store not configured")
        return Session(self.engine, expire_on_commit=False)
