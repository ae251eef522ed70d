"""Access and limits against real gunicorn (3 worker processes) on PostgreSQL + Redis.

* Tokens are stored only as hashes: the whole database, dumped with ``pg_dump``, holds no raw token.
* A revoked token is refused with 401.
* The per-token rate limit and the per-project queue quota answer 429 with ``Retry-After`` and hold across the
  gunicorn processes (shared counters in Redis, a row lock in PostgreSQL): gunicorn's access log names the process
  that served each request, and more than one of them did.

(Project A's token getting 404 on every route of project B is one parametrized test over all routes in
``tests/unit/test_api_query.py``; it runs against the same API code.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.integration.service_fixtures import RedisTarget, fresh_pg_database, unavailable
from tests.service_support import ROOT, cli, free_port, service_env, spec, wait_until

pytestmark = pytest.mark.integration
RATE_LIMIT = 40  # requests per minute per token in these tests
MAX_QUEUED = 5


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Gunicorn:
    url: str
    env: dict[str, str]
    access_log: Path
    database_url: str

    def request(self, method: str, path: str, token: str | None = None, body: Any = None) -> Answer:
        """One request on a new connection (so the kernel may hand it to any gunicorn process)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Connection", "close")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw, headers = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            status, raw, headers = error.code, error.read(), dict(error.headers)
        return Answer(status, json.loads(raw) if raw else {}, headers)

    def token(self, project: str) -> str:
        result = cli(["token", "create", "--project", project], self.env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def served_by(self, method: str, path: str, requests: int) -> dict[int, Counter[int]]:
        """From the access log: for ``method path`` requests, the status counts per gunicorn process id, once all
        ``requests`` of them are logged (a process writes its line after it answered, so the last may lag)."""
        deadline = time.monotonic() + 10
        while True:
            per_pid: dict[int, Counter[int]] = {}
            for line in self.access_log.read_text().splitlines():
                pid, status, logged_method, logged_path = line.split(" ", 3)
                if (logged_method, logged_path) == (method, path):
                    per_pid.setdefault(int(pid.strip("<>")), Counter())[int(status)] += 1
            if sum(sum(c.values()) for c in per_pid.values()) >= requests or time.monotonic() > deadline:
                return per_pid
            time.sleep(0.1)


@pytest.fixture
def gunicorn(redis_target: RedisTarget, tmp_path: Path) -> Iterator[Gunicorn]:
    """``gunicorn -w 3`` serving ``create_app()`` with a rate limit and a queue quota; no check worker runs, so
    submitted runs stay queued."""
    from gradcheck_service.service.store.migrate import upgrade

    with fresh_pg_database() as database_url:
        upgrade(database_url)
        env = service_env(DATABASE_URL=database_url, BROKER_URL=redis_target.url, DATA_DIR=str(tmp_path),
                          BROKER_KEY_PREFIX=f"{redis_target.prefix}{uuid.uuid4().hex[:6]}:",
                          RATE_LIMIT=f"{RATE_LIMIT}/minute", MAX_QUEUED_PER_PROJECT=MAX_QUEUED)
        port = free_port()
        access_log = tmp_path / "access.log"
        log = (tmp_path / "gunicorn.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", "3", "--worker-class", "gthread", "--threads", "4",
             "--bind", f"127.0.0.1:{port}", "--access-logfile", str(access_log),
             "--access-logformat", "%(p)s %(s)s %(m)s %(U)s", "gradcheck_service.service.app:create_app()"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        server = Gunicorn(f"http://127.0.0.1:{port}", env, access_log, database_url)
        try:
            wait_until(lambda: _answers(server), 60, "gunicorn to answer /healthz")
            yield server
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


def _answers(server: Gunicorn) -> bool:
    try:
        return server.request("GET", "/healthz").status == 200
    except OSError:
        return False


def test_rate_limit_and_queue_quota_hold_across_three_gunicorn_workers(gunicorn: Gunicorn) -> None:
    limited, other = gunicorn.token("limited"), gunicorn.token("bystander")
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: gunicorn.request("GET", "/api/v1/runs", limited), range(RATE_LIMIT + 20)))
    statuses = Counter(a.status for a in answers)
    assert statuses == {200: RATE_LIMIT, 429: 20}, statuses  # per-process counters would have let up to 3x through
    for answer in (a for a in answers if a.status == 429):
        assert answer.body["error"]["code"] == "rate_limited"
        assert 0 < int(answer.headers["Retry-After"]) <= 61
    served = gunicorn.served_by("GET", "/api/v1/runs", RATE_LIMIT + 20)
    assert sum(c[200] for c in served.values()) == RATE_LIMIT
    assert len([pid for pid, c in served.items() if c[200]]) >= 2, f"one process served everything: {served}"
    assert gunicorn.request("GET", "/api/v1/models", limited).status == 429  # one budget for all routes
    assert gunicorn.request("GET", "/api/v1/runs", other).status == 200  # another token has its own budget
    assert gunicorn.request("GET", "/healthz").status == 200  # probes are never limited

    submitter = gunicorn.token("quota")
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda i: gunicorn.request("POST", "/api/v1/runs", submitter,
                                                           {"spec": spec(name=f"q{i}")}), range(12)))
    statuses = Counter(a.status for a in answers)
    assert statuses == {202: MAX_QUEUED, 429: 12 - MAX_QUEUED}, statuses
    refused = next(a for a in answers if a.status == 429)
    assert refused.body["error"]["code"] == "queue_full" and int(refused.headers["Retry-After"]) > 0
    assert f"limit is {MAX_QUEUED}" in refused.body["error"]["message"]
    listed = gunicorn.request("GET", "/api/v1/runs?status=queued", submitter).body["runs"]
    assert len(listed) == MAX_QUEUED
    posted = gunicorn.served_by("POST", "/api/v1/runs", 12)
    assert sum(c[202] for c in posted.values()) == MAX_QUEUED
    assert len(posted) >= 2, f"one process served every submission: {posted}"


