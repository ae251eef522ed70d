"""Private Redis and PostgreSQL servers on free loopback ports, for tests that stop and restart them.

The machine's shared servers (6379, 5432) are never stopped: other tests and people use them. An outage test
starts its own ``redis-server`` or its own PostgreSQL cluster (``initdb`` + ``pg_ctl``) in a temporary directory
and removes it afterwards. Outside CI a missing binary skips the test; with ``CI=true`` it fails it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.service_fixtures import unavailable
from tests.service_support import free_port

NOBODY_UID = 65534


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready within {timeout} s")


class PrivateRedis:
    """``redis-server`` with an append-only file, so queued messages survive a restart (as in deploy/)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server", FileNotFoundError("redis-server is not on PATH"))
        self.binary = str(binary)
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> None:
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--dir", str(self.dir), "--daemonize", "no", "--maxmemory-policy", "noeviction"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait(self.ping, 15, f"redis-server on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits, like a restart by an operator."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.proc = None


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    directory = Path(tempfile.mkdtemp(prefix="gradcheck-redis-"))
    server = PrivateRedis(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        unavailable(f"PostgreSQL's {name}", FileNotFoundError(f"{name} is not installed"))
    return str(path)


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (trust auth, user ``postgres``) that a test may stop and start.

    ``initdb`` refuses to run as root, so as root the cluster belongs to ``nobody`` and its commands run through
    ``setpriv``.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.data = directory / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.as_nobody = os.geteuid() == 0

    def _run(self, *command: str, timeout: float = 120) -> None:
        prefix = ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}", "--clear-groups"] \
            if self.as_nobody else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}"
                                 f"\n{result.stderr}")

    def init(self) -> None:
        if self.as_nobody:
            os.chown(self.dir, NOBODY_UID, NOBODY_UID)
        self.dir.chmod(0o755)
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "pg.log"), "-w",
                  "start")

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, like a database restart or failover."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    directory = Path(tempfile.mkdtemp(prefix="gradcheck-pg-"))
    server = PrivatePostgres(directory)
    try:
        try:
            server.init()
            server.start()
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            unavailable("a private PostgreSQL cluster (initdb/pg_ctl)", exc)
        yield server
    finally:
        if server.running():
            with contextlib.suppress(AssertionError, subprocess.SubprocessError):
                server.stop()
        shutil.rmtree(directory, ignore_errors=True)
