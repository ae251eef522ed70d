"""Seed data for the dashboard's tests, benchmark and screenshots: real runs with real reports.

Each run is submitted through the API (``POST /api/v1/runs`` with a project token), then its report is produced by
the real engine in this process and stored exactly as a worker stores it (``claim_run`` then ``finish_run``).
Submission times are then moved back in time so that a model's history spans days, as it would in real use.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BUGGY_FILE = EXAMPLES / "buggy_custom_function.py"
# The example's seeded bug and its fix: with the fix the same model passes, so a comparison shows the change.
BUG_LINE = "        return grad_out * s\n"
FIX_LINE = "        return grad_out * (s + x * s * (1 - s))\n"
FAULTY_MODULE = "blocks.1.activation"
MEMORY_BUDGET = 64 * 1024 * 1024  # bytes; the batch-scaling section answers the largest batch under it


def mlp_spec() -> str:
    """examples/mlp.json with a sum loss: its MSE target has a fixed batch of 8, which batch scaling cannot grow."""
    spec = json.loads((EXAMPLES / "mlp.json").read_text())
    spec["loss"] = {"type": "sum"}
    return json.dumps(spec, indent=2)


def fixed_swish_source() -> str:
    source = BUGGY_FILE.read_text()
    assert BUG_LINE in source, "examples/buggy_custom_function.py changed: update BUG_LINE"
    return source.replace(BUG_LINE, FIX_LINE)


@functools.cache
def _report(kind: str, source: str, options_json: str) -> dict[str, Any]:
    """The real engine's report for a definition (a spec's JSON text or a model file's source), cached."""
    import tempfile

    from gradcheck_service.checks.engine import check
    from gradcheck_service.definitions.build import build_from_spec
    from gradcheck_service.definitions.pyfile import load_python_file

    options = json.loads(options_json)
    if kind == "spec":
        definition = build_from_spec(json.loads(source))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.py"
            path.write_text(source)
            definition = load_python_file(path)
    report = check(definition.module, definition.inputs, definition.loss_fn, name=definition.name, **options)
    return report.to_jsonable()


def real_report(kind: str, source: str, options: dict[str, Any]) -> dict[str, Any]:
    return _report(kind, source, json.dumps(options, sort_keys=True))


@dataclass
class SeededRun:
    key: str
    id: str
    model: str
    status: str


@dataclass
class Seeded:
    """What was seeded: the two projects' tokens and each run by a short key."""

    token: str
    other_token: str
    runs: dict[str, SeededRun] = field(default_factory=dict)

    def run(self, key: str) -> SeededRun:
        return self.runs[key]


def _submit(client: Any, token: str, kind: str, source: str, name: str, options: dict[str, Any],
            git: dict[str, str], labels: list[str]) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    metadata = {"name": name, "git": git, "labels": labels}
    if kind == "spec":
        response = client.post("/api/v1/runs", json={"spec": json.loads(source), "options": options,
                                                     "metadata": metadata}, headers=headers)
    else:
        response = client.post("/api/v1/runs", headers=headers, content_type="multipart/form-data", data={
            "model": (io.BytesIO(source.encode()), f"{name}.py"),
            "options": json.dumps(options), "metadata": json.dumps(metadata),
        })
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def _finish(app: Flask, run_id: str, report: dict[str, Any]) -> None:
    from tests.unit.service_api import finish_with_report  # claim, then finish, as a worker does

    finish_with_report(app, run_id, report)


def _fail(app: Flask, run_id: str, code: str, message: str) -> None:
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.lifecycle import claim_run, fail_run

    with app.app_context():
        session = store.session()
        claim = claim_run(session, run_id, "seed-worker:1")
        assert fail_run(session, run_id, claim.claim, code, message)


def _backdate(app: Flask, run_id: str, age: dt.timedelta, took_s: float) -> None:
    """Move a run's timestamps ``age`` into the past (submission, start, finish keep their spacing)."""
    from sqlalchemy import update

    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.models import Run

    created = dt.datetime.now(dt.UTC) - age
    with app.app_context():
        session = store.session()
        run = session.get(Run, run_id)
        assert run is not None
        values: dict[str, Any] = {"created_at": created}
        if run.started_at is not None:
            values["started_at"] = created + dt.timedelta(seconds=0.4)
        if run.finished_at is not None:
            values["finished_at"] = created + dt.timedelta(seconds=0.4 + took_s)
        session.execute(update(Run).where(Run.id == run_id).values(**values))
        session.commit()


