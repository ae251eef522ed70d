"""Fault tolerance with real processes on loopback: workers SIGKILLed under load, Redis restarted, PostgreSQL
stopped. Every accepted run must end in a terminal state with exactly one report, checked against the test's own
ledger of accepted run ids and against the database's unique constraint.

The machine's shared Redis and PostgreSQL are never stopped: the outage tests start private servers
(``private_servers.py``).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.exc import IntegrityError

from gradcheck_service.service.store.models import Project, Run, RunReport, TensorResult
from tests.integration.private_servers import private_postgres, private_redis
from tests.integration.service_fixtures import RedisTarget, Service
from tests.integration.test_service_redis_pg import Api
from tests.service_support import SLOW_MODEL, ServiceProcess, spec, wait_until

pytestmark = pytest.mark.integration
TERMINAL = ("passed", "failed", "error")


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state, behind the command's ")"


def _kill_pool_process(run: dict[str, Any], workers: list[ServiceProcess]) -> bool:
    """SIGKILL the pool process running ``run`` -- only if it really is a child of one of our workers."""
    if not run.get("worker_host"):
        return False
    pid = int(run["worker_host"].rsplit(":", 1)[1])
    if _parent_pid(pid) not in {w.proc.pid for w in workers if w.proc.poll() is None}:
        return False
    os.kill(pid, signal.SIGKILL)
    return True


def _start_worker(service: Service, name: str, *args: str) -> ServiceProcess:
    """A worker started without waiting for it (the load goes on while it boots)."""
    return ServiceProcess(["worker", "--loglevel", "INFO", "-n", f"{name}@%h", *args], service.env(),
                          service.tmp / f"{name}-{uuid.uuid4().hex[:4]}.log")


def _ledger_check(database_url: str, project: str, ledger: list[str]) -> dict[str, Any]:
    """Compare the database with the ledger of accepted runs, through a connection of its own."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            project_id = connection.scalar(select(Project.id).where(Project.name == project))
            runs = {r.id: r for r in connection.execute(
                select(Run.id, Run.status, Run.attempts, Run.error_code, Run.finished_at)
                .where(Run.project_id == project_id))}
            reports = {run_id: count for run_id, count in connection.execute(
                select(RunReport.run_id, func.count()).where(RunReport.run_id.in_(ledger))
                .group_by(RunReport.run_id))}
            tensors = {run_id: count for run_id, count in connection.execute(
                select(TensorResult.run_id, func.count()).where(TensorResult.run_id.in_(ledger))
                .group_by(TensorResult.run_id))}
            expected_tensors = {run_id: sum(len(report["gradient_check"].get(k) or [])
                                            for k in ("parameters", "inputs", "second_order"))
                                for run_id, report in connection.execute(
                                    select(RunReport.run_id, RunReport.report).where(RunReport.run_id.in_(ledger)))}
        assert inspect(engine).get_pk_constraint("run_reports")["constrained_columns"] == ["run_id"]
    finally:
        engine.dispose()
    assert sorted(runs) == sorted(ledger), "the database and the ledger disagree on which runs exist"
    stuck = {i: r.status for i, r in runs.items() if r.status not in TERMINAL or r.finished_at is None}
    assert not stuck, f"runs not finished: {stuck}"
    for run_id, run in runs.items():
        wanted = 1 if run.status in ("passed", "failed") else 0
        assert reports.get(run_id, 0) == wanted, f"run {run_id} ({run.status}) has {reports.get(run_id, 0)} reports"
        if wanted:
            assert tensors.get(run_id, 0) == expected_tensors[run_id], f"run {run_id}: tensor rows written twice?"
    return {"statuses": Counter(r.status for r in runs.values()), "runs": runs}


