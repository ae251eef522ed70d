"""Service configuration, read from ``GRADCHECK_*`` environment variables.

Flask's ``from_prefixed_env("GRADCHECK")`` strips the prefix (``GRADCHECK_DATABASE_URL`` -> ``DATABASE_URL``) and
parses values as JSON where it can (numbers, booleans). :func:`finalize` then fills in what depends on other settings:
with nothing configured, the database and the queue are SQLite files under the data directory (the embedded mode).

The same function serves the API, the workers and the CLI, so every process agrees on where things are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import platformdirs

ENV_PREFIX = "GRADCHECK"

# Defaults of every setting; the README's configuration table documents each one.
DEFAULTS: dict[str, Any] = {
    "DATA_DIR": None,  # default: the per-user data directory (platformdirs)
    "DATABASE_URL": None,  # default: sqlite:///<DATA_DIR>/gradcheck.sqlite3
    "BROKER_URL": None,  # default: sqla+sqlite:///<DATA_DIR>/broker.sqlite3 (kombu's SQLAlchemy transport)
    "BROKER_KEY_PREFIX": "",  # Redis key prefix, so several deployments (or test sessions) share one Redis
    "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,  # bytes of one request body (a model file or a spec); above -> 413
    "RUN_TIMEOUT_S": 600,  # default wall-time limit of one check, seconds
    "MAX_RUN_TIMEOUT_S": 3600,  # the largest timeout_s a submission may ask for, seconds
    "MAX_ATTEMPTS": 3,  # times a run may be started before a vanished worker makes it an error
    # Whether any worker consumes the gpu queue. None: in the embedded mode, whether this machine has CUDA; with a
    # broker server, yes (CUDA runs wait for a GPU worker). False: runs asking for CUDA are refused (422).
    "GPU_WORKERS": None,
    "REPORT_MAX_BYTES": 32 * 1024 * 1024,  # largest report a check child may write back, bytes
    "HEARTBEAT_INTERVAL_S": 2.0,  # how often a worker refreshes a running run's heartbeat and progress
    "STALE_AFTER_S": 120.0,  # a running run whose heartbeat is older than this lost its worker
    "REAPER_INTERVAL_S": 60.0,  # period of the stale-run reaper (Celery beat), seconds
    "RUNNER_MODE": "fork",  # fork: a preloaded runner forks one child per check; spawn: a fresh interpreter
    # The sandbox of Python model files (a fresh bubblewrap child each; JSON specs need none, see jobs/sandbox.py).
    "SANDBOX_ADDRESS_SPACE_BYTES": 8 * 1024**3,  # virtual memory of one model-file check, bytes
    "SANDBOX_CPU_S": 3600,  # CPU seconds of one model-file check: each process (SIGXCPU) and all together
    "SANDBOX_PROCESSES": 256,  # processes and threads of the check (its user id, and its processes together)
    "SANDBOX_FILE_SIZE_BYTES": 256 * 1024**2,  # largest file the check may write (its stdout/stderr too), bytes
    "SANDBOX_OPEN_FILES": 512,  # open file descriptors
    # Job-wide (all processes of one check together; cgroups, else a watchdog). None: sized for WORKER_CONCURRENCY
    # checks at once -- 3/4 of the worker's memory and its CPUs less half a core, shared between them.
    "SANDBOX_MEMORY_BYTES": None,  # memory of a check's processes together, bytes
    "SANDBOX_CPU_CORES": None,  # CPU share of a check's processes together, cores
    "WORKER_CONCURRENCY": 1,  # checks a worker runs at once (set by `worker --concurrency`)
    "EMBEDDED_CONCURRENCY": 1,  # checks the embedded worker of `serve` runs at once
    "ALLOW_UNSANDBOXED_PYTHON": False,  # run model files even where the network cannot be isolated (not advised)
    "PAGE_SIZE": 50,  # default page size of run listings
    "MAX_PAGE_SIZE": 500,
    "DB_RETRY_S": 300.0,  # a worker retries a database write (e.g. a finished report) this long, seconds
    "RATE_LIMIT": None,  # requests per API token, e.g. "120/minute" or "10/second;600/hour" (None: no limit)
    "SUBMIT_RATE_LIMIT": "60/minute",  # submissions (POST /api/v1/runs) per API token; 0 turns it off
    "RATE_LIMIT_STORAGE_URL": None,  # counters shared by every API process; default: the broker's Redis
    "MAX_QUEUED_PER_PROJECT": None,  # queued + running runs one project may have; more submissions -> 429
    "SECRET_KEY": None,  # Flask session key (dashboard); default: a random key kept in <DATA_DIR>/secret_key
}


def default_data_dir() -> Path:
    """Per-user data directory, e.g. ``~/.local/share/gradcheck-service`` on Linux."""
    return Path(platformdirs.user_data_dir("gradcheck-service", appauthor=False))


def finalize(config: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Fill derived defaults in place (data dir, database and broker URLs) and return ``config``."""
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)
    data_dir = Path(config["DATA_DIR"] or default_data_dir()).expanduser()
    config["DATA_DIR"] = str(data_dir)
    if not config.get("DATABASE_URL"):
        config["DATABASE_URL"] = f"sqlite:///{data_dir / 'gradcheck.sqlite3'}"
    if not config.get("BROKER_URL"):
        config["BROKER_URL"] = f"sqla+sqlite:///{data_dir / 'broker.sqlite3'}"
    if not config.get("SECRET_KEY"):
        config["SECRET_KEY"] = _persistent_secret(data_dir)
    return config


def _persistent_secret(data_dir: Path) -> str:
    """A random key kept in the data directory, so every process of one installation signs sessions alike."""
    path = data_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError:
        return os.urandom(32).hex()
    secret = os.urandom(32).hex()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret)
    except FileExistsError:
        return path.read_text().strip()
    except OSError:
        pass
    return secret


def load(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings outside a Flask app (CLI commands): same parsing as ``from_prefixed_env``."""
    import json

    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    prefix = ENV_PREFIX + "_"
    for name, raw in environ.items():
        if name.startswith(prefix):
            try:
                config[name[len(prefix):]] = json.loads(raw)
            except ValueError:
                config[name[len(prefix):]] = raw
    finalize(config)
    return config


def is_embedded(config: Mapping[str, Any]) -> bool:
    """True when the queue is the embedded SQLite one (no broker server configured)."""
    return str(config["BROKER_URL"]).startswith("sqla+sqlite")


def hard_time_limit_s(config: Mapping[str, Any], timeout_s: float) -> float:
    """Celery hard limit for a run whose check may take ``timeout_s``: room to store the report after it."""
    return float(timeout_s) + 60.0


def soft_time_limit_s(config: Mapping[str, Any], timeout_s: float) -> float:
    """Celery soft limit: after the child's own wall timeout, before the hard kill."""
    return float(timeout_s) + 30.0


def visibility_timeout_s(config: Mapping[str, Any]) -> float:
    """Redis redelivers an unacknowledged message after this; it must exceed the largest hard limit, or a slow
    but healthy run would be delivered to a second worker while the first still works on it."""
    return hard_time_limit_s(config, float(config["MAX_RUN_TIMEOUT_S"])) + 600.0
