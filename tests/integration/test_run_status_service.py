"""Run statuses and stored reports through the real server (``serve`` with its embedded worker), on SQLite and on
PostgreSQL: an inconclusive check is stored as ``inconclusive`` (filter, badge, banner, ``submit``'s exit code), a
report holding NaN is stored and answered as strict JSON, and a report the database refuses ends the run at once.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gradcheck_service.service.store.migrate import downgrade, upgrade
from tests.integration.service_fixtures import fresh_pg_database
from tests.service_support import (
    ServiceProcess,
    cli,
    free_port,
    service_env,
    signed_in_opener,
    wait_until_ready,
)

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NON_REPRODUCIBLE = FIXTURES / "nonreproducible_model.py"
NAN_GRADIENT = FIXTURES / "nan_gradient_model.py"
CLOSURE_GPT = FIXTURES / "closure_gpt.py"
QUICK_OPTIONS = '{"health": false, "memory": false}'
EXIT_FAILED = 1


def _bare_token(constant: str) -> None:
    raise AssertionError(f"bare {constant} in a JSON answer: strict parsers reject it")


def strict_loads(text: str | bytes) -> Any:
    """``json.loads`` as strict as a browser's JSON.parse or PostgreSQL: NaN/Infinity tokens are an error."""
    return json.loads(text, parse_constant=_bare_token)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind (``serve`` migrates it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'gradcheck.sqlite3'}"
        return
    with fresh_pg_database() as url:
        yield url


