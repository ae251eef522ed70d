"""Dashboard page times over 10,000 stored runs: the list (filters, search, deep pages), a run, models, compare.

    .venv/bin/python benchmarks/dashboard_pages.py [--runs 10000] [--repeat 30] [--postgres]

Runs are stored with real reports (from the engine, on three small models) through the store's ingestion code
(``report_rows``, the rows a worker writes), spread over 60 days, 20 models, 10 branches and 5 labels; a second
project holds 2,000 runs that must never slow the first one down. Each page is requested ``--repeat`` times
through the whole Flask stack (test client, signed-in session); the table gives server time per request in ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from tests.dashboard_support import BUGGY_FILE, EXAMPLES, real_report  # noqa: E402
from tests.service_support import TINY_SPEC  # noqa: E402
from tests.unit.test_dashboard_auth import sign_in  # noqa: E402

MODELS = [f"model-{i:02d}" for i in range(20)]
BRANCHES = ["main"] + [f"feature/f{i}" for i in range(9)]
LABELS = ["nightly", "ci", "pr", "release", "experiment"]


def _reports() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("passed", real_report("spec", json.dumps(TINY_SPEC), {})),
        ("failed", real_report("python", BUGGY_FILE.read_text(), {})),
        ("failed", real_report("spec", (EXAMPLES / "deep_sigmoid.json").read_text(), {"fail_on": ["vanishing"]})),
    ]


def seed_runs(session: Any, project_id: int, count: int, rng: random.Random) -> list[tuple[str, bool]]:
    """``count`` runs with their report rows, committed in batches; returns (run id, has a report) pairs."""
    from gradcheck_service.service.store.ingest import report_rows
    from gradcheck_service.service.store.models import Run, RunLabel, new_run_id

    reports = _reports()
    now = dt.datetime.now(dt.UTC)
    ids: list[str] = []
    finished: list[bool] = []
    for start in range(0, count, 1000):
        rows: list[Any] = []
        for _ in range(start, min(start + 1000, count)):
            created = now - dt.timedelta(seconds=rng.uniform(0, 60 * 86400))
            roll = rng.random()
            status = "queued" if roll < 0.02 else "running" if roll < 0.03 else "error" if roll < 0.06 else None
            outcome, report = rng.choice(reports)
            run = Run(
                project_id=project_id, status=status or outcome, created_at=created, timeout_s=600.0,
                model_name=rng.choice(MODELS), model_hash="0" * 64, definition_kind="spec",
                definition=json.dumps(TINY_SPEC), options={}, git_branch=rng.choice(BRANCHES),
                git_commit=f"{rng.getrandbits(40):010x}", device="cpu", queue="cpu",
                labels=[RunLabel(label=label) for label in rng.sample(LABELS, rng.randint(0, 2))],
            )
            if status in (None, "running", "error"):
                run.started_at = created + dt.timedelta(seconds=rng.uniform(0.1, 5))
            if status in (None, "error"):
                run.finished_at = run.started_at + dt.timedelta(seconds=report["timings"]["total_s"])
                run.check_s = report["timings"]["total_s"]
            if status == "error":
                run.error_code, run.error_message = "timeout", "ran past its limit"
            run.id = new_run_id()
            rows.append(run)
            ids.append(run.id)
            finished.append(status is None)
            if status is None:
                rows.extend(report_rows(run.id, report))
        session.add_all(rows)
        session.commit()
    return list(zip(ids, finished, strict=True))


@contextmanager
def database(postgres: bool) -> Iterator[str]:
    if postgres:
        from tests.integration.service_fixtures import fresh_pg_database

        with fresh_pg_database() as url:
            yield url
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"


def timed(fetch: Callable[[], Any], repeat: int) -> list[float]:
    fetch()  # warm caches and templates
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fetch()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL (GRADCHECK_TEST_DATABASE_URL's server)")
    args = parser.parse_args()
    rng = random.Random(0)

    from gradcheck_service.service.app import create_app
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.migrate import upgrade
    from gradcheck_service.service.store.tokens import create_token

    with database(args.postgres) as url, tempfile.TemporaryDirectory() as data_dir:
        upgrade(url)
        app = create_app({"DATABASE_URL": url, "DATA_DIR": data_dir, "SECRET_KEY": "bench",
                          "BROKER_URL": f"sqla+sqlite:///{Path(data_dir) / 'broker.sqlite3'}"})
        started = time.perf_counter()
        with app.app_context():
            session = store.session()
            token = create_token(session, "bench")
            other = create_token(session, "neighbour")
            session.commit()
            seeded = seed_runs(session, 1, args.runs, rng)
            seed_runs(session, 2, 2_000, rng)
            # Planner statistics, as autovacuum (PostgreSQL) would have them on a database in use; right after a
            # bulk load PostgreSQL has none and picks nested loops that make the label query take a second.
            session.execute(text("ANALYZE"))
            session.commit()
        print(f"seeded {args.runs:,} + 2,000 runs in {time.perf_counter() - started:.1f} s "
              f"({'PostgreSQL' if args.postgres else 'SQLite'}); tokens {token.project}, {other.project}")
        client = app.test_client()
        sign_in(client, token.token)

        def get(path: str) -> Callable[[], Any]:
            def fetch() -> Any:
                response = client.get(path)
                assert response.status_code == 200, (path, response.status_code)
                return response
            return fetch

        # A deep page: follow "Older" 40 times (2,000 runs in) and time that page.
        deep = "/"
        for _ in range(40):
            html = client.get(deep).get_data(as_text=True)
            marker = 'rel="next" href="'
            deep = html[html.index(marker) + len(marker):].split('"', 1)[0].replace("&amp;", "&")
        ids = [run_id for run_id, _ in seeded]
        finished = [run_id for run_id, has_report in seeded if has_report]
        pages = {
            "runs list, newest page": "/",
            "status=failed": "/?status=failed",
            "model + branch": f"/?model={MODELS[7]}&branch=main",
            "label=nightly": "/?label=nightly",
            "date range (7 days)": f"/?since={(dt.date.today() - dt.timedelta(days=7)).isoformat()}",
            "search 'f3'": "/?q=f3",
            "page 41 (keyset)": deep,
            "run page (report + charts)": f"/runs/{finished[0]}",
            "models": "/models",
            "model history (100 runs)": f"/models/{MODELS[3]}",
            "compare": f"/compare?a={finished[1]}&b={finished[2]}",
            "live.json (50 ids)": "/live.json?ids=" + ",".join(ids[:50]),
        }
        print(f"\n{'page':32} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for name, path in pages.items():
            times = sorted(timed(get(path), args.repeat))
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            print(f"{name:32} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f}")
        store.session.remove()
        if store.engine is not None:
            store.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
