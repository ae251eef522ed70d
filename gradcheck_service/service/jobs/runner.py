"""The child process that runs one check: the only place a submitted model is loaded.

A job is a directory holding ``job.json`` (a :class:`~.protocol.Job`) and the definition file. The runner writes
``progress.json`` while it works and ``result.json`` at the end (a :class:`~.protocol.Result`: the report, or the
error in its place). It never talks to the database or the broker and is started with an environment that holds
neither their URLs nor any token.

Two ways to start it (``GRADCHECK_RUNNER_MODE``):

* ``python -m gradcheck_service.service.jobs.runner run JOB_DIR`` -- a fresh interpreter per check (``spawn``);
* ``python -m gradcheck_service.service.jobs.runner serve`` -- a preloaded process (torch and the engine imported once) that
  reads job directories on stdin and forks one child per job (``fork``, the default). The forked child starts its own
  session, so the worker can kill its whole process group, and :func:`contain` is where it drops privileges
  (the sandbox hardens this). The server itself runs no torch operation, so forking it is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ... import strict_json
from .protocol import Job, JobError, Problem, Progress, Result

RESULT = "result.json"
PROGRESS = "progress.json"
OUTPUT = "output.txt"  # stdout and stderr of the model's code while it is loaded and checked
JOB = "job.json"

# Exit codes of a job child (the result file says more).
EXIT_OK = 0
EXIT_ERROR = 3


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent process dies, so no check outlives its worker."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def contain(job_dir: Path) -> None:
    """Per-check containment applied in the child before the model is loaded (extended by the sandbox)."""
    os.environ["HOME"] = str(job_dir)
    os.environ["TMPDIR"] = str(job_dir)
    os.chdir(job_dir)


def _write_json(path: Path, message: Progress | Result) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    # NaN/Inf as their strings: the stored report must stay strict JSON
    tmp.write_text(strict_json.dumps(message.model_dump(exclude_none=True)))
    os.replace(tmp, path)


class _Progress:
    """The ``progress(stage, fraction)`` callback: atomically replaced file, at most every 0.2 s."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and fraction < 1.0:
            return
        self.last = now
        with contextlib.suppress(OSError, ValueError):
            _write_json(self.path, Progress(stage=str(stage)[:64], fraction=float(fraction), at=time.time()))


def _error(code: str, message: str, **extra: Any) -> Result:
    return Result(error=JobError(code=code, message=message[:4000], **extra))


def _contained(exc: BaseException, job_dir: Path, job: Job | None) -> Result | None:
    """The error result when ``exc`` is a sandbox limit or block at work (only for sandboxed jobs), else None."""
    if job is None or job.sandbox is None:
        return None
    from .containment import classify_exception

    found = classify_exception(exc, job_dir, dict(job.sandbox.limits))
    return _error(*found) if found else None


def _missing_package(exc: Exception, local_dirs: list[Path]) -> Result | None:
    """The ``missing_package`` error when the model imports a module that is neither in the submitted files nor
    installed here: it names the module, says what this environment has, and where to list it."""
    from ...definitions.pyfile import MissingModuleError
    from ..environment import installed_packages

    if not isinstance(exc, MissingModuleError):
        return None
    top = exc.module.split(".")[0]
    if any((d / top).exists() or (d / f"{top}.py").exists() for d in local_dirs):
        return None  # a module of the submitted repository: the import error itself says what is wrong
    packages = installed_packages()
    shown = ", ".join(f"{name} {version}" for name, version in list(packages.items())[:12])
    return _error("missing_package", f"the model imports '{exc.module}', which is neither among the submitted "
                  f"files nor installed on this worker ({exc.message}). This worker has {len(packages)} packages "
                  f"({shown}{', ...' if len(packages) > 12 else ''}); GET /api/v1/environment lists them all. A "
                  "module of your repository that is imported by name at run time must be listed in `include`.",
                  module=exc.module)


def _without_job_dir(result: Result, job_dir: Path) -> Result:
    """File names in an error as the user knows them: ``mylib/layers.py``, not the job directory's copy."""
    text = result.model_dump_json(exclude_none=True)
    for folder in ("repository", "definition"):
        text = text.replace(json.dumps(f"{job_dir / folder}/")[1:-1], "")
    return Result.model_validate_json(text)


def _read_job(job_dir: Path) -> Job | None:
    try:
        return Job.model_validate_json((job_dir / JOB).read_text())
    except (OSError, ValueError):
        return None


