"""The library stays light: importing it, building the command line or running a check loads none of the
service's stacks (Flask, Celery, SQLAlchemy), which a user's CI job or test session should not pay for.

``lint-imports`` (contracts in pyproject.toml, run by .ci/run) checks the static import graph; this test covers what
the graph cannot see, such as the command modules the CLI group imports by name."""

from __future__ import annotations

import json
import subprocess
import sys

SERVICE_STACKS = ("flask", "celery", "kombu", "sqlalchemy", "alembic", "gunicorn", "redis", "psycopg")


def _loaded_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\nimport json\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVICE_STACKS!r}))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_command_line_and_the_library_load_no_service_stack() -> None:
    code = """
import gradcheck_service
from gradcheck_service import CheckOptions, Report, check
from gradcheck_service.cli import main
from gradcheck_service.ci import runner, summary, junit
from gradcheck_service import testing, pytest_plugin
from gradcheck_service.definitions.checking import check_definition
"""
    assert _loaded_after(code) == []


def test_the_public_names_still_resolve_from_their_old_paths() -> None:
    """Deployments name ``gradcheck_service.app:create_app()``; the report's sections are imported from
    ``gradcheck_service.report`` and the engine's modules alike."""
    code = """
from gradcheck_service import create_app
from gradcheck_service.app import create_app as old_create_app
from gradcheck_service.service.app import create_app as new_create_app
assert create_app is old_create_app is new_create_app
from gradcheck_service.report import Report, MemoryProfile, Diagnosis, GradientNorms
from gradcheck_service.checks.memory import MemoryProfile as engine_memory_profile
from gradcheck_service.checks.health import Diagnosis as engine_diagnosis
assert engine_memory_profile is MemoryProfile and engine_diagnosis is Diagnosis
"""
    _loaded_after(code)  # the subprocess fails (CalledProcessError) when a name does not resolve
