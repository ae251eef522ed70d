"""The worker entry point: ``celery -A workers.celery_app worker -Q cpu`` (or ``gradcheck-service worker``).

Builds the Flask app (configuration, store), takes its Celery app and wires the per-process hooks: a forked pool
process drops the engine it inherited, each task's session is removed after it, the check runner of a pool
process is stopped with it, and database writes are retried through an outage (``GRADCHECK_DB_RETRY_S``).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery.signals import (
    task_postrun,
    task_received,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from gradcheck_service.service.app import create_app
from gradcheck_service.service.extensions import REAP_TASK, RUN_TASK, store
from gradcheck_service.service.jobs import scratch
from gradcheck_service.service.jobs.execute import close_launcher
from gradcheck_service.service.store import retry
from gradcheck_service.service.store.lifecycle import mark_received, record_worker_environment

from . import tasks  # noqa: F401  (registers the tasks)

log = logging.getLogger(__name__)
flask_app = create_app()
celery_app = flask_app.extensions["celery"]
app = celery_app  # `celery -A workers.celery_app` finds `app`/`celery_app`
# A broker outage must not end the runs in progress: Celery's default would terminate every late-acknowledged task
# on a lost connection (the check child killed, the run ended as an error). Instead the check goes on and stores
# its report; the message, restored to the queue by kombu, comes back later and finds the run finished (or takes
# it over through a new claim if it comes back first), so there is still exactly one report.
celery_app.conf.worker_cancel_long_running_tasks_on_connection_loss = False
# A worker keeps a finished report through a database outage and retries its write (the API answers 503 instead).
retry.configure(float(flask_app.config["DB_RETRY_S"]))


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    store.dispose()


@worker_process_init.connect
@worker_ready.connect
def _remove_orphaned_scratch(**_: Any) -> None:
    """A pool process that replaces a killed one, or a worker restarted after a kill, removes the job folders
    and runner homes the killed processes left (see jobs/scratch.py); never stops the worker."""
    try:
        scratch.remove_orphans()
    except OSError as exc:
        log.warning("could not look for orphaned scratch folders: %s", exc)


@worker_process_shutdown.connect
def _stop_runner(**_: Any) -> None:
    close_launcher()


@task_postrun.connect
def _remove_session(**_: Any) -> None:
    store.session.remove()


@task_received.connect
def _note_receipt(request: Any = None, **_: Any) -> None:
    """In the worker's main process, before the run is handed to a pool process: note that this worker holds it
    (the reaper requeues a run whose holder died before starting it)."""
    if request is None or request.name != RUN_TASK or not request.args:
        return
    try:
        with store.new_session() as session:
            mark_received(session, str(request.args[0]), f"{socket.gethostname()}:{os.getpid()}")
    except Exception as exc:  # never let bookkeeping stop the consumer; the run still runs
        log.warning("could not note the receipt of run %s: %s", request.args[0], exc)


@worker_ready.connect
def _reap_at_start(sender: Any = None, **_: Any) -> None:
    """Look for runs orphaned while no worker was up, without waiting for the first beat tick."""
    celery_app.send_task(REAP_TASK)


@worker_ready.connect
def _record_environment(sender: Any = None, **_: Any) -> None:
    """Note the packages this worker provides (``GET /api/v1/environment``); never stops the worker."""
    try:
        queues = sorted(q.name for q in sender.task_consumer.queues) if sender is not None else []
        with store.new_session() as session:
            record_worker_environment(session, str(getattr(sender, "hostname", socket.gethostname())), queues)
    except Exception as exc:
        log.warning("could not record this worker's environment: %s", exc)