def execute(job_dir: Path) -> Result:
    """Load the definition and run the check; every failure becomes an ``error`` result naming its cause."""
    from pydantic import ValidationError

    from ...definitions import DefinitionError
    from ...definitions.checking import check_definition
    from ...definitions.output_capture import CapturedOutput
    from ...options import CheckOptions

    job = _read_job(job_dir)
    if job is None:
        return _error("runner_failed", f"the job folder holds no valid {JOB}")
    progress = _Progress(job_dir / PROGRESS)
    progress("loading", 0.0)
    try:
        options = CheckOptions.model_validate(job.options)
    except ValidationError as exc:
        return _error("invalid_options", str(exc))
    import_paths = [job_dir / p for p in job.pythonpath]
    # What the model's code prints lands in the report (capped). It is written to OUTPUT in the job directory
    # while it runs, so that the launcher still finds it (e.g. an allocator's last words) if the child dies.
    try:
        report = check_definition(job_dir / job.definition, import_paths, options, name=job.name,
                                  captured=CapturedOutput(job_dir / OUTPUT),
                                  progress=lambda _terminal: contextlib.nullcontext(progress))
    except DefinitionError as exc:
        contained = _contained(exc, job_dir, job)
        if contained:
            return contained
        missing = _missing_package(exc, [(job_dir / job.definition).parent, *import_paths])
        if missing:
            return missing
        problems = [Problem(path=p.path, message=p.message) for p in exc.problems]
        return _error("invalid_definition", str(exc), problems=problems)
    except Exception as exc:  # the model's own code raised: report it as the run's error, not a crash
        contained = _contained(exc, job_dir, job)
        if contained:
            return contained
        frames = traceback.extract_tb(exc.__traceback__)
        where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames)
                      if f.filename.startswith(str(job_dir))), None)
        message = f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")
        return _error("check_failed", message)
    progress("done", 1.0)
    return Result(report=report.to_jsonable())


def run_job(job_dir: Path) -> int:
    """Run one job in this process and write its result; the exit code tells the parent whether it did."""
    job_dir = job_dir.resolve()
    contain(job_dir)
    main_pid = os.getpid()
    try:
        result = execute(job_dir)
    except Exception as exc:  # e.g. a MemoryError while the loader reported the model's own MemoryError
        if os.getpid() != main_pid:
            os._exit(EXIT_ERROR)
        result = _error("memory_limit" if isinstance(exc, MemoryError) else "runner_failed",
                        f"{type(exc).__name__}: {exc}")
        if isinstance(exc, MemoryError):
            result = _contained(exc, job_dir, _read_job(job_dir)) or result
    if os.getpid() != main_pid:  # a process the model forked came back through here: only the runner reports
        os._exit(EXIT_ERROR)
    if result.error is not None:
        result = _without_job_dir(result, job_dir)
    _write_json(job_dir / RESULT, result)
    return EXIT_OK if result.report is not None else EXIT_ERROR


def _preload() -> None:
    """Import everything a check needs once, before any fork (no torch operation runs here)."""
    import torch  # noqa: F401

    from ...checks import engine  # noqa: F401
    from ...definitions import loader, pyfile, spec  # noqa: F401


def _fork_job(job_dir: Path) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = EXIT_ERROR
    try:
        os.setsid()  # its own session and process group: the worker can kill everything it starts
        die_with_parent()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, name in ((1, "stdout.txt"), (2, "stderr.txt")):
            out = os.open(job_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, fd)
            os.close(out)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = run_job(job_dir)
    finally:
        os._exit(code)


def serve() -> int:
    """Fork server: one job directory per stdin line; answers ``{"pid"}`` then ``{"pid", "code"|"signal"}``."""
    die_with_parent()
    _preload()
    out = sys.stdout
    for line in sys.stdin:
        job_dir = Path(line.strip())
        if not line.strip():
            continue
        pid = _fork_job(job_dir)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        answer: dict[str, Any] = {"pid": pid}
        if os.WIFSIGNALED(status):
            answer["signal"] = os.WTERMSIG(status)
        else:
            answer["code"] = os.WEXITSTATUS(status)
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        return serve()
    if len(args) == 2 and args[0] == "run":
        die_with_parent()
        return run_job(Path(args[1]))
    print("usage: python -m gradcheck_service.service.jobs.runner run JOB_DIR | serve", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
