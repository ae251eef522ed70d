"""Sustained load on the real deployment shape, on loopback: gunicorn (``gradcheck-service serve``) + 2 Celery
workers + Redis + PostgreSQL, optionally SIGKILLing a whole worker K times while the load runs.

Submitters post tiny JSON specs at a fixed total rate while readers poll runs, list runs and list models. Every
request's latency is recorded by kind; at the end the script waits for every accepted run and checks the
database against its own ledger of accepted run ids: each one finished, exactly one report for each run that
passed or failed. Prints p50/p95/p99 latencies, throughput, the 5xx count and
"N runs, K worker kills, 0 lost"; exits 1 on any 5xx or lost run.

Uses a private database on the machine's PostgreSQL and a private key prefix on its Redis (both removed after):
    .venv/bin/python benchmarks/load.py [--runs 200] [--rate 10] [--readers 4] [--kills 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.service_fixtures import PG_URL, REDIS_URL, fresh_pg_database  # noqa: E402
from tests.service_support import TINY_SPEC, ServiceProcess, cli, free_port, service_env  # noqa: E402

FAST = {"mode": "fast", "localize": False, "memory": False, "health": False}
TERMINAL = ("passed", "failed", "error")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


class Client:
    """One keep-alive HTTP connection (one per thread) that records each request's latency and status."""

    def __init__(self, port: int, token: str, record: Recorder) -> None:
        self.port, self.token, self.record = port, token, record
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, kind: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body), "application/json"
        started = time.perf_counter()
        try:
            self.connection.request(method, path, body=data, headers=headers)
            response = self.connection.getresponse()
            raw = response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            status, raw = 0, b""
        self.record.add(kind, time.perf_counter() - started, status)
        return status, json.loads(raw) if raw else None


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter[int]] = defaultdict(Counter)

    def add(self, kind: str, seconds: float, status: int) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            self.statuses[kind][status] += 1


def submitter(client: Client, count: int, interval_s: float, accepted: list[str], lock: threading.Lock) -> None:
    next_at = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval_s
        body = {"spec": {**TINY_SPEC, "name": f"load-{i % 20}"}, "options": FAST,
                "metadata": {"labels": ["load"], "git": {"branch": f"b{i % 5}"}}}
        for _ in range(20):  # a client honours 503 + Retry-After
            status, answer = client.call("submit", "POST", "/api/v1/runs", body)
            if status == 202:
                with lock:
                    accepted.append(answer["id"])
                break
            time.sleep(1.0)


def reader(client: Client, accepted: list[str], lock: threading.Lock, stop: threading.Event) -> None:
    rng = random.Random()
    while not stop.is_set():
        with lock:
            run_id = rng.choice(accepted) if accepted else None
        choice = rng.random()
        if run_id and choice < 0.5:
            client.call("get run", "GET", f"/api/v1/runs/{run_id}")
        elif choice < 0.85:
            client.call("list runs", "GET", rng.choice(["/api/v1/runs", "/api/v1/runs?label=load&status=passed",
                                                         "/api/v1/runs?branch=b2&limit=20"]))
        else:
            client.call("models", "GET", "/api/v1/models?history=5")
        time.sleep(0.02)


def ledger_check(database_url: str, ledger: list[str]) -> dict[str, Any]:
    """Statuses and report counts of the accepted runs, read straight from the database."""
    from sqlalchemy import create_engine, func, select

    from gradcheck_service.service.store.models import Run, RunReport

    engine = create_engine(database_url)
    with engine.connect() as connection:
        statuses = {run_id: status for run_id, status in connection.execute(
            select(Run.id, Run.status).where(Run.id.in_(ledger)))}
        reports = {run_id: n for run_id, n in connection.execute(
            select(RunReport.run_id, func.count()).where(RunReport.run_id.in_(ledger)).group_by(RunReport.run_id))}
        attempts = Counter(a for (a,) in connection.execute(select(Run.attempts).where(Run.id.in_(ledger))))
    engine.dispose()
    lost = [r for r in ledger if statuses.get(r) not in TERMINAL]
    wrong_reports = [r for r in ledger if statuses.get(r) in ("passed", "failed") and reports.get(r) != 1
                     or statuses.get(r) == "error" and reports.get(r)]
    return {"lost": lost, "wrong_reports": wrong_reports, "statuses": Counter(statuses.values()),
            "attempts": dict(sorted(attempts.items()))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="runs submitted in total")
    parser.add_argument("--rate", type=float, default=10.0, help="submissions per second, all submitters together")
    parser.add_argument("--submitters", type=int, default=2)
    parser.add_argument("--readers", type=int, default=4, help="threads polling runs, lists and models")
    parser.add_argument("--http-workers", type=int, default=2, help="gunicorn worker processes (4 threads each)")
    parser.add_argument("--kills", type=int, default=0, help="SIGKILL a whole check worker this many times")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for every run to finish")
    args = parser.parse_args()

    prefix = f"gradcheck-load-{uuid.uuid4().hex[:6]}:"
    # The data folder (the processes' logs and the deployment's secret_key) is removed when the run ends.
    with tempfile.TemporaryDirectory(prefix="gradcheck-load-") as tmp:
        try:
            return run_load(args, Path(tmp), prefix)
        finally:
            _delete_keys(prefix)


