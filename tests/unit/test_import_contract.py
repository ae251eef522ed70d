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
    """Every name of docs/import-paths.md, from where it lives and from where it was: deployments name
    ``gradcheck_service.app:create_app()``; the report's sections are imported from ``gradcheck_service.report``
    and the engine's modules alike."""
    code = """
from gradcheck_service import CheckOptions, Report, __version__, check, create_app
from gradcheck_service.checks.engine import check as engine_check, CheckError
from gradcheck_service.checks.working_copy import CheckError as working_copy_error
assert check is engine_check and CheckError is working_copy_error
from gradcheck_service.app import create_app as old_create_app
from gradcheck_service.service.app import create_app as new_create_app
assert create_app is old_create_app is new_create_app
from gradcheck_service.testing import assert_gradients_ok
from gradcheck_service.pytest_plugin import gradcheck
from gradcheck_service.definitions.spec import spec_json_schema
from gradcheck_service.report import (Report as R, TensorCheck, GradientCheck, Localization, ModuleCheck, Timings,
    ModelInfo, Environment, MemoryProfile, Diagnosis, GradientNorms, Finding, report_json_schema, write_json_schema,
    SCHEMA_PATH)
from gradcheck_service.report.model import Report as model_report
from gradcheck_service.checks.memory import MemoryProfile as engine_memory_profile
from gradcheck_service.checks.health import Diagnosis as engine_diagnosis, GradientNorms as engine_norms
from gradcheck_service.checks.health.flow import GradientNorms as stats_norms
from gradcheck_service.checks.health import Finding as engine_finding
from gradcheck_service.checks.memory import BatchScaling, CheckpointingPlan, PrecisionComparison
from gradcheck_service.report.memory import BatchScaling as B, CheckpointingPlan as C, PrecisionComparison as P
assert Report is R is model_report and engine_memory_profile is MemoryProfile and engine_diagnosis is Diagnosis
assert engine_norms is stats_norms is GradientNorms and engine_finding is Finding
assert (BatchScaling, CheckpointingPlan, PrecisionComparison) == (B, C, P)
from gradcheck_service.report.units import human_bytes, parse_bytes
from gradcheck_service.cli.render_health import human_bytes as old_human_bytes
from gradcheck_service.cli.check import parse_bytes as click_parse_bytes
assert old_human_bytes is human_bytes and click_parse_bytes("1KiB") == parse_bytes("1KiB") == 1024
from gradcheck_service.types import LossFn, ExitCode, Mode, FailOn, Verdict
from gradcheck_service.checks.loss import LossFn as engine_loss_fn
from gradcheck_service.runs import RunOut, RunCreated, RunSummary
from gradcheck_service.service.api import schemas
assert (schemas.RunOut, schemas.RunCreated, schemas.RunSummary) == (RunOut, RunCreated, RunSummary)
"""
    _loaded_after(code)  # the subprocess fails (CalledProcessError) when a name does not resolve
