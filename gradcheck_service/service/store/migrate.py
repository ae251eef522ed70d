"""Alembic, driven from code: ``gradcheck-service db upgrade`` and the automatic upgrade of an empty database.

The migration scripts live in ``migrations/`` at the repository root (next to ``alembic.ini``), found from the
package's own location in a checkout or an editable install; ``GRADCHECK_MIGRATIONS_DIR`` points elsewhere (the
Docker image sets it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from ... import PACKAGE_DIR
from .db import make_engine


class MigrationsNotFound(RuntimeError):
    pass


def migrations_dir() -> Path:
    override = os.environ.get("GRADCHECK_MIGRATIONS_DIR")
    candidates = [Path(override)] if override else []
    candidates.append(PACKAGE_DIR.parent / "migrations")
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationsNotFound(
        "migration scripts not found (looked in " + ", ".join(str(c) for c in candidates)
        + "); set GRADCHECK_MIGRATIONS_DIR to the migrations/ folder of the gradcheck-service source"
    )


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (creating the SQLite file if needed)."""
    _migrate(url, command.upgrade, revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` back to ``revision`` (an operator rolling back a release; tests)."""
    _migrate(url, command.downgrade, revision)


def _migrate(url: str, action: Callable[[Config, str], None], revision: str) -> None:
    engine = make_engine(url)
    try:
        config = alembic_config(url)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            action(config, revision)
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