def _delete_keys(prefix: str) -> None:
    """Remove this run's keys from the shared Redis."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def run_load(args: argparse.Namespace, tmp: Path, prefix: str) -> int:
    with fresh_pg_database() as database_url:
        from gradcheck_service.service.store.migrate import upgrade

        upgrade(database_url)
        env = service_env(DATABASE_URL=database_url, BROKER_URL=REDIS_URL, DATA_DIR=str(tmp),
                          BROKER_KEY_PREFIX=prefix, HEARTBEAT_INTERVAL_S=1, SUBMIT_RATE_LIMIT=0,
                          STALE_AFTER_S=10, REAPER_INTERVAL_S=2)
        token = cli(["token", "create", "--project", "load"], env).stdout.strip().splitlines()[-1]
        port = free_port()
        server = ServiceProcess(["serve", "--port", str(port), "--workers", str(args.http_workers), "--no-worker"],
                                env, tmp / "serve.log")
        workers = [ServiceProcess(["worker", "-n", f"load{i}@%h", "--loglevel", "INFO", *(["--beat"] if i else [])],
                                  env, tmp / f"worker{i}-0.log") for i in range(2)]
        recorder = Recorder()
        accepted: list[str] = []
        lock, stop = threading.Lock(), threading.Event()
        kills = 0
        try:
            server.wait_for("gradcheck-service on", 60)
            probe = Client(port, token, Recorder())
            deadline = time.monotonic() + 60
            while probe.call("probe", "GET", "/api/v1/runs?limit=1")[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            for worker in workers:
                worker.wait_for("ready", 120)
            per_submitter = args.runs // args.submitters
            threads = [threading.Thread(target=submitter, args=(Client(port, token, recorder), per_submitter,
                                                                args.submitters / args.rate, accepted, lock))
                       for _ in range(args.submitters)]
            threads += [threading.Thread(target=reader, args=(Client(port, token, recorder), accepted, lock, stop),
                                         daemon=True) for _ in range(args.readers)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            submit_s = per_submitter * args.submitters / args.rate
            for k in range(args.kills):  # evenly spread over the submission period
                time.sleep(max(0.0, started + submit_s * (k + 1) / (args.kills + 1) - time.monotonic()))
                workers[0].kill()
                workers[0].stop()
                kills += 1
                workers[0] = ServiceProcess(["worker", "-n", "load0@%h", "--loglevel", "INFO"], env,
                                            tmp / f"worker0-{k + 1}.log")
            for thread in threads[:args.submitters]:
                thread.join()
            submitted_s = time.monotonic() - started
            total = len(accepted)
            while time.monotonic() - started < args.timeout:
                _, page = probe.call("probe", "GET", "/api/v1/runs?status=queued,running&limit=1")
                if page and not page["runs"]:
                    break
                time.sleep(0.5)
            finished_s = time.monotonic() - started
            stop.set()
        finally:
            stop.set()
            for process in [server, *workers]:
                process.stop()
        outcome = ledger_check(database_url, accepted)

    server_errors = sum(n for counts in recorder.statuses.values() for s, n in counts.items() if s >= 500 or s == 0)
    latency = {kind: {"count": len(values), "p50_ms": round(1000 * percentile(values, 50), 1),
                      "p95_ms": round(1000 * percentile(values, 95), 1),
                      "p99_ms": round(1000 * percentile(values, 99), 1),
                      "statuses": dict(recorder.statuses[kind])}
               for kind, values in sorted(recorder.latencies.items())}
    requests = sum(len(v) for v in recorder.latencies.values())
    print(f"# load on gunicorn ({args.http_workers} processes) + 2 Celery workers, PostgreSQL ({PG_URL}) + Redis "
          f"({REDIS_URL})")
    print(json.dumps({
        "runs_accepted": total, "submit_period_s": round(submitted_s, 1), "all_finished_after_s": round(finished_s, 1),
        "run_throughput_per_s": round(total / finished_s, 2), "http_requests": requests,
        "http_throughput_per_s": round(requests / finished_s, 1), "server_errors_5xx": server_errors,
        "latency": latency, "statuses": dict(outcome["statuses"]), "attempts": outcome["attempts"],
        "wrong_report_counts": len(outcome["wrong_reports"]),
    }, indent=1))
    print(f"{total} runs, {kills} worker kills, {len(outcome['lost'])} lost; {server_errors} server errors")
    return 1 if server_errors or outcome["lost"] or outcome["wrong_reports"] or total < args.runs else 0


if __name__ == "__main__":
    sys.exit(main())
