"""One attempt at a run, as a worker task performs it: claim, run the check child, store the outcome.

Called with a run id only (never an ORM object), inside the worker's Flask app context. A Python model file always
runs in a fresh sandboxed child (:class:`SandboxedLauncher`); where this machine cannot isolate it from the network
it is refused (``sandbox_unavailable``) unless the operator set ``GRADCHECK_ALLOW_UNSANDBOXED_PYTHON=1``. JSON specs
run no user code and take the configured fast path (``GRADCHECK_RUNNER_MODE``), under the spec layer's size caps.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery

from ...definitions.archive import write_files
from .. import config as service_config
from ..extensions import RUN_TASK, store
from ..store.lifecycle import claim_run, fail_run, finish_run, heartbeat, reap_stale_runs
from ..store.models import Run
from . import sandbox, scratch
from .launcher import ForkServerLauncher, SandboxedLauncher, SpawnLauncher, make_launcher
from .protocol import Job
from .runner import JOB

log = logging.getLogger(__name__)
_launcher: SpawnLauncher | ForkServerLauncher | None = None


def log_sandbox_self_test(config: Mapping[str, Any]) -> sandbox.Isolation:
    """Run the sandbox self-test (once per process; the worker calls it at start) and log what it found."""
    isolation = sandbox.self_test()
    features = ", ".join(f"{name}={'yes' if value else 'NO'}" for name, value in isolation.as_dict().items()
                         if isinstance(value, bool)) + f", job_limits={isolation.job_limits}"
    if isolation.network_isolated:
        log.info("sandbox for Python model files: %s", features)
    elif sandbox.unsandboxed_python_allowed(config):
        log.warning("sandbox for Python model files: %s; model files run anyway "
                    "(GRADCHECK_ALLOW_UNSANDBOXED_PYTHON is set)", features)
    else:
        log.warning("sandbox for Python model files: %s; %s", features, sandbox.refusal(isolation))
    return isolation


def model_file_launcher(config: Mapping[str, Any]) -> SandboxedLauncher | str:
    """The launcher of a Python model file, or the reason it may not run on this worker."""
    isolation = sandbox.self_test()
    if not isolation.network_isolated and not sandbox.unsandboxed_python_allowed(config):
        return sandbox.refusal(isolation)
    return SandboxedLauncher(sandbox.Limits.from_config(config), isolation)


def launcher(mode: str) -> SpawnLauncher | ForkServerLauncher:
    """This worker process's launcher (created after the pool forked, never shared between processes)."""
    global _launcher
    if _launcher is None:
        _launcher = make_launcher(mode)
    return _launcher


def close_launcher() -> None:
    global _launcher
    if _launcher is not None:
        _launcher.close()
        _launcher = None


def worker_host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# Where a job's definition is written: a single model file or spec in a folder of its own, named after the model
# behind a prefix (so errors read close to the user's file, and a model named "torch" cannot shadow torch); a
# repository archive below REPOSITORY with its own layout, so the check file keeps its path and never shadows a
# repository module (saved as ``model.py`` at the top of the job, as it once was, ``from model import GPT``
# imported the check file itself).
DEFINITION = "definition"
REPOSITORY = "repository"


