"""Service commands: ``serve``, ``worker``, ``token create|list|revoke``, ``db upgrade``, ``sandbox-check``.

``serve`` with nothing configured is the whole service on one machine: the API plus one embedded Celery worker, on
SQLite files and kombu's SQLAlchemy (SQLite) queue under ``GRADCHECK_DATA_DIR``. With a Redis broker configured it
serves the API only; workers are started with ``worker``, on as many machines as needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any

import click

from . import config as service_config


def _settings() -> dict[str, Any]:
    return service_config.load()


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


# --- db --------------------------------------------------------------------------------------------------------


@click.group("db")
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Create or migrate the configured database (GRADCHECK_DATABASE_URL) to the latest schema."""
    from .store.migrate import upgrade

    url = _settings()["DATABASE_URL"]
    try:
        upgrade(url, revision)
    except Exception as exc:
        _fail(f"migrating {_safe_url(url)} failed: {type(exc).__name__}: {exc}")
    click.echo(f"database {_safe_url(url)} is at revision {revision}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- token -----------------------------------------------------------------------------------------------------


@click.group("token")
def token() -> None:
    """API tokens of projects (only their SHA-256 is stored)."""


def _session() -> Any:
    from .store.db import make_engine
    from .store.migrate import upgrade

    url = _settings()["DATABASE_URL"]
    try:
        upgrade(url)  # a new user makes a token before ever starting the server: create the schema
    except Exception as exc:
        _fail(f"cannot open the database {_safe_url(url)}: {type(exc).__name__}: {exc}")
    from sqlalchemy.orm import Session

    return Session(make_engine(url), expire_on_commit=False)


@token.command("create")
@click.option("--project", required=True, help="Project name (created if new).")
@click.option("--name", default=None, help="A label for the token, e.g. the CI system using it.")
def token_create(project: str, name: str | None) -> None:
    """Create a token; it is printed once, on the last line."""
    from .store.tokens import create_token

    with _session() as session:
        new = create_token(session, project, name)
        session.commit()
    click.echo(f"token {new.id} for project {new.project!r} (store it now; it is not shown again):")
    click.echo(new.token)


@token.command("list")
@click.option("--project", default=None, help="Only this project's tokens.")
def token_list(project: str | None) -> None:
    """List tokens: id, project, name, prefix, created, last used, revoked."""
    from .store.tokens import list_tokens

    with _session() as session:
        rows = list_tokens(session, project)
        for row in rows:
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
            click.echo(f"{row.id}\t{row.project.name}\t{row.name or '-'}\t{row.prefix}...\t"
                       f"created {row.created_at:%Y-%m-%d %H:%M}\tlast used {used}\t{state}")
        if not rows:
            click.echo("no tokens", err=True)


@token.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id: int) -> None:
    """Revoke a token by its id (see `token list`); requests with it get 401 from then on."""
    from .store.tokens import revoke_token

    with _session() as session:
        done = revoke_token(session, token_id)
        session.commit()
    if not done:
        _fail(f"no active token with id {token_id}")
    click.echo(f"token {token_id} revoked")


# --- worker ----------------------------------------------------------------------------------------------------


