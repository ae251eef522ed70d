"""Service speed on the real Redis + PostgreSQL of this machine (or SQLite: --embedded).

Three figures (README "Service figures"):

1. overhead: submit-to-report wall time minus the check's own time (report timings.total_s), one run at a time
   through one worker; p50/p95 over --runs runs after warm-up. Target: p50 < 100 ms with Redis.
2. burst: --burst tiny runs submitted at once to 2 worker processes; all must complete, none lost; throughput.
3. query: GET /api/v1/runs with filters over --stored stored runs; p50/p99 per filter. Target: p99 < 50 ms.

The API is the real Flask app called in-process (its test client: routing, auth, validation, queries, JSON; no
HTTP socket), the workers are real `gradcheck-service worker` processes. Run:
    .venv/bin/python benchmarks/service_overhead.py [--runs 40] [--burst 200] [--stored 10000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.service_fixtures import PG_URL, REDIS_URL, fresh_pg_database  # noqa: E402
from tests.service_support import TINY_SPEC, ServiceProcess, service_env  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Bench:
    def __init__(self, settings: dict[str, Any], tmp: Path) -> None:
        from gradcheck_service.service.app import create_app
        from gradcheck_service.service.extensions import store
        from gradcheck_service.service.store.tokens import create_token

        self.settings, self.tmp = settings, tmp
        self.app = create_app(settings)
        self.client = self.app.test_client()
        with self.app.app_context():
            token = create_token(store.session(), "bench").token
            store.session().commit()
        self.headers = {"Authorization": f"Bearer {token}"}

    def worker(self, name: str, concurrency: int = 1) -> ServiceProcess:
        proc = ServiceProcess(["worker", "-n", f"{name}@%h", "--concurrency", str(concurrency), "--loglevel",
                               "INFO"], service_env(**self.settings), self.tmp / f"{name}.log")
        proc.wait_for(" ready.", 120)
        return proc

    def submit(self) -> str:
        response = self.client.post("/api/v1/runs", json={"spec": TINY_SPEC, "options": {"mode": "fast",
                                    "localize": False, "memory": False, "health": False}}, headers=self.headers)
        assert response.status_code == 202, response.get_json()
        return str(response.get_json()["id"])

    def status(self, run_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/v1/runs/{run_id}", headers=self.headers).get_json())


def overhead(bench: Bench, runs: int, warmup: int = 3) -> dict[str, float]:
    from sqlalchemy import select

    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.models import Run

    worker = bench.worker("overhead")
    samples, queued, check = [], [], []
    try:
        for i in range(runs + warmup):
            started = time.perf_counter()
            run_id = bench.submit()
            with bench.app.app_context():
                session = store.session()
                while True:  # poll the row directly, 2 ms apart, so polling adds little to the figure
                    status = session.execute(select(Run.status).where(Run.id == run_id)).scalar_one()
                    session.rollback()
                    if status in ("passed", "failed", "error"):
                        break
                    time.sleep(0.002)
            wall = time.perf_counter() - started
            run = bench.status(run_id)
            assert run["status"] == "passed", run
            if i >= warmup:
                samples.append(wall - run["timings"]["check_s"])
                queued.append(run["timings"]["queued_s"])
                check.append(run["timings"]["check_s"])
    finally:
        worker.stop()
    return {"runs": runs, "overhead_p50_ms": 1000 * percentile(samples, 50),
            "overhead_p95_ms": 1000 * percentile(samples, 95), "queued_p50_ms": 1000 * percentile(queued, 50),
            "check_p50_ms": 1000 * percentile(check, 50)}


def burst(bench: Bench, count: int) -> dict[str, float]:
    workers = [bench.worker("burst1"), bench.worker("burst2")]
    try:
        started = time.perf_counter()
        ids = [bench.submit() for _ in range(count)]
        submitted = time.perf_counter() - started
        pending = set(ids)
        outcomes: dict[str, int] = {}
        deadline = time.monotonic() + 30 * 60
        while pending and time.monotonic() < deadline:
            listed = bench.client.get("/api/v1/runs?status=passed,failed,error&limit=500",
                                      headers=bench.headers).get_json()["runs"]
            for run in listed:
                if run["id"] in pending:
                    pending.discard(run["id"])
                    outcomes[run["status"]] = outcomes.get(run["status"], 0) + 1
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
    finally:
        for worker in workers:
            worker.stop()
    return {"submitted": count, "submit_s": submitted, "completed": count - len(pending), "lost": len(pending),
            **{f"status_{k}": v for k, v in outcomes.items()}, "elapsed_s": elapsed,
            "throughput_runs_per_s": (count - len(pending)) / elapsed}


def store_runs(bench: Bench, count: int) -> None:
    """Insert ``count`` finished runs with labels and report rows (bulk, like months of CI history)."""
    from sqlalchemy import insert, select

    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.models import Project, Run, RunLabel, RunReport

    with bench.app.app_context():
        session = store.session()
        project_id = session.execute(select(Project.id).where(Project.name == "bench")).scalar_one()
        now = dt.datetime.now(dt.UTC)
        runs, labels, reports = [], [], []
        for i in range(count):
            run_id = uuid.uuid4().hex
            status = "failed" if i % 7 == 0 else "passed"
            runs.append({"id": run_id, "project_id": project_id, "status": status,
                         "created_at": now - dt.timedelta(minutes=count - i), "attempts": 1, "max_attempts": 3,
                         "timeout_s": 600.0, "model_name": f"model-{i % 25}", "model_hash": "0" * 64,
                         "definition_kind": "spec", "definition": json.dumps(TINY_SPEC), "options": {},
                         "git_branch": f"branch-{i % 40}", "git_commit": f"{i:040x}", "device": "cpu",
                         "queue": "cpu", "check_s": 0.05, "started_at": now, "finished_at": now})
            labels.append({"run_id": run_id, "label": "nightly" if i % 3 == 0 else "pr"})
            reports.append({"run_id": run_id, "schema_version": "1.0", "passed": status == "passed",
                            "faulty_modules": [] if status == "passed" else ["layers.1"], "failed_because": [],
                            "diagnosis": [], "report": {"passed": status == "passed"}, "peak_bytes": 4096,
                            "created_at": now})
        for table, rows in ((Run, runs), (RunLabel, labels), (RunReport, reports)):
            for start in range(0, len(rows), 2000):
                session.execute(insert(table), rows[start:start + 2000])
        session.commit()


def query(bench: Bench, stored: int, repeats: int = 200) -> dict[str, dict[str, float]]:
    store_runs(bench, stored)
    filters = {
        "newest page": "", "model": "model=model-3", "status": "status=failed", "branch": "branch=branch-7",
        "label": "label=nightly", "passed+model": "passed=false&model=model-5",
        "since": "since=" + (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "page 3": None,
    }
    cursor = None
    for _ in range(2):
        cursor = bench.client.get("/api/v1/runs" + (f"?cursor={cursor}" if cursor else ""),
                                  headers=bench.headers).get_json()["next_cursor"]
    filters["page 3"] = f"cursor={cursor}"
    results = {}
    for name, qs in filters.items():
        times = []
        for i in range(repeats + 5):
            started = time.perf_counter()
            response = bench.client.get(f"/api/v1/runs?{qs}", headers=bench.headers)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200 and response.get_json()["runs"], (name, response.get_json())
            if i >= 5:
                times.append(elapsed)
        results[name] = {"p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * percentile(times, 99)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--stored", type=int, default=10_000)
    parser.add_argument("--embedded", action="store_true", help="SQLite database and queue instead")
    parser.add_argument("--only", choices=["overhead", "burst", "query"], action="append")
    args = parser.parse_args()
    parts = args.only or ["overhead", "burst", "query"]
    tmp = Path(tempfile.mkdtemp(prefix="gradcheck-bench-"))
    from contextlib import nullcontext

    database = nullcontext(f"sqlite:///{tmp / 'db.sqlite3'}") if args.embedded else fresh_pg_database()
    with database as url:
        from gradcheck_service.service.store.migrate import upgrade

        upgrade(url)
        settings = {"DATABASE_URL": url, "DATA_DIR": str(tmp),
                    "BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.sqlite3'}" if args.embedded else REDIS_URL,
                    "BROKER_KEY_PREFIX": f"gradcheck-bench-{uuid.uuid4().hex[:6]}:"}
        bench = Bench(settings, tmp)
        where = "SQLite + SQLite queue" if args.embedded else f"PostgreSQL ({PG_URL}) + Redis ({REDIS_URL})"
        print(f"# gradcheck-service service benchmark on {where}", flush=True)
        if "overhead" in parts:
            print("overhead:", json.dumps(overhead(bench, args.runs), indent=1), flush=True)
        if "burst" in parts:
            print("burst:", json.dumps(burst(bench, args.burst), indent=1), flush=True)
        if "query" in parts:
            print(f"query over {args.stored} stored runs:", json.dumps(query(bench, args.stored), indent=1))


if __name__ == "__main__":
    main()
