"""Process-wide service objects: the SQL store and the Celery app bound to the Flask app.

``celery_init_app`` follows Flask's Celery pattern: every task runs inside an app context (``FlaskTask``), tasks are
declared with ``@shared_task`` in ``workers/tasks.py`` and never import the app, and the API enqueues by task name.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task
from flask import Flask
from kombu.entity import Exchange, Queue

from . import config as service_config
from .embedded_queue import celery_broker
from .store.db import Store

store = Store()

RUN_TASK = "gradcheck.run_check"
REAP_TASK = "gradcheck.reap_stale_runs"
QUEUES = ("cpu", "gpu")


def queue_for_device(device: str) -> str:
    """A run asking for CUDA goes to the GPU workers; everything else to the CPU workers."""
    return "gpu" if device.startswith("cuda") else "cpu"


@functools.cache
def machine_has_cuda() -> bool:
    """Whether this machine can run a check on a CUDA device.

    Asked in a child process: a process that forks later (a prefork worker, the check runner) must never
    initialize CUDA itself. A torch build without CUDA (or ROCm) support answers at once, without a child.
    """
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return False
    try:
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.stdout.strip() == "True"


def gpu_workers_expected(config: Mapping[str, Any]) -> bool:
    """Whether a run asking for CUDA can ever be picked up by this service.

    ``GPU_WORKERS`` when the operator set it. Otherwise, in the embedded mode the worker is ``serve``'s own child
    on this machine and consumes the ``gpu`` queue only when the machine has CUDA; with a broker server, GPU
    workers run on other machines (and may be restarting), so a CUDA run is queued and waits for one.
    """
    if config.get("GPU_WORKERS") is not None:
        return bool(config["GPU_WORKERS"])
    if service_config.is_embedded(config):
        return machine_has_cuda()
    return True


def celery_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Celery settings for the service; the reliability ones are explained inline."""
    broker = str(config["BROKER_URL"])
    visibility = service_config.visibility_timeout_s(config)
    transport: dict[str, Any] = {}
    if broker.startswith("sqla+"):
        # kombu's SQLAlchemy transport hands its options to create_engine(): only engine arguments here.
        # It polls the queue table ten times a second (EmbeddedTransport), which bounds the pick-up delay.
        transport["connect_args"] = {"timeout": 30}
    else:
        # Redis hands an unacknowledged message to another worker after this many seconds; it must be longer
        # than any run may take (hard time limit), or a healthy slow run would be executed twice.
        transport["visibility_timeout"] = visibility
        if config.get("BROKER_KEY_PREFIX"):
            transport["global_keyprefix"] = str(config["BROKER_KEY_PREFIX"])
    timeout = float(config["RUN_TIMEOUT_S"])
    broker_url, broker_transport = celery_broker(broker)
    return {
        "broker_url": broker_url,
        "broker_transport": broker_transport,
        "broker_transport_options": transport,
        # Results go to the SQL store, not to a Celery backend; the option is set anyway wherever it is read.
        "task_ignore_result": True,
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3.0,
        # Publishing from the API fails fast when the broker is down (the API then answers 503).
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                      "interval_max": 0.5},
        # Acknowledge only after the task ran, and put the message back when the worker process dies mid-run;
        # one message at a time per process, so a long run never holds a second one hostage.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": service_config.soft_time_limit_s(config, timeout),
        "task_time_limit": service_config.hard_time_limit_s(config, timeout),
        # Each queue with an exchange of its own name: without one, kombu binds every queue to the default
        # queue's exchange ('cpu'), which is what a worker's banner then shows for the gpu queue.
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        "task_default_queue": "cpu",
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "beat_schedule": {
            "reap-stale-runs": {"task": REAP_TASK, "schedule": float(config["REAPER_INTERVAL_S"])},
        },
        "beat_schedule_filename": str(_beat_file(config)),
    }


def _beat_file(config: dict[str, Any]) -> Any:
    from pathlib import Path

    return Path(config["DATA_DIR"]) / "celerybeat-schedule"


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(celery_settings(dict(app.config)))
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app