@click.command("worker")
@click.option("--queues", "-Q", default="cpu", show_default=True, help="cpu, gpu or both: 'cpu,gpu'.")
@click.option("--concurrency", "-c", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Checks run at the same time (processes). A gpu worker runs one (solo pool, one GPU).")
@click.option("--beat/--no-beat", default=False, help="Also schedule the stale-run reaper (one per deployment).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--hostname", "-n", default=None, help="Celery node name (default: gradcheck@<host>).")
def worker(queues: str, concurrency: int, beat: bool, loglevel: str, hostname: str | None) -> None:
    """Run a Celery worker on the configured broker and database."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in ("cpu", "gpu")]
    if not names or unknown:
        _fail(f"unknown queue {unknown[0] if unknown else queues!r}: use cpu, gpu or cpu,gpu")
    from .extensions import machine_has_cuda

    if "gpu" in names and not machine_has_cuda():
        _fail("this machine has no usable CUDA device (or torch was built without CUDA): a gpu worker would take "
              "runs asking for device cuda and could not run them; use --queues cpu")
    settings = _settings()
    if settings["DATABASE_URL"].startswith("sqlite"):
        from .store.migrate import upgrade

        upgrade(settings["DATABASE_URL"])
    from workers.celery_app import celery_app

    argv = ["worker", "-Q", ",".join(names), "--loglevel", loglevel, "-n", hostname or "gradcheck@%h"]
    if names == ["gpu"]:
        # One job per GPU: no pool processes; CUDA is only ever touched by the check child.
        argv += ["--pool", "solo"]
        concurrency = 1
    else:
        argv += ["--pool", "prefork", "--concurrency", str(concurrency)]
    os.environ["GRADCHECK_WORKER_CONCURRENCY"] = str(concurrency)  # sizes the job-wide sandbox limits
    if beat:
        argv += ["--beat", "--schedule", str(celery_app.conf.beat_schedule_filename)]
    celery_app.worker_main(argv)


# --- sandbox-check ---------------------------------------------------------------------------------------------


@click.command("sandbox-check")
@click.option("--json", "as_json", is_flag=True, help="Print the self-test's answer as JSON.")
def sandbox_check(as_json: bool) -> None:
    """Probe the sandbox of Python model files on this machine (what a worker does at start).

    Exit code 0 when model files can run here (isolated, or explicitly allowed without), 1 when a worker here
    would refuse them.
    """
    import json
    from dataclasses import asdict

    from .jobs import sandbox

    settings = _settings()
    isolation = sandbox.self_test()
    allowed = isolation.network_isolated or sandbox.unsandboxed_python_allowed(settings)
    if as_json:
        click.echo(json.dumps({**isolation.as_dict(), "python_model_files": "run" if allowed else "refused",
                               "limits": asdict(sandbox.Limits.from_config(settings))}, indent=2))
    else:
        for name, value in isolation.as_dict().items():
            if isinstance(value, bool):
                click.echo(f"{name:22} {'yes' if value else 'NO'}")
        limits = sandbox.Limits.from_config(settings)
        click.echo(f"{'job_limits':22} {isolation.job_limits}: memory {limits.memory_bytes / 2**30:.2f} GiB, "
                   f"{limits.processes} processes, {limits.cpu_cores:g} cores, {limits.cpu_seconds} CPU seconds "
                   "(all processes of a check together)")
        for note in isolation.notes:
            click.echo(f"note: {note}")
        click.echo("Python model files: " + ("run in the sandbox" if isolation.network_isolated else
                                              "run WITHOUT network isolation (allowed by the operator)"
                                              if allowed else sandbox.refusal(isolation)))
    sys.exit(0 if allowed else 1)


# --- serve -----------------------------------------------------------------------------------------------------


def _embedded_worker(concurrency: int) -> subprocess.Popen[bytes]:
    """The embedded mode's worker: the same command a user would run, as a child of ``serve``. It takes the gpu
    queue too only where this machine has CUDA (the API refuses CUDA runs otherwise)."""
    from .extensions import machine_has_cuda

    queues = "cpu,gpu" if machine_has_cuda() else "cpu"
    command = [sys.executable, "-m", "gradcheck_service.cli", "worker", "--queues", queues,
               "--concurrency", str(concurrency), "--beat", "--loglevel", "WARNING"]
    return subprocess.Popen(command, start_new_session=True)


def _stop_server_if_worker_dies(proc: subprocess.Popen[bytes]) -> None:
    """Without its only worker the embedded service would accept runs it never checks: stop serving instead."""

    def watch() -> None:
        code = proc.wait()
        if not stopping.is_set():
            click.echo(f"error: the embedded worker exited (code {code}); stopping the server", err=True)
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="embedded-worker-watch", daemon=True).start()


stopping = threading.Event()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stopping.set()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # warm shutdown: the current check is re-queued (acks_late)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", "http_workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn worker processes (threads: 4 each).")
@click.option("--worker/--no-worker", "embedded", default=None,
              help="Start the embedded check worker (default: only when no broker is configured).")
@click.option("--dev", is_flag=True, help="Flask's development server instead of gunicorn.")
def serve(host: str, port: int, http_workers: int, embedded: bool | None, dev: bool) -> None:
    """Serve the API (and, with nothing configured, one embedded worker on SQLite)."""
    from .store.migrate import upgrade

    settings = _settings()
    try:
        upgrade(settings["DATABASE_URL"])
    except Exception as exc:
        _fail(f"cannot migrate the database {_safe_url(settings['DATABASE_URL'])}: {type(exc).__name__}: {exc}")
    if embedded is None:
        embedded = service_config.is_embedded(settings)
    worker_proc = _embedded_worker(int(settings["EMBEDDED_CONCURRENCY"])) if embedded else None
    if worker_proc is not None:
        _stop_server_if_worker_dies(worker_proc)
    mode = "embedded worker on " + settings["DATA_DIR"] if embedded else "API only"
    click.echo(f"gradcheck-service on http://{host}:{port} ({mode})", err=True)
    owner = os.getpid()
    try:
        if dev:
            from .app import create_app

            create_app().run(host=host, port=port, threaded=True, use_reloader=False)
        else:
            from .gunicorn_app import run_gunicorn

            run_gunicorn(f"{host}:{port}", http_workers)
    finally:
        # gunicorn forks its HTTP workers inside run_gunicorn and they leave through sys.exit(), unwinding this
        # frame too: only the process that started the embedded worker may stop it.
        if worker_proc is not None and os.getpid() == owner:
            _stop(worker_proc)


commands: list[click.Command] = [serve, worker, token, db, sandbox_check]
