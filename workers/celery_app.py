"""The worker entry point: ``celery -A workers.celery_app worker -Q cpu`` (or ``gradcheck-service worker``).

Builds the Flask app (configuration, store), takes its Celery app and wires the per-process hooks: a forked pool
process drops the engine it inherited, each task's session is removed after it, the check runner of a pool
process is stopped with it, and database writes are retried through an outage (``GRADCHECK_DB_RETRY_S``).
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_postrun, worker_process_init, worker_process_shutdown, worker_ready

from gradcheck_service.app import create_app
from gradcheck_service.extensions import REAP_TASK, store
from gradcheck_service.jobs.execute import close_launcher
from gradcheck_service.store import retry

from . import tasks  # noqa: F401  (registers the tasks)

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
app = celery_app  # `celery -A workers.celery_app` finds `app`/`celery_app`
# A worker keeps a finished report through a database outage and retries its write (the API answers 503 instead).
retry.configure(float(flask_app.config["DB_RETRY_S"]))


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    store.dispose()


@worker_process_shutdown.connect
def _stop_runner(**_: Any) -> None:
    close_launcher()


@task_postrun.connect
def _remove_session(**_: Any) -> None:
    store.session.remove()


@worker_ready.connect
def _reap_at_start(sender: Any = None, **_: Any) -> None:
    """Look for runs orphaned while no worker was up, without waiting for the first beat tick."""
    celery_app.send_task(REAP_TASK)