def test_tokens_only_as_hashes_in_a_database_dump_and_revoked_is_401(gunicorn: Gunicorn) -> None:
    from gradcheck_service.service.store.tokens import hash_token

    tokens = [gunicorn.token(f"dump-{i}") for i in range(3)]
    for token in tokens:  # used, so last_used_at and the runs are written too
        assert gunicorn.request("POST", "/api/v1/runs", token, {"spec": spec()}).status == 202
    listing = cli(["token", "list"], gunicorn.env)
    assert listing.returncode == 0 and all(t not in listing.stdout for t in tokens)
    token_id = next(line.split()[0] for line in listing.stdout.splitlines() if "dump-0" in line)
    revoked = cli(["token", "revoke", token_id], gunicorn.env)
    assert revoked.returncode == 0, revoked.stderr
    answer = gunicorn.request("GET", "/api/v1/runs", tokens[0])
    assert answer.status == 401 and answer.body["error"]["code"] == "unauthorized"
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert gunicorn.request("GET", "/api/v1/runs", tokens[1]).status == 200

    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        unavailable("pg_dump", FileNotFoundError("pg_dump is not installed"))
    url = make_url(gunicorn.database_url)
    dump = subprocess.run([str(pg_dump), "--data-only", "-h", str(url.host), "-p", str(url.port or 5432), "-U",
                           str(url.username), str(url.database)], capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    for token in tokens:
        assert hash_token(token) in dump.stdout  # the dump does hold the token table ...
        assert token not in dump.stdout  # ... but never a token itself
        assert token.removeprefix("gcs_") not in dump.stdout
    log = (Path(gunicorn.access_log).parent / "gunicorn.log").read_text()
    assert all(t not in log for t in tokens), "a token was written to the server log"