def test_workers_sigkilled_repeatedly_under_load_lose_no_run(redis_pg_service: Service, pg_url: str) -> None:
    """31 runs (spec checks and 2-second model files) while a worker is SIGKILLed every ~2.5 s: whole workers
    (recovered by the reaper) and pool processes (redelivered at once). One run is killed every time it starts:
    it ends as ``error`` after the attempt cap while the others complete."""
    service = redis_pg_service
    service.settings.update(MAX_ATTEMPTS=3, STALE_AFTER_S=4, REAPER_INTERVAL_S=1)
    project = f"faults-{uuid.uuid4().hex[:8]}"
    api = Api(service, project)
    steady = service.worker("steady", "--beat")
    victim = service.worker("victim")
    workers = [steady, victim]
    ledger: list[str] = []
    kills: Counter[str] = Counter()
    try:
        killer = api.submit_file(SLOW_MODEL.replace("{sleep}", "60"), "killer.py")
        ledger.append(killer)
        killer_attempts_killed = 0
        pending = [("file", i) if i % 3 == 0 else ("spec", i) for i in range(30)]
        started = time.monotonic()
        next_submit, next_kill, kill_round = started, started + 2.0, 0
        deadline = started + 240
        while time.monotonic() < deadline:
            now = time.monotonic()
            if pending and now >= next_submit:
                kind, i = pending.pop(0)
                ledger.append(api.submit_file(SLOW_MODEL.replace("{sleep}", "2"), f"slow{i}.py") if kind == "file"
                              else api.submit_spec(spec(name=f"tiny{i}")))
                next_submit = now + 0.3
            listing = api.client.get("/api/v1/runs?status=queued,running&limit=500", headers=api.headers)
            assert listing.status_code == 200, listing.get_json()
            active = {r["id"]: r for r in listing.get_json()["runs"]}
            if not pending and not active:
                break
            killer_run = active.get(killer)
            if killer_run and killer_run["status"] == "running" and killer_run["attempts"] > killer_attempts_killed \
                    and _kill_pool_process(killer_run, workers):
                killer_attempts_killed = killer_run["attempts"]
                kills["killer pool process"] += 1
            if now >= next_kill and kill_round < 8:
                running = [r for r in active.values() if r["status"] == "running" and r["id"] != killer]
                if kill_round % 2 == 0 and victim.proc.poll() is None:
                    victim.kill()  # the whole worker: master, pool, check children; nothing is acknowledged
                    victim.stop()
                    kills["whole worker"] += 1
                    victim = _start_worker(service, "victim")
                    workers.append(victim)
                    kill_round += 1
                elif kill_round % 2 == 1 and running and _kill_pool_process(running[0], workers):
                    kills["pool process"] += 1
                    kill_round += 1
                next_kill = now + 2.5
            time.sleep(0.2)
        else:
            raise AssertionError(f"runs still active after 240 s: {active}")
    finally:
        for worker in workers:
            worker.stop()
    outcome = _ledger_check(pg_url, project, ledger)
    killer_row = outcome["runs"][killer]
    assert killer_row.status == "error" and killer_row.error_code == "worker_lost", killer_row
    # three starts killed; the fourth delivery only counted and closed it -- or, when a whole-worker kill took the
    # third start, the reaper closed it at 3
    assert killer_row.attempts in (3, 4), killer_row
    others = {i: r for i, r in outcome["runs"].items() if i != killer}
    assert all(r.status == "passed" for r in others.values()), {i: r.status for i, r in others.items()}
    assert kills["whole worker"] >= 3 and kills["pool process"] >= 2, kills
    assert sum(r.attempts > 1 for r in others.values()) >= 2, "no kill interrupted a run"
    print(f"\n{len(ledger)} runs, {sum(kills.values())} worker kills ({dict(kills)}), 0 lost")


