"""Celery tasks: thin wrappers taking ids, the work is in ``gradcheck_service.service.jobs``."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import worker_init
from flask import current_app

from gradcheck_service.service import config as service_config
from gradcheck_service.service.extensions import REAP_TASK, RUN_TASK
from gradcheck_service.service.jobs.execute import execute_run, log_sandbox_self_test, requeue_stale_runs


@worker_init.connect
def _sandbox_self_test(**_: Any) -> None:
    """Probe the sandbox once in the main worker process, before the pool forks (the result is cached and
    inherited), and log which isolation features this machine has."""
    log_sandbox_self_test(service_config.load())


@shared_task(name=RUN_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_check(run_id: str) -> str:
    """Check one submitted run (time limits come with each message, from the run's own timeout)."""
    return execute_run(run_id, dict(current_app.config))


@shared_task(name=REAP_TASK, ignore_result=True)
def reap_stale_runs() -> list[str]:
    """Requeue runs stuck in ``running`` whose worker vanished (scheduled by Celery beat)."""
    return requeue_stale_runs(current_app.extensions["celery"], dict(current_app.config))