def _file_name(model_name: str, suffix: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", model_name)[:100].strip("_") or "model"
    return f"{DEFINITION}/submitted_{stem}{suffix}"


def _write_job(job_dir: Path, run: Run) -> None:
    if run.layout:
        write_files({f.path: f.content for f in run.files}, job_dir / REPOSITORY)
        job = Job(definition=f"{REPOSITORY}/{run.layout['entry']}", options=run.options, name=run.model_name,
                  pythonpath=[REPOSITORY if root == "." else f"{REPOSITORY}/{root}"
                              for root in run.layout.get("pythonpath") or ["."]])
    else:
        job = Job(definition=_file_name(run.model_name, ".py" if run.definition_kind == "python" else ".json"),
                  options=run.options, name=run.model_name)
        (job_dir / DEFINITION).mkdir()
        (job_dir / job.definition).write_text(run.definition, encoding="utf-8")
    (job_dir / JOB).write_text(job.model_dump_json(exclude_none=True))


def execute_run(run_id: str, config: dict[str, Any]) -> str:
    """Run one attempt; returns what happened (passed, failed, inconclusive, error, gone, exhausted, superseded)."""
    session = store.session()
    claim = claim_run(session, run_id, worker_host())
    if claim.outcome != "run":
        log.info("run %s not started: %s", run_id, claim.outcome)
        return claim.outcome
    run = session.get(Run, run_id)
    if run is None:
        return "gone"
    chosen: SpawnLauncher | ForkServerLauncher | str
    chosen = model_file_launcher(config) if run.definition_kind == "python" else launcher(str(config["RUNNER_MODE"]))
    if isinstance(chosen, str):
        fail_run(session, run_id, claim.claim, "sandbox_unavailable", chosen)
        return "error"
    job_dir = scratch.make("job", f"{run_id[:12]}-")
    try:
        _write_job(job_dir, run)
        definition_kind, timeout_s = run.definition_kind, run.timeout_s
        session.expunge(run)  # the definition can be large; keep the session light while the check runs

        def on_progress(stage: str | None, fraction: float | None) -> bool:
            return heartbeat(session, run_id, claim.claim, stage, fraction)

        outcome = chosen.run(
            job_dir, timeout_s, on_progress, heartbeat_s=float(config["HEARTBEAT_INTERVAL_S"]),
            max_bytes=int(config["REPORT_MAX_BYTES"]),
        )
    except SoftTimeLimitExceeded:
        fail_run(session, run_id, claim.claim, "time_limit", "the worker stopped the check at its time limit")
        raise
    except Exception as exc:  # a fault of the service itself (job directory, launcher): say so, do not retry
        fail_run(session, run_id, claim.claim, "internal_error",
                 f"the worker could not run the check: {type(exc).__name__}: {exc}")
        raise
    # Anything else (SystemExit/KeyboardInterrupt at a worker shutdown) leaves the run as it is: the message is
    # redelivered (acks_late), or the reaper requeues the run once its heartbeats stop.
    finally:
        scratch.remove(job_dir)
    if outcome.result is not None and outcome.result.report is not None:
        return finish_run(session, run_id, claim.claim, outcome.result.report)
    if outcome.result is not None and outcome.result.error is not None:
        error = outcome.result.error
        message = error.message
        extra = [f"{p.path}: {p.message}" for p in error.problems if p.message not in message]
        if extra:  # each problem once: those the message already states are not repeated
            message += "\n" + "\n".join(extra)
        code = error.code
    else:
        code, message = outcome.error_code or "error", outcome.error or "the check failed"
    if definition_kind == "python" and code == "invalid_definition":
        code = "invalid_model_file"
    fail_run(session, run_id, claim.claim, code, message)
    return "error"


def requeue_stale_runs(celery_app: Celery, config: dict[str, Any]) -> list[str]:
    """The reaper: runs whose worker vanished go back on their queue (or end as error past the attempt cap), and
    the scratch folders of this machine's killed worker processes are removed."""
    scratch.remove_orphans()
    session = store.session()
    run_ids = reap_stale_runs(session, float(config["STALE_AFTER_S"]))
    for run_id in run_ids:  # after the commit in reap_stale_runs, like every enqueue
        run = session.get(Run, run_id)
        if run is None:
            continue
        celery_app.send_task(
            RUN_TASK, args=[run_id], queue=run.queue,
            soft_time_limit=service_config.soft_time_limit_s(config, run.timeout_s),
            time_limit=service_config.hard_time_limit_s(config, run.timeout_s),
        )
        log.warning("requeued run %s: its worker stopped sending heartbeats", run_id)
    return run_ids
