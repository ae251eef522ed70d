"""The embedded default: nothing configured, `serve` runs the API and one worker on SQLite files and queue.

Driven entirely through the command line, as a new user would: make a token, serve, submit, wait.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from gradcheck_service.service.store.migrate import head_revision, upgrade
from gradcheck_service.service.store.models import Base
from tests.service_support import (
    BUGGY_MODEL,
    ROOT,
    ServiceProcess,
    cli,
    free_port,
    service_env,
    wait_until_ready,
)

pytestmark = pytest.mark.integration

ENV_PROBE = '''
import os

def build():
    raise RuntimeError("ENV=" + ",".join(sorted(os.environ)))
'''


def test_migrations_from_empty_to_head_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'db.sqlite3'}"
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert context.get_current_revision() == head_revision()
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_embedded_serve_token_submit_wait(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = service_env(DATA_DIR=str(data_dir))
    made = cli(["token", "create", "--project", "demo"], env)  # before the server ever started
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("gcs_") and (data_dir / "gradcheck.sqlite3").is_file()

    port = free_port()
    server = ServiceProcess(["serve", "--port", str(port), "--workers", "1"],
                            {**env, "GRADCHECK_PROBE_SECRET": "do-not-leak"}, tmp_path / "serve.log")
    try:
        wait_until_ready(port, 90, "the embedded server to be ready")
        url = f"http://127.0.0.1:{port}"

        def submit(path: Path | str, *args: str, tok: str = token):  # type: ignore[no-untyped-def]
            return cli(["submit", str(path), "--server", url, "--token", tok, *args], env, timeout=180)

        passed = submit(ROOT / "examples" / "mlp.json", "--wait", "--json", "--label", "smoke")
        assert passed.returncode == 0, passed.stdout + passed.stderr
        run = json.loads(passed.stdout)
        assert run["status"] == "passed" and run["report"]["passed"] and run["labels"] == ["smoke"]

        buggy_file = tmp_path / "buggy.py"
        buggy_file.write_text(BUGGY_MODEL)
        failed = submit(buggy_file, "--wait")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "failed" in failed.stdout and "faulty modules:" in failed.stdout

        probe = tmp_path / "probe.py"
        probe.write_text(ENV_PROBE)
        errored = submit(probe, "--wait", "--json")
        assert errored.returncode == 3, errored.stdout + errored.stderr
        message = json.loads(errored.stdout)["error"]["message"]
        names = message.split("ENV=", 1)[1].split()[0].split(",")
        assert "HOME" in names
        assert not [n for n in names if n.startswith("GRADCHECK") or "DATABASE" in n or "BROKER" in n], names

        invalid = tmp_path / "bad.json"
        invalid.write_text(json.dumps({"input": {"shape": [2, 3]}, "layers": [{"type": "linear",
                                                                                "out_features": -1}]}))
        rejected = submit(invalid)
        assert rejected.returncode == 2 and "model:$.layers[0].out_features" in rejected.stderr
        assert "Traceback" not in rejected.stderr
        assert submit(tmp_path / "missing.py").returncode == 2
        assert submit(buggy_file, tok="gcs_wrong").returncode == 2

        listed = cli(["token", "list", "--project", "demo"], env)
        token_id = listed.stdout.split("\t", 1)[0]
        assert "active" in listed.stdout and token not in listed.stdout
        assert cli(["token", "revoke", token_id], env).returncode == 0
        refused = submit(buggy_file)
        assert refused.returncode == 2 and "401" in refused.stderr
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-3000:]