def _submit_status(api: Api, data: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    response = api.client.post("/api/v1/runs", json={"spec": data}, headers=api.headers)
    return response.status_code, dict(response.get_json() or {}), dict(response.headers)


def test_redis_restarted_mid_load(pg_url: str, tmp_path: Path) -> None:
    """Submissions while Redis is down get 503 + Retry-After (never 500); reads keep working; every accepted
    run completes after Redis is back, including those queued before the restart (append-only file)."""
    with private_redis() as redis_server:
        service = Service({
            "DATABASE_URL": pg_url, "BROKER_URL": redis_server.url, "DATA_DIR": str(tmp_path),
            "HEARTBEAT_INTERVAL_S": 0.5, "STALE_AFTER_S": 5, "REAPER_INTERVAL_S": 1,
            "RATE_LIMIT": "100000/minute",  # counted in the same Redis: its outage must not break requests
        }, tmp_path)
        project = f"redis-{uuid.uuid4().hex[:8]}"
        api = Api(service, project)
        worker = service.worker("redis-outage", "--beat")
        accepted: list[str] = []
        try:
            for i in range(8):
                accepted.append(api.submit_spec(spec(name=f"before{i}")))
            redis_server.stop()
            refused = []
            for i in range(4):
                status, body, headers = _submit_status(api, spec(name=f"during{i}"))
                assert status == 503, (status, body)
                assert int(headers["Retry-After"]) > 0 and body["error"]["code"] == "unavailable"
                refused.append(i)
                listing = api.client.get("/api/v1/runs", headers=api.headers)
                assert listing.status_code == 200, listing.get_json()
            redis_server.start()
            for i in range(8):
                # a client honours Retry-After; the first submissions may still meet the reconnecting pool
                result = wait_until(lambda n=i: (r := _submit_status(api, spec(name=f"after{n}")))[0] != 503 and r,
                                    30, "a submission accepted after Redis returned", interval=1.0)
                assert result[0] == 202, result
                accepted.append(result[1]["id"])
            for run_id in accepted:
                run = api.wait(run_id, 120)
                assert run["status"] == "passed", (run["error"], run["attempts"])
        finally:
            worker.stop()
        outcome = _ledger_check(pg_url, project, accepted + _refused_ids(pg_url, project, accepted))
        assert outcome["statuses"]["passed"] == len(accepted)
        assert outcome["statuses"]["error"] == len(refused)  # the refused ones are closed, not left queued
        assert "Traceback" not in worker.output().split("Connection to broker lost")[0]


def _refused_ids(database_url: str, project: str, accepted: list[str]) -> list[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Run.id, Run.error_code).join(Project).where(
                Project.name == project, Run.id.not_in(accepted))).all()
    finally:
        engine.dispose()
    assert all(code == "broker_unavailable" for _, code in rows), rows
    return [run_id for run_id, _ in rows]


def test_postgresql_stopped_api_answers_503_and_the_worker_retries_the_report(redis_target: RedisTarget,
                                                                             tmp_path: Path) -> None:
    """PostgreSQL goes away while a check runs: the API answers 503 JSON, the worker keeps the finished report
    and writes it when the database is back -- the same attempt, not a second run of the check."""
    from gradcheck_service.service.store.migrate import upgrade

    with private_postgres() as postgres:
        upgrade(postgres.url)
        service = Service({
            "DATABASE_URL": postgres.url, "BROKER_URL": redis_target.url, "DATA_DIR": str(tmp_path),
            "BROKER_KEY_PREFIX": f"{redis_target.prefix}{uuid.uuid4().hex[:6]}:", "HEARTBEAT_INTERVAL_S": 0.5,
        }, tmp_path)
        api = Api(service, "pg-outage")
        worker = service.worker("pg-outage")
        try:
            run_id = api.submit_file(SLOW_MODEL.replace("{sleep}", "3"), "slow.py")
            api.wait(run_id, 60, ("running",))
            postgres.stop()
            for method, path in (("GET", f"/api/v1/runs/{run_id}"), ("GET", "/api/v1/runs"),
                                 ("POST", "/api/v1/runs")):
                response = api.client.open(path, method=method, headers=api.headers, json={"spec": spec()})
                assert response.status_code == 503, (path, response.status_code, response.data[:300])
                assert response.get_json()["error"]["code"] == "unavailable" and response.headers["Retry-After"]
            ready = api.client.get("/readyz")
            assert ready.status_code == 503 and ready.get_json()["checks"]["database"]["ok"] is False
            wait_until(lambda: f"database unavailable during the report of run {run_id}" in worker.output(), 60,
                       "the worker to retry the report's write")
            postgres.start()
            run = api.wait(run_id, 60)
        finally:
            worker.stop()
    assert run["status"] == "passed" and run["report"]["passed"] is True, run
    assert run["attempts"] == 1, "the check ran again instead of its report being written"


def test_report_table_refuses_a_second_report(pg_url: str, tmp_path: Path) -> None:
    """The unique constraint the ledger checks rely on: a second report row for a run is an integrity error."""
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.lifecycle import claim_run, finish_run
    from tests.service_support import real_report

    project = f"unique-{uuid.uuid4().hex[:6]}"
    api = Api(Service({"DATABASE_URL": pg_url, "BROKER_URL": "redis://127.0.0.1:1/0", "DATA_DIR": str(tmp_path)},
                      tmp_path), project)
    with api.app.app_context():
        session = store.session()
        run = Run(project_id=session.scalar(select(Project.id).where(Project.name == project)), model_name="tiny",
                  model_hash="0" * 64, definition_kind="spec", definition="{}", options={}, device="cpu",
                  queue="cpu", timeout_s=60)
        session.add(run)
        session.commit()
        claim = claim_run(session, run.id, "test:1")
        assert finish_run(session, run.id, claim.claim, real_report()) == "passed"
        session.add(RunReport(run_id=run.id, schema_version="x", passed=True, report={}))
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()


