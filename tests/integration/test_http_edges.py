"""The API's edges on a real gunicorn (``gradcheck-service serve``): what arrives before the app, and what costs.

* Archive bombs: a 1.5 MB tar.gz holding a 1.5 GiB member is refused after inflating at most a limit's worth of
  bytes, so six at once cost the server little CPU and ``/healthz`` stays fast meanwhile.
* Submissions per token are rate limited by default (``GRADCHECK_SUBMIT_RATE_LIMIT``): 429 JSON + Retry-After.
* gunicorn's own refusals (request line over 4094 bytes, headers too large, a NUL in a header) are JSON like every
  other error, and a 10 MB chunked body is 413, not a truncated body that fails to parse.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from gradcheck_service.service.store.tokens import create_token
from tests.service_support import (
    ROOT,
    ServiceProcess,
    free_port,
    service_env,
    spec,
    tar_gz_bomb,
    wait_until,
)

pytestmark = pytest.mark.integration
SUBMIT_RATE = 5  # submissions per minute per token on this server


@dataclass
class Server:
    port: int
    database_url: str = ""  # where token() makes tokens
    process: ServiceProcess | None = None  # whose CPU cpu_s() counts

    def token(self, project: str) -> str:
        """A new project's token, made in the server's database (as `token create` does, without its start-up)."""
        engine = create_engine(self.database_url)
        try:
            with Session(engine) as session:
                token = create_token(session, project).token
                session.commit()
        finally:
            engine.dispose()
        return token

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                connection: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request, on a new connection unless one is given (a kept-alive connection stays with one gunicorn
        process)."""
        own = connection is None
        connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            if own:
                connection.close()

    def raw(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send bytes as they are (requests no HTTP client would write); the server may answer before reading
        them all."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            with contextlib.suppress(OSError):  # the server may answer and close while the body is still sent
                sock.sendall(data)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        return int(status_line.split()[1]), headers, body

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server: gunicorn's arbiter and its workers."""
        assert self.process is not None
        root = psutil.Process(self.process.proc.pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
        return total


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``serve`` on SQLite with 2 gunicorn workers and no check worker (submitted runs stay queued)."""
    tmp: Path = tmp_path_factory.mktemp("edges")
    env = service_env(DATA_DIR=str(tmp / "data"), SUBMIT_RATE_LIMIT=f"{SUBMIT_RATE}/minute")
    port = free_port()
    process = ServiceProcess(["serve", "--port", str(port), "--workers", "2", "--no-worker"], env, tmp / "serve.log")
    served = Server(port, f"sqlite:///{tmp / 'data' / 'gradcheck.sqlite3'}", process)
    try:
        wait_until(lambda: _healthy(served), 90, "the server to answer /healthz")
        yield served
    finally:
        process.stop()


def _healthy(server: Server) -> bool:
    try:
        return server.request("GET", "/healthz")[0] == 200
    except OSError:
        return False


def _multipart(fields: dict[str, tuple[str, bytes] | str]) -> tuple[bytes, str]:
    boundary = "gradcheck-test-boundary"
    parts = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            disposition = f'form-data; name="{name}"; filename="{value[0]}"'
            parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                         "Content-Type: application/octet-stream\r\n\r\n".encode() + value[1] + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_tar_gz_bombs_cost_little_cpu_and_healthz_stays_fast(server: Server) -> None:
    tokens = [server.token(f"bomber{i}") for i in range(6)]  # one each: the submission rate limit is per token
    body, content_type = _multipart({"archive": ("repository.tar.gz", tar_gz_bomb()), "entry": "bomb.py"})
    assert len(body) < 2 * 2**20  # under the default request size limit: the bomb reaches the archive reader
    probes: list[float] = []

    def bomb(token: str) -> tuple[int, Any]:
        status, _, answer = server.request("POST", "/api/v1/runs", body, {
            "Authorization": f"Bearer {token}", "Content-Type": content_type})
        return status, json.loads(answer)

    def probe_healthz(stop_at: float) -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            assert server.request("GET", "/healthz")[0] == 200
            probes.append(time.monotonic() - started)
            time.sleep(0.05)

    cpu_before = server.cpu_s()
    with ThreadPoolExecutor(max_workers=7) as pool:
        watcher = pool.submit(probe_healthz, time.monotonic() + 3.0)
        answers = list(pool.map(bomb, tokens))
        watcher.result()
    cpu_per_bomb = (server.cpu_s() - cpu_before) / len(tokens)
    for status, answer in answers:
        assert status == 422, answer
        assert answer["error"]["problems"] == [{"path": "archive:bomb.py", "message": "larger than 2,097,152 bytes"}]
    print(f"\nserver CPU per 1.5 GiB tar.gz bomb: {cpu_per_bomb:.3f} s; /healthz while six arrived: "
          f"{len(probes)} probes, slowest {max(probes):.3f} s")
    assert cpu_per_bomb < 0.5  # once 9 s: the whole member was inflated before the per-file limit refused it
    assert max(probes) < 1.0  # once up to 22.6 s


def test_submissions_are_rate_limited_per_token_by_default(server: Server) -> None:
    token, other = server.token("eager"), server.token("patient")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    # One kept-alive connection: without Redis the counters are per gunicorn process (as the README says).
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    answers = [server.request("POST", "/api/v1/runs", json.dumps({"spec": spec(name=f"r{i}")}).encode(), headers,
                              connection) for i in range(SUBMIT_RATE + 2)]
    connection.close()
    assert [status for status, _, _ in answers] == [202] * SUBMIT_RATE + [429, 429]
    status, response_headers, body = answers[-1]
    assert response_headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "rate_limited" and "GRADCHECK_SUBMIT_RATE_LIMIT" in error["message"], error
    assert 0 < int(response_headers["Retry-After"]) <= 60
    assert server.request("GET", "/api/v1/runs", headers=headers)[0] == 200  # reads are not submissions
    assert server.request("POST", "/api/v1/runs", json.dumps({"spec": spec()}).encode(),
                          {**headers, "Authorization": f"Bearer {other}"})[0] == 202  # a budget per token


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GET /api/v1/runs?model=" + b"m" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n", 431,
     "headers_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, "bad_request"),
])
def test_errors_of_the_http_server_are_json(server: Server, request_bytes: bytes, status: int, code: str) -> None:
    answered, headers, body = server.raw(request_bytes)
    assert answered == status
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"], error


def test_a_chunked_body_over_the_limit_is_413_json(server: Server) -> None:
    token = server.token("chunky")
    chunk = b"x" * 65536
    head = (f"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(160)) + b"0\r\n\r\n"  # 10 MiB
    status, headers, answer = server.raw(head + body)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(answer)["error"]["code"] == "too_large"


def test_the_deployment_configuration_answers_json_too(tmp_path: Path) -> None:
    """The containers run gunicorn's own CLI with deploy/gunicorn.conf.py, which installs the same JSON answers."""
    port = free_port()
    env = {**service_env(DATA_DIR=str(tmp_path)), "GRADCHECK_BIND": f"127.0.0.1:{port}", "GRADCHECK_HTTP_WORKERS": "1"}
    with (tmp_path / "gunicorn.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
                                 "gradcheck_service.service.app:create_app()"], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deployed = Server(port)
            wait_until(lambda: _healthy(deployed), 90, "gunicorn to answer /healthz")
            status, headers, body = deployed.raw(b"GET /healthz?x=" + b"x" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert status == 414 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "uri_too_long"
