"""Job-wide sandbox limits against hostile jobs, on a real `serve` (embedded worker) and on a separate Celery worker
on Redis + PostgreSQL, each running two checks at once.

Each case submits a hostile model file (tests/fixtures/hostile/job_wide) together with a normal model file and
asserts: the hostile run ends with the job-wide limit named, in time; the normal run passes within twice its usual
time (a normal run beside another normal one: the worker's two slots busy, as in service); no process of the
hostile job and no job cgroup remain; nothing outside the job was killed.
Limits: 2 GiB of memory, 128 processes, 1 core and 12 CPU seconds per job, wall 60 s.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from gradcheck_service.ci.client import ServiceClient
from tests.integration.service_fixtures import RedisTarget, Service
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

JOB_WIDE = ROOT / "tests" / "fixtures" / "hostile" / "job_wide"
MEMORY_GIB, PROCESSES, CORES, CPU_S, WALL_S = 2, 128, 1.0, 12, 60
LIMITS = {"RUN_TIMEOUT_S": WALL_S, "SANDBOX_CPU_S": CPU_S, "SANDBOX_PROCESSES": PROCESSES,
          "SANDBOX_MEMORY_BYTES": MEMORY_GIB * 2**30, "SANDBOX_CPU_CORES": CORES}
FORK_BOMB_END_S = 15  # the bound for the fork bomb that ignores refused forks


@dataclass
class Backend:
    """One way of running the service: submit a model file, read a run, tell whether the service still lives."""

    submit: Callable[[str, str], str]
    run: Callable[[str], dict[str, Any]]
    processes: list[ServiceProcess]
    usual_s: float = 0.0  # run_s of a normal model file beside another normal one

    def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        return dict(wait_until(lambda: (r := self.run(run_id))["status"] in ("passed", "failed", "error") and r,
                               timeout, f"run {run_id} to finish", interval=0.2))

    def alive(self) -> bool:
        return all(p.proc.poll() is None for p in self.processes)


def _embedded(tmp: Path) -> Iterator[Backend]:
    env = service_env(DATA_DIR=str(tmp / "data"), EMBEDDED_CONCURRENCY=2, **LIMITS)
    made = cli(["token", "create", "--project", "job-limits"], env)
    assert made.returncode == 0, made.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client_of = ServiceClient(url, made.stdout.strip().splitlines()[-1])
    server = ServiceProcess(["serve", "--port", str(port), "--workers", "1"], env, tmp / "serve.log")
    try:
        wait_until_ready(url, 120, "the embedded service to be ready")
        yield Backend(lambda source, name: _submit(client_of, tmp, source, name), _reader(client_of), [server])
    finally:
        server.stop()


def _redis_pg(tmp: Path, pg_url: str, redis: RedisTarget) -> Iterator[Backend]:
    service = Service({"DATABASE_URL": pg_url, "BROKER_URL": redis.url, "DATA_DIR": str(tmp),
                       "BROKER_KEY_PREFIX": f"{redis.prefix}{uuid.uuid4().hex[:6]}:", **LIMITS}, tmp)
    made = cli(["token", "create", "--project", "job-limits"], service.env())
    assert made.returncode == 0, made.stderr
    port = free_port()
    api = ServiceProcess(["serve", "--no-worker", "--port", str(port), "--workers", "1"], service.env(),
                         tmp / "api.log")
    worker = None
    try:
        worker = service.worker("joblimits", "--concurrency", "2")
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, 120, "the API to be ready")
        client_of = ServiceClient(url, made.stdout.strip().splitlines()[-1])
        yield Backend(lambda source, name: _submit(client_of, tmp, source, name), _reader(client_of), [api, worker])
    finally:
        if worker is not None:
            worker.stop()
        api.stop()


def _reader(client: ServiceClient) -> Callable[[str], dict[str, Any]]:
    """A run as the API's JSON answers it (the client reads it as a RunOut)."""
    return lambda run_id: client.run(run_id).model_dump(mode="json")


def _submit(client: ServiceClient, tmp: Path, source: str, name: str) -> str:
    path = tmp / f"{uuid.uuid4().hex[:8]}-{name}"
    path.write_text(source)
    return client.submit(path, {}, {"labels": ["job-limits"]})


@pytest.fixture(scope="module", params=["embedded", "redis_pg"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            bubblewrap: None) -> Iterator[Backend]:
    tmp = tmp_path_factory.mktemp(f"joblimits-{request.param}")
    if request.param == "embedded":
        made = _embedded(tmp)
    else:
        made = _redis_pg(tmp, request.getfixturevalue("pg_url"), request.getfixturevalue("redis_target"))
    try:
        service = next(made)
        warm = service.wait(service.submit(CORRECT_MODEL, "correct.py"), 120)  # fills the page cache
        assert warm["status"] == "passed", warm
        yield service
    finally:
        made.close()


def _job_cgroups(run_id: str) -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob(f"**/gradcheck/gradcheck-{run_id[:12]}-*") if p.is_dir()]