def test_reaper_requeues_a_message_lost_between_redis_and_the_worker(pg_url: str, tmp_path: Path) -> None:
    """Kombu pops a message before recording it as unacknowledged; a worker killed in between leaves a run
    queued forever with no trace in Redis. The queue is FIFO: a later run started long ago proves the loss."""
    import datetime as dt

    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.lifecycle import reap_stale_runs

    project = f"lost-{uuid.uuid4().hex[:6]}"
    api = Api(Service({"DATABASE_URL": pg_url, "BROKER_URL": "redis://127.0.0.1:1/0", "DATA_DIR": str(tmp_path)},
                      tmp_path), project)
    now = dt.datetime.now(dt.UTC)
    with api.app.app_context():
        session = store.session()
        project_id = session.scalar(select(Project.id).where(Project.name == project))

        def add(age_s: float, **values: Any) -> str:
            run = Run(project_id=project_id, model_name="tiny", model_hash="0" * 64, definition_kind="spec",
                      definition="{}", options={}, device="cpu", queue=f"q-{project}", timeout_s=60,
                      created_at=now - dt.timedelta(seconds=age_s), **values)
            session.add(run)
            session.commit()
            return run.id

        lost = add(100)  # never received, never started
        waiting = add(50)  # behind the later run's start: its message may still be in the queue
        add(80, status="running", attempts=1, started_at=now - dt.timedelta(seconds=70), heartbeat_at=now)
        add(40, status="running", attempts=1, started_at=now - dt.timedelta(seconds=1), heartbeat_at=now)
        assert reap_stale_runs(session, stale_after_s=30) == [lost]
        assert session.get(Run, lost).progress_stage == "requeued"  # type: ignore[union-attr]
        assert session.get(Run, waiting).progress_stage is None  # type: ignore[union-attr]
        assert reap_stale_runs(session, stale_after_s=30) == []  # sent again once, not on every tick


def _scratch_folders(root: Path) -> list[str]:
    """The service's folders in a temporary directory (Celery's own ``pymp-*`` folder aside)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith("gradcheck-"))


def test_a_sigkilled_worker_leaves_no_job_folder(redis_pg_service: Service, tmp_path: Path) -> None:
    """A pool process SIGKILLed mid-run runs no cleanup: its job folder (definition, job.json, the model's output)
    and its check runner's home stay behind. The pool process that replaces it removes them at its start, and the
    re-delivered run, once finished, leaves nothing either."""
    service = redis_pg_service
    root = tmp_path / "tmp"
    root.mkdir()
    api = Api(service, f"scratch-{uuid.uuid4().hex[:8]}")
    worker = ServiceProcess(["worker", "--loglevel", "INFO", "-n", "scratch@%h", "--concurrency", "1"],
                            {**service.env(), "TMPDIR": str(root)}, tmp_path / "scratch-worker.log")
    try:
        worker.wait_for(" ready.", timeout=90)
        assert api.wait(api.submit_spec(spec()))["status"] == "passed"  # starts the pool process's check runner
        slow = api.submit_file(SLOW_MODEL.replace("{sleep}", "6"), "slow.py")
        running = api.wait(slow, statuses=("running",))
        job_folder = wait_until(lambda: next(root.glob(f"gradcheck-job-{slow[:12]}-*"), None), 30, "the job folder")
        assert (job_folder / "job.json").is_file()
        assert [name for name in _scratch_folders(root) if name.startswith("gradcheck-home-")]  # the runner's home
        assert _kill_pool_process(running, [worker])
        wait_until(lambda: not _scratch_folders(root), 60, "the new pool process to remove the killed one's folders")
        finished = api.wait(slow, timeout=120)
        assert finished["status"] == "passed" and finished["attempts"] == 2, finished
        assert _scratch_folders(root) == [], "a folder outlived its run"
    finally:
        worker.stop()
    assert _scratch_folders(root) == []
    assert "removed 2 scratch folders of killed worker processes" in worker.output()
