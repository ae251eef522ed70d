"""The hostile model corpus through the real service: `serve` (API + embedded Celery worker, SQLite), over HTTP.

Every file in tests/fixtures/hostile must end as ``error`` with the containment named, inside its limit plus a
few seconds, with no process of it left and no secret of the service in the message; after each, the worker still
completes a normal run. Small limits keep the corpus fast: wall 10 s, CPU 5 s, 3 GiB, 64 processes, 16 MiB files.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gradcheck_service.ci.client import ServiceClient
from tests.service_support import (
    CORRECT_MODEL,
    ROOT,
    ServiceProcess,
    cli,
    free_port,
    processes_left_behind,
    service_env,
    wait_until,
    wait_until_ready,
)

pytestmark = pytest.mark.integration

HOSTILE = ROOT / "tests" / "fixtures" / "hostile"
WALL_S, CPU_S = 10, 5
LIMITS = {"RUN_TIMEOUT_S": WALL_S, "SANDBOX_CPU_S": CPU_S, "SANDBOX_ADDRESS_SPACE_BYTES": 3 * 2**30,
          "SANDBOX_PROCESSES": 64, "SANDBOX_FILE_SIZE_BYTES": 16 * 2**20}
SLACK_S = 6  # start-up of the sandboxed interpreter and torch (~2-4 s on a busy 2-core machine), SIGXCPU grace

# file -> (error code, words the message must contain)
EXPECTED: dict[str, tuple[str, str]] = {
    "read_other_files.py": ("filesystem_blocked", "filesystem"),
    "read_proc_environ.py": ("filesystem_blocked", "/proc/1/environ"),
    "dump_environment.py": ("invalid_model_file", "environment:"),
    "connect_local_ports.py": ("network_blocked", "network"),
    "write_outside_scratch.py": ("filesystem_blocked", "scratch directory"),
    "spin_forever.py": ("cpu_time_limit", f"{CPU_S} CPU seconds"),
    "sleep_forever.py": ("time_limit", f"time limit of {WALL_S} s"),
    "allocate_python.py": ("memory_limit", "address-space limit of 3 GiB"),
    "allocate_tensors.py": ("memory_limit", "address-space limit of 3 GiB"),
    "fork_bomb.py": ("process_limit", "more than 64 processes"),
    "flood_stdout.py": ("file_size_limit", "16,777,216 bytes"),
}

def test_corpus_covers_every_hostile_file() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in HOSTILE.glob("*.py"))


@dataclass
class LiveService:
    url: str
    token: str
    data_dir: Path
    other_job: Path  # another user's job directory, as a worker leaves it while that check runs
    secrets: list[str]
    server: ServiceProcess

    def submit(self, source: str, name: str) -> str:
        path = self.data_dir.parent / name
        path.write_text(source)
        return ServiceClient(self.url, self.token).submit(path, {}, {"labels": ["hostile"]})

    def run(self, run_id: str) -> dict[str, Any]:
        return ServiceClient(self.url, self.token).run(run_id).model_dump(mode="json")

    def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        return dict(wait_until(lambda: (r := self.run(run_id))["status"] in ("passed", "failed", "error") and r,
                               timeout, f"run {run_id} to finish", interval=0.2))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, bubblewrap: None) -> Iterator[LiveService]:
    tmp = tmp_path_factory.mktemp("hostile")
    data_dir = tmp / "data"
    secret_key = "sk-" + os.urandom(12).hex()
    env = {**service_env(DATA_DIR=str(data_dir), SECRET_KEY=secret_key, **LIMITS),
           "AWS_SECRET_ACCESS_KEY": "aws-" + os.urandom(12).hex(), "CI_JOB_TOKEN": "ci-" + os.urandom(12).hex()}
    made = cli(["token", "create", "--project", "hostile"], env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    other_job = Path(tempfile.mkdtemp(prefix="gradcheck-someone-else-"))
    (other_job / "model.py").write_text("# another user's model\n")
    port = free_port()
    server = ServiceProcess(["serve", "--port", str(port), "--workers", "1"], env, tmp / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 120, "the embedded service to be ready")
        # (the data directory itself is no secret here: the hostile files are told its path and echo it back)
        secrets = [token, secret_key, env["AWS_SECRET_ACCESS_KEY"], env["CI_JOB_TOKEN"], "GRADCHECK_",
                   "sqla+sqlite", "sqlite:///"]
        yield LiveService(url, token, data_dir, other_job, secrets, server)
    finally:
        server.stop()
        shutil.rmtree(other_job, ignore_errors=True)


def _source(name: str, live: LiveService) -> str:
    """The hostile file, with the service's own files and ports filled in where it asks for them."""
    source = (HOSTILE / name).read_text()
    port = int(live.url.rsplit(":", 1)[1])
    service_files = [str(live.data_dir / n) for n in ("gradcheck.sqlite3", "broker.sqlite3", "secret_key")]
    service_files.append(str(live.other_job / "model.py"))
    source = re.sub(r"^PORTS: .*# filled in by the test$", f"PORTS = {[6379, 5432, port]!r}", source, flags=re.M)
    return re.sub(r"^EXTRA_PATHS: .*# filled in by the test$", f"EXTRA_PATHS = {service_files!r}", source,
                  flags=re.M)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_model_is_contained(live: LiveService, name: str) -> None:
    code, words = EXPECTED[name]
    started = time.monotonic()
    run_id = live.submit(_source(name, live), name)
    run = live.wait(run_id, WALL_S + 60)
    error = run["error"] or {}
    assert run["status"] == "error", run
    assert error["code"] == code, error
    assert words in error["message"], error["message"]
    assert "ESCAPED" not in error["message"], error["message"]
    leaked = [s for s in live.secrets if s in error["message"]]
    assert not leaked, f"the error message leaks {leaked}: {error['message']}"
    assert run["timings"]["run_s"] <= WALL_S + SLACK_S, run["timings"]
    assert time.monotonic() - started <= WALL_S + SLACK_S + 30  # queueing included; the worker is not wedged
    assert processes_left_behind(run_id) == []

    # The worker is still serving: the next run (a model file, sandboxed too) completes normally.
    next_id = live.submit(CORRECT_MODEL, "correct.py")
    after = live.wait(next_id, 60)
    assert after["status"] == "passed", after


def test_nothing_was_planted_outside_the_sandbox(live: LiveService) -> None:
    """Belt and braces for write_outside_scratch.py: none of its targets exists on the host afterwards."""
    for path in ("/tmp/planted", "/usr/planted", "/etc/planted", str(ROOT / ".venv" / "planted")):
        assert not Path(path).exists(), path
    assert "Traceback" not in live.server.output(), live.server.output()[-3000:]