def _job_cpu_seconds(run_id: str) -> float:
    """CPU seconds of the job's processes now, read from outside the job (all threads of each process)."""
    total = 0.0
    marker = f"gradcheck-job-{run_id[:12]}"  # the job folder in the runner's command line
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in arg for arg in process.info["cmdline"] or []):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def _threads_of(run_id: str) -> int:
    marker = f"gradcheck-job-{run_id[:12]}"
    count = 0
    for process in psutil.process_iter(["cmdline", "num_threads"]):
        if any(marker in arg for arg in process.info["cmdline"] or []):
            count += int(process.info["num_threads"] or 0)
    return count


def _hostile_beside_normal(backend: Backend, name: str,
                           during: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Submit the hostile file and a normal one at the same time; both runs once they ended.

    The usual time is measured just before, on the same machine load: a normal run beside another normal one
    (the worker's two slots busy, each job under its own CPU share)."""
    pair = [backend.submit(CORRECT_MODEL, "correct.py") for _ in range(2)]
    usual = [backend.wait(run_id, WALL_S + 60) for run_id in pair]
    assert all(r["status"] == "passed" for r in usual), usual
    backend.usual_s = max(float(r["timings"]["run_s"]) for r in usual)
    hostile_id = backend.submit((JOB_WIDE / name).read_text(), name)
    normal_id = backend.submit(CORRECT_MODEL, "correct.py")
    if during is not None:
        during(hostile_id)
    hostile = backend.wait(hostile_id, WALL_S + 60)
    normal = backend.wait(normal_id, WALL_S + 60)
    print(f"{name}: {(hostile['error'] or {}).get('code')} after {hostile['timings']['run_s']:.1f} s; normal run "
          f"beside it {normal['timings']['run_s']:.1f} s, usual {backend.usual_s:.1f} s")  # figures for the log
    assert normal["status"] == "passed", normal
    assert float(normal["timings"]["run_s"]) <= 2 * backend.usual_s, (normal["timings"], backend.usual_s)
    assert processes_left_behind(hostile_id) == []
    assert _job_cgroups(hostile_id) == []
    assert backend.alive()
    return hostile, normal


def test_fork_bomb_ignoring_refused_forks_ends_as_process_limit(backend: Backend) -> None:
    hostile, normal = _hostile_beside_normal(backend, "fork_bomb_ignoring_refusals.py")
    error = hostile["error"] or {}
    assert (hostile["status"], error.get("code")) == ("error", "process_limit"), hostile
    assert f"more than {PROCESSES} processes" in error["message"], error["message"]
    # 15 s from the start; on a machine so loaded that starting a sandboxed interpreter alone takes longer, within
    # a few seconds of the normal run started beside it (left alone, the bomb would last the 60 s wall time).
    bound = max(FORK_BOMB_END_S, float(normal["timings"]["run_s"]) + 5)
    assert float(hostile["timings"]["run_s"]) <= bound, hostile["timings"]


def test_sixteen_processes_of_one_gib_end_as_memory_limit(backend: Backend) -> None:
    bystander = subprocess.Popen(["sleep", "600"])  # a process outside the job, under the same worker machine
    try:
        hostile, _ = _hostile_beside_normal(backend, "fork_children_touching_memory.py")
        assert bystander.poll() is None, "a process outside the job was killed"
    finally:
        bystander.kill()
        bystander.wait()
    error = hostile["error"] or {}
    assert (hostile["status"], error.get("code")) == ("error", "memory_limit"), hostile
    assert f"memory limit of {MEMORY_GIB} GiB" in error["message"], error["message"]
    peak = re.search(r"peak ([0-9.]+) GiB", error["message"])
    assert peak is not None and float(peak.group(1)) <= MEMORY_GIB, error["message"]
    assert float(hostile["timings"]["run_s"]) <= WALL_S, hostile["timings"]


def test_sixty_four_spinning_threads_get_no_more_than_their_cpu_share(backend: Backend) -> None:
    rates: list[float] = []

    def measure(run_id: str) -> None:
        wait_until(lambda: _threads_of(run_id) >= 64, 30, "the 64 threads to start", interval=0.1)
        start_cpu, start = _job_cpu_seconds(run_id), time.monotonic()
        time.sleep(3)
        rates.append((_job_cpu_seconds(run_id) - start_cpu) / (time.monotonic() - start))

    hostile, _ = _hostile_beside_normal(backend, "spin_threads.py", measure)
    print(f"spin_threads.py: {rates[0]:.2f} cores used, share {CORES:g}")
    # (on an idle 2-core machine the threads take the whole share; on a loaded one less, but they do spin)
    assert 0.1 <= rates[0] <= CORES * 1.1, f"the job used {rates[0]:.2f} cores with a share of {CORES:g}"
    # It ends at its CPU seconds (per process or all together), or, on a machine so loaded that the share was
    # not even available, at the wall-time limit; either way the error names the limit.
    error = hostile["error"] or {}
    assert hostile["status"] == "error", hostile
    assert (error.get("code"), error.get("code") == "time_limit" or f"{CPU_S} CPU seconds" in error["message"]) in (
        ("cpu_time_limit", True), ("time_limit", True)), error