def make_tokens(app: Flask) -> tuple[str, str]:
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.tokens import create_token

    with app.app_context():
        session = store.session()
        token, other = create_token(session, "vision").token, create_token(session, "audio").token
        session.commit()
    return token, other


def seed(app: Flask, *, queued: bool = True) -> Seeded:
    """Seed project ``vision`` with a week of runs of four models, and project ``audio`` with one run."""
    token, other = make_tokens(app)
    seeded = Seeded(token=token, other_token=other)
    client = app.test_client()
    mlp = mlp_spec()
    sigmoid = (EXAMPLES / "deep_sigmoid.json").read_text()
    cnn = (EXAMPLES / "residual_cnn.json").read_text()
    buggy = BUGGY_FILE.read_text()
    fixed = fixed_swish_source()
    # key, kind, source, model name, options, branch, commit, labels, age in hours
    plan: list[tuple[str, str, str, str, dict[str, Any], str, str, list[str], float]] = [
        ("mlp-1", "spec", mlp, "mlp", {"seed": 1, "memory_budget_bytes": MEMORY_BUDGET}, "main", "4f1c2a9e0b", ["nightly"], 150),
        ("swish-ok", "python", fixed, "swish-net", {}, "main", "a1b2c3d4e5", ["ci"], 120),
        ("cnn-1", "spec", cnn, "residual-cnn", {"checkpointing": True}, "main", "a1b2c3d4e5", ["ci"], 100),
        ("mlp-2", "spec", mlp, "mlp", {"seed": 2, "memory_budget_bytes": MEMORY_BUDGET}, "main", "7d9e8f0a1b", ["nightly"], 75),
        ("sigmoid", "spec", sigmoid, "deep-sigmoid", {"fail_on": ["vanishing"]}, "exp/sigmoid", "c0ffee1234", ["experiment"], 50),
        ("swish-bug", "python", buggy, "swish-net", {}, "feature/swish", "badc0de999", ["ci"], 26),
        ("mlp-3", "spec", mlp, "mlp", {"seed": 3, "memory_budget_bytes": MEMORY_BUDGET}, "main", "e3e3e3e3e3", ["nightly"], 3),
    ]
    for key, kind, source, name, options, branch, commit, labels, hours in plan:
        run_id = _submit(client, token, kind, source, name, options, {"branch": branch, "commit": commit,
                                                                      "repo": "git@example.com:team/models.git"},
                         labels)
        report = real_report(kind, source, options)
        _finish(app, run_id, report)
        _backdate(app, run_id, dt.timedelta(hours=hours), float(report["timings"]["total_s"]))
        seeded.runs[key] = SeededRun(key, run_id, name, "passed" if report["passed"] else "failed")
    run_id = _submit(client, token, "spec", cnn, "residual-cnn", {}, {"branch": "main", "commit": "0badbeef00"},
                     ["ci"], )
    _fail(app, run_id, "timeout", "the check ran past its wall-time limit of 600 s")
    _backdate(app, run_id, dt.timedelta(hours=10), 600.0)
    seeded.runs["timeout"] = SeededRun("timeout", run_id, "residual-cnn", "error")
    if queued:
        run_id = _submit(client, token, "spec", mlp, "mlp", {}, {"branch": "main", "commit": "f00d"}, ["ci"])
        seeded.runs["queued"] = SeededRun("queued", run_id, "mlp", "queued")
    run_id = _submit(client, other, "spec", mlp, "speech-mlp", {}, {"branch": "main"}, [])
    _finish(app, run_id, real_report("spec", mlp, {}))
    seeded.runs["other"] = SeededRun("other", run_id, "speech-mlp", "passed")
    return seeded


def make_app(tmp: Path) -> Flask:
    """The real app on a fresh, migrated SQLite database and embedded queue under ``tmp`` (no worker runs)."""
    from gradcheck_service.service.app import create_app
    from gradcheck_service.service.store.migrate import upgrade

    url = f"sqlite:///{tmp / 'dashboard.sqlite3'}"
    upgrade(url)
    return create_app({"DATA_DIR": str(tmp), "DATABASE_URL": url, "SECRET_KEY": "dashboard-tests",
                       "BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.sqlite3'}"})


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a thread (a real HTTP server); yields the base URL."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """No access log on the console."""

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def finish_queued(app: Flask, run_id: str) -> None:
    """Finish a queued seeded run with a real report, as a worker would (used to watch live updates)."""
    _finish(app, run_id, real_report("spec", mlp_spec(), {}))


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium driven by Playwright (Playwright's own browser download is not used)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


def sign_in(page: Any, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")
