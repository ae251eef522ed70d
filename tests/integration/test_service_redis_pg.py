"""The service on real PostgreSQL + Redis with real Celery worker processes: end to end, and workers dying."""

from __future__ import annotations

import io
import os
import signal
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask.testing import FlaskClient
from sqlalchemy import create_engine, inspect

from gradcheck_service.service.store.migrate import head_revision, upgrade
from gradcheck_service.service.store.models import Base
from tests.integration.service_fixtures import Service, fresh_pg_database
from tests.service_support import BUGGY_MODEL, SLOW_MODEL, spec, wait_until

pytestmark = pytest.mark.integration
TERMINAL = ("passed", "failed", "error")


def test_migrations_from_empty_to_head_on_postgresql() -> None:
    with fresh_pg_database() as url:
        upgrade(url)
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(connection)
                assert context.get_current_revision() == head_revision()
                assert compare_metadata(context, Base.metadata) == []  # migrations and models agree
            assert {"projects", "api_tokens", "runs", "run_reports", "tensor_results", "gradient_stats",
                    "run_labels"} <= set(inspect(engine).get_table_names())
            upgrade(url)  # idempotent
        finally:
            engine.dispose()


class Api:
    """The in-process API of one test, with a project token."""

    def __init__(self, service: Service, project: str = "team") -> None:
        from gradcheck_service.service.extensions import store
        from gradcheck_service.service.store.tokens import create_token

        self.app = service.app()
        self.client: FlaskClient = self.app.test_client()
        with self.app.app_context():
            token = create_token(store.session(), project).token
            store.session().commit()
        self.headers = {"Authorization": f"Bearer {token}"}

    def submit_spec(self, data: dict[str, Any], **metadata: Any) -> str:
        response = self.client.post("/api/v1/runs", json={"spec": data, "metadata": metadata}, headers=self.headers)
        assert response.status_code == 202, response.get_json()
        return str(response.get_json()["id"])

    def submit_file(self, source: str, name: str = "model.py", **metadata: Any) -> str:
        import json

        response = self.client.post("/api/v1/runs", headers=self.headers, content_type="multipart/form-data", data={
            "model": (io.BytesIO(source.encode()), name), "metadata": json.dumps(metadata)})
        assert response.status_code == 202, response.get_json()
        return str(response.get_json()["id"])

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/runs/{run_id}", headers=self.headers)
        assert response.status_code == 200
        return dict(response.get_json())

    def wait(self, run_id: str, timeout: float = 120, statuses: tuple[str, ...] = TERMINAL) -> dict[str, Any]:
        return dict(wait_until(lambda: (r := self.run(run_id))["status"] in statuses and r, timeout,
                               f"run {run_id} to reach {statuses}"))


def test_end_to_end_on_redis_and_postgresql(redis_pg_service: Service) -> None:
    api = Api(redis_pg_service)
    worker = redis_pg_service.worker("e2e", "--concurrency", "2")
    try:
        good = api.submit_spec(spec(), labels=["e2e"], git={"branch": "main", "commit": "c0ffee"})
        buggy = api.submit_file(BUGGY_MODEL, "buggy.py")
        broken = api.submit_file("def build():\n    raise ValueError('no weights here')\n", "broken.py")
        slow = api.submit_file(SLOW_MODEL.replace("{sleep}", "30"), "slow.py", timeout_s=2)

        run = api.wait(good)
        assert run["status"] == "passed" and run["report"]["passed"] is True, run
        assert run["attempts"] == 1 and run["worker_host"] and run["progress"]["fraction"] == 1.0
        assert run["timings"]["check_s"] > 0 and run["timings"]["queued_s"] is not None
        names = [p["name"] for p in run["report"]["gradient_check"]["parameters"]]
        assert names == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]

        run = api.wait(buggy)
        assert run["status"] == "failed" and run["summary"]["faulty_modules"], run
        assert run["model"]["kind"] == "python"

        run = api.wait(broken)
        assert run["status"] == "error" and run["report"] is None
        assert "no weights here" in run["error"]["message"], run["error"]

        run = api.wait(slow, timeout=60)
        assert run["status"] == "error" and run["error"]["code"] == "time_limit", run["error"]
        assert "2 s" in run["error"]["message"]

        listed = api.client.get("/api/v1/runs?label=e2e&passed=true", headers=api.headers).get_json()["runs"]
        assert [r["id"] for r in listed] == [good]
        compared = api.client.get(f"/api/v1/runs/{good}/compare/{buggy}", headers=api.headers).get_json()
        assert compared["verdict"]["changed"] is True
    finally:
        worker.stop()
    assert "Traceback" not in worker.output(), worker.output()[-3000:]


def _pool_pid(run: dict[str, Any]) -> int:
    return int(run["worker_host"].rsplit(":", 1)[1])


def test_killed_pool_process_run_is_redelivered_and_completes(redis_pg_service: Service) -> None:
    api = Api(redis_pg_service)
    worker = redis_pg_service.worker("killpool")
    try:
        run_id = api.submit_file(SLOW_MODEL.replace("{sleep}", "3"), "slow.py")
        running = api.wait(run_id, 60, ("running",))
        os.kill(_pool_pid(running), signal.SIGKILL)  # the process executing the task dies mid-run
        run = api.wait(run_id, 90)
        assert run["status"] == "passed", run
        assert run["attempts"] == 2
        assert _pool_pid(run) != _pool_pid(running)
    finally:
        worker.stop()


def test_run_that_kills_its_worker_every_time_ends_as_error_and_others_complete(redis_pg_service: Service) -> None:
    redis_pg_service.settings["MAX_ATTEMPTS"] = 2  # the cap is stored on the run at submission
    api = Api(redis_pg_service)
    worker = redis_pg_service.worker("killer")
    try:
        run_id = api.submit_file(SLOW_MODEL.replace("{sleep}", "60"), "slow.py")
        for attempt in (1, 2):
            running = wait_until(lambda n=attempt: (r := api.run(run_id))["status"] == "running"
                                 and r["attempts"] == n and r, 60, f"attempt {attempt}")
            os.kill(_pool_pid(running), signal.SIGKILL)
        run = api.wait(run_id, 60)
        assert run["status"] == "error" and run["error"]["code"] == "worker_lost", run
        assert "worker lost 2 times" in run["error"]["message"]
        assert run["attempts"] == 3  # the third delivery only counted and closed it
        assert api.wait(api.submit_spec(spec()))["status"] == "passed"
    finally:
        worker.stop()


def test_whole_worker_killed_reaper_requeues_to_another_worker(redis_pg_service: Service) -> None:
    api = Api(redis_pg_service)
    first = redis_pg_service.worker("doomed")
    second = None
    try:
        run_id = api.submit_file(SLOW_MODEL.replace("{sleep}", "3"), "slow.py")
        api.wait(run_id, 60, ("running",))
        first.kill()  # the worker, its pool and its check child, all at once: nobody acknowledges or rejects
        assert api.run(run_id)["status"] == "running"
        second = redis_pg_service.worker("rescuer", "--beat")
        run = api.wait(run_id, 90)
        assert run["status"] == "passed" and run["attempts"] == 2, run
        assert "requeued run" in second.output()
    finally:
        first.stop()
        if second is not None:
            second.stop()