@dataclass
class Server:
    url: str
    token: str
    env: dict[str, str]
    database_url: str

    def submit(self, path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
        """``submit --wait --json``: its exit code and the run it printed."""
        done = cli(["submit", str(path), "--server", self.url, "--token", self.token, "--wait", "--json",
                    "--options", QUICK_OPTIONS, *extra], self.env, timeout=240)
        assert done.stdout.strip(), done.stderr
        return done.returncode, dict(strict_loads(done.stdout))

    def get(self, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return strict_loads(response.read())

    def page(self, path: str) -> str:
        return str(signed_in_opener(self.url, self.token).open(f"{self.url}{path}", timeout=10).read().decode())


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    """``serve`` on ``database_url`` with its embedded worker (the queue in SQLite under DATA_DIR)."""
    env = service_env(DATA_DIR=str(tmp_path / "data"), DATABASE_URL=database_url)
    made = cli(["token", "create", "--project", "status"], env)
    assert made.returncode == 0, made.stderr
    port = free_port()
    process = ServiceProcess(["serve", "--port", str(port), "--workers", "1", "--worker"], env,
                             tmp_path / "serve.log")
    try:
        wait_until_ready(port, 90, "the server to be ready")
        yield Server(f"http://127.0.0.1:{port}", made.stdout.strip().splitlines()[-1], env, database_url)
    finally:
        process.stop()
    assert "Traceback" not in process.output(), process.output()[-3000:]


def test_an_inconclusive_check_is_stored_listed_shown_and_exits_as_check_does(server: Server) -> None:
    code, run = server.submit(NON_REPRODUCIBLE)
    assert run["status"] == "inconclusive", run.get("error")
    assert code == EXIT_FAILED  # as `check`: inconclusive is not passing
    assert run["report"]["verdict"] == "inconclusive" and run["attempts"] == 1
    assert "not reproducible" in run["summary"]["inconclusive_because"][0]
    allowed, again = server.submit(NON_REPRODUCIBLE, "--allow-inconclusive")
    assert (allowed, again["status"]) == (0, "inconclusive")

    listed = server.get("/api/v1/runs?status=inconclusive")["runs"]
    assert {r["id"] for r in listed} == {run["id"], again["id"]}
    assert server.get("/api/v1/runs?status=failed")["runs"] == []  # no longer stored as failed

    page = server.page(f"/runs/{run['id']}")
    assert 'class="badge status-inconclusive"' in page
    banner = page.split('id="verdict"', 1)[1].split("</section>", 1)[0]
    assert 'data-status="inconclusive"' in page and "banner-inconclusive" in page
    assert "Inconclusive" in banner and "not reproducible" in banner
    listing = server.page("/?status=inconclusive")
    assert run["id"][:8] in listing and "verdict-inconclusive" in listing


def test_a_report_holding_nan_is_stored_once_and_answered_as_strict_json(server: Server) -> None:
    code, run = server.submit(NAN_GRADIENT)
    # autograd's gradient is NaN where finite differences are finite: a wrong backward, never a pass
    assert (code, run["status"]) == (EXIT_FAILED, "failed"), run.get("error")
    assert run["attempts"] == 1  # stored by its first attempt: never re-run
    offset = next(t for t in run["report"]["gradient_check"]["parameters"] if t["name"] == "offset")
    # The analytic gradient of sqrt(p - p) is NaN: the figures that hold it are the documented strings.
    assert "NaN" in (offset["max_abs_error"], offset["max_rel_error"]) or offset["worst"]["analytic"] == "NaN"
    from gradcheck_service.report import Report

    assert Report.model_validate(run["report"]).model.name  # the strings read back as floats
    assert server.get(f"/api/v1/runs/{run['id']}")["id"] == run["id"]  # strict_loads: no bare NaN token
    page = server.page(f"/runs/{run['id']}")
    assert "offset" in page and "NaN" in page
    strict_loads(server.page(f"/runs/{run['id']}.json"))


def test_a_gpt_reaching_its_mlp_through_a_closure_fails_through_the_service_with_the_module_named(
        server: Server, tmp_path: Path) -> None:
    """minGPT's pattern (``self.mlpf = lambda x: ...``) with a wrong GELU backward: the service checks the model
    the file builds, in float64, and names the activation."""
    buggy = tmp_path / "closure_gpt.py"
    buggy.write_text(CLOSURE_GPT.read_text().replace('GELU_BACKWARD = "right"', 'GELU_BACKWARD = "no pdf"'))
    code, run = server.submit(buggy)
    assert (code, run["status"]) == (EXIT_FAILED, "failed"), run.get("error")
    report = run["report"]
    assert report["gradient_check"]["dtype"] == "float64"
    assert set(report["localization"]["faulty_modules"]) == {"h.0.mlp.act", "h.1.mlp.act"}


NUL_PRINTING_MODEL = '''
import torch
from torch import nn


def build():
    print("a NUL character: \\x00")  # PostgreSQL's JSON columns cannot hold U+0000
    torch.manual_seed(0)
    return nn.Linear(3, 2).double(), torch.randn(4, 3, dtype=torch.float64)
'''


def test_a_report_the_database_refuses_ends_the_run_at_once_as_report_not_stored(server: Server,
                                                                                  tmp_path: Path) -> None:
    path = tmp_path / "nul_printer.py"
    path.write_text(NUL_PRINTING_MODEL)
    started = dt.datetime.now(dt.UTC)
    code, run = server.submit(path)
    if server.database_url.startswith("sqlite"):  # SQLite stores the character: nothing to refuse
        assert (code, run["status"]) == (0, "passed") and "\x00" in run["report"]["output"]
        return
    assert run["status"] == "error" and code == 3
    assert run["error"]["code"] == "report_not_stored"
    assert "report could not be stored" in run["error"]["message"] and "\\u0000" in run["error"]["message"]
    assert run["attempts"] == 1 and run["report"] is None  # ended at once, not re-run by the reaper
    assert dt.datetime.fromisoformat(run["finished_at"]) - started < dt.timedelta(seconds=120)


# -- the migration that gave inconclusive runs their status ---------------------------------------------------------

def _insert_runs(url: str) -> None:
    """Three finished runs as revision 0003 stored them: inconclusive ones had status failed."""
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine, only=["projects", "runs", "run_reports"])
        projects, runs, reports = (meta.tables[n] for n in ("projects", "runs", "run_reports"))
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with engine.begin() as connection:
            project = connection.execute(projects.insert().values(name="p", created_at=now)).inserted_primary_key[0]
            for run_id, status, verdict in (("a" * 32, "failed", "inconclusive"), ("b" * 32, "failed", "failed"),
                                            ("c" * 32, "passed", None)):
                connection.execute(runs.insert().values(
                    id=run_id, project_id=project, status=status, created_at=now, attempts=1, max_attempts=3,
                    timeout_s=60.0, model_name="m", model_hash="0" * 64, definition_kind="spec", definition="{}",
                    options={}, device="cpu", queue="cpu"))
                report: dict[str, Any] = {"passed": status == "passed"}  # the oldest reports have no verdict
                if verdict:
                    report |= {"verdict": verdict, "inconclusive_because": ["the forward is not reproducible"]
                               if verdict == "inconclusive" else []}
                connection.execute(reports.insert().values(
                    run_id=run_id, schema_version="1.0", passed=status == "passed", faulty_modules=[],
                    failed_because=[], diagnosis=[], report=report, created_at=now))
    finally:
        engine.dispose()


def _state(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            statuses = dict(connection.execute(sa.text("SELECT id, status FROM runs ORDER BY id")).all())
            columns = {c["name"] for c in sa.inspect(connection).get_columns("run_reports")}
            reasons = dict(connection.execute(sa.text(
                "SELECT run_id, inconclusive_because FROM run_reports")).all()) if "inconclusive_because" in \
                columns else None
        return {"status": {k[0]: v for k, v in statuses.items()}, "reasons": reasons}
    finally:
        engine.dispose()


def _decoded(reasons: dict[str, Any] | None) -> dict[str, Any] | None:
    """SQLite hands JSON columns back as text through plain SQL; PostgreSQL as Python objects."""
    if reasons is None:
        return None
    return {k[0]: json.loads(v) if isinstance(v, str) else v for k, v in reasons.items()}


def test_migration_0004_gives_inconclusive_runs_their_status_and_takes_it_back(database_url: str) -> None:
    upgrade(database_url, "0003")
    _insert_runs(database_url)
    upgrade(database_url)
    state = _state(database_url)
    assert state["status"] == {"a": "inconclusive", "b": "failed", "c": "passed"}
    assert _decoded(state["reasons"]) == {"a": ["the forward is not reproducible"], "b": [], "c": []}
    downgrade(database_url, "0003")
    state = _state(database_url)
    assert state["status"] == {"a": "failed", "b": "failed", "c": "passed"} and state["reasons"] is None
    upgrade(database_url)
    assert _state(database_url)["status"]["a"] == "inconclusive"
