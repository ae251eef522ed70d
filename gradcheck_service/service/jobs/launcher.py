"""Start the check child (``jobs.runner``), watch it, enforce its wall time, read its result.

The child gets a scrubbed environment (no ``GRADCHECK_*`` settings, no database or broker URL, no token), its own
session (so the whole process group can be killed), a scratch directory, and a wall-time limit; its result is
read back as JSON of bounded size. Three launchers share that contract: :class:`SpawnLauncher` starts a fresh
interpreter per check, :class:`ForkServerLauncher` keeps one preloaded runner per worker process and forks a child
per check (saves the ~1 s interpreter + torch start-up), and :class:`SandboxedLauncher` -- the only one used for
Python model files -- starts a fresh interpreter inside the sandbox of :mod:`.sandbox`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ... import PACKAGE_DIR
from . import jobgroup, protocol, runner, sandbox, scratch
from .containment import classify_exit
from .protocol import Job, Result, SandboxSpec

# Variables passed through to the child; everything else is dropped.
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                   "CUBLAS_WORKSPACE_CONFIG")

Progress = Callable[[str | None, float | None], bool]  # returns False to abandon the check


@dataclass
class Outcome:
    """How a check child ended: ``result`` is the parsed result.json, or None with ``error`` saying why."""

    result: Result | None = None
    error_code: str | None = None
    error: str | None = None
    stderr_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def child_env(scratch: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ}
    env.setdefault("PATH", os.defpath)
    package_root = str(PACKAGE_DIR.parent)
    env.update({"HOME": str(scratch), "TMPDIR": str(scratch), "PYTHONPATH": package_root,
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"})
    return env


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _read_progress(job_dir: Path) -> tuple[str | None, float | None]:
    try:
        progress = protocol.Progress.model_validate_json((job_dir / runner.PROGRESS).read_text())
    except (OSError, ValueError):
        return None, None
    return progress.stage, progress.fraction


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_result(job_dir: Path, max_bytes: int, exit_note: str) -> Outcome:
    path = job_dir / runner.RESULT
    # The model's own output (runner.OUTPUT) says most about a crash inside its code, e.g. an allocator's message.
    stderr = (_tail(job_dir / runner.OUTPUT) + "\n" + _tail(job_dir / "stderr.txt")).strip("\n")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Outcome(error_code="child_crashed", stderr_tail=stderr,
                       error=f"the check process {exit_note} without writing a result"
                       + (f"; its last output: {stderr.strip()[-500:]}" if stderr.strip() else ""))
    if size > max_bytes:
        return Outcome(error_code="report_too_large", stderr_tail=stderr,
                       error=f"the report is {size:,} bytes, over the limit of {max_bytes:,} bytes")
    try:
        text = path.read_text()
    except (OSError, ValueError) as exc:
        return Outcome(error_code="bad_result", error=f"the check process wrote an unreadable result: {exc}")
    try:
        result = Result.model_validate_json(text)
    except ValueError as exc:  # pydantic's ValidationError: unreadable JSON, or not a report or an error
        first = str(exc).splitlines()[:3]
        return Outcome(error_code="bad_result", error=f"the check process wrote a result of the wrong shape: "
                       f"{' '.join(first)}")
    return Outcome(result=result, stderr_tail=stderr)


def _watch(pid: int, job_dir: Path, timeout_s: float, on_progress: Progress, heartbeat_s: float,
           wait_end: Callable[[float], bool], kill: Callable[[int], None] = _kill_group) -> str | None:
    """Wait for the child, sending heartbeats; None when it ended by itself, else "timeout" or "abandoned".

    ``wait_end(seconds)`` blocks until the child ends (True) or the time passes (False), so the end of a check is
    noticed at once rather than at the next poll.
    """
    deadline = time.monotonic() + timeout_s
    next_beat = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= deadline:
            kill(pid)
            return "timeout"
        if now >= next_beat:
            next_beat = now + heartbeat_s
            stage, fraction = _read_progress(job_dir)
            if not on_progress(stage, fraction):
                kill(pid)
                return "abandoned"
        if wait_end(max(0.0, min(deadline, next_beat) - time.monotonic())):
            return None


def _waited(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


class SpawnLauncher:
    """A fresh ``python -m gradcheck_service.service.jobs.runner run JOB`` per check."""

    sandboxed = False

    def __init__(self) -> None:
        self.limits: dict[str, Any] = {}  # the limits named in error messages

    def command(self, job_dir: Path) -> list[str]:
        return [sys.executable, "-m", "gradcheck_service.service.jobs.runner", "run", str(job_dir)]

    def prepare(self, job_dir: Path) -> dict[str, str]:
        """Get the job directory ready for the child; returns the child's environment."""
        return child_env(job_dir)

    def start(self, job_dir: Path, out: IO[bytes], err: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(job_dir), cwd=job_dir, env=self.prepare(job_dir), stdin=subprocess.DEVNULL, stdout=out,
            stderr=err, start_new_session=True, close_fds=True,
        )

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill the check and everything it started (its process group)."""
        _kill_group(proc.pid)

    def run(self, job_dir: Path, timeout_s: float, on_progress: Progress, *, heartbeat_s: float,
            max_bytes: int) -> Outcome:
        with (job_dir / "stdout.txt").open("wb") as out, (job_dir / "stderr.txt").open("wb") as err:
            proc = self.start(job_dir, out, err)
        try:
            status = _watch(proc.pid, job_dir, timeout_s, on_progress, heartbeat_s, lambda t: self.wait_end(proc, t),
                            lambda _pid: self.stop(proc))
        finally:
            if proc.poll() is None:
                self.stop(proc)
            proc.wait()
        _kill_group(proc.pid)  # anything the check left behind in its group
        return _finish(status, job_dir, max_bytes, timeout_s, proc.returncode, self.sandboxed, self.limits)

    def wait_end(self, proc: subprocess.Popen[bytes], seconds: float) -> bool:
        """Wait up to ``seconds`` for the check to end; True once it has."""
        return _waited(proc, seconds)

    def close(self) -> None:
        pass


class SandboxedLauncher(SpawnLauncher):
    """A fresh runner inside bubblewrap, as an unprivileged user, under resource limits (see :mod:`.sandbox`).

    Killing the process group of the outer ``bwrap`` takes everything down: the inner one dies with its parent
    (``--die-with-parent``), and the end of a PID namespace's first process ends every process in it.

    The whole job runs in a :class:`~.jobgroup.JobGroup` (job-wide memory, processes and CPU), created before the
    job starts and read every :data:`~.jobgroup.POLL_S` seconds while it runs; past one of its limits the job is
    ended and the run's error names that limit.
    """

    sandboxed = True

    def __init__(self, limits: sandbox.Limits, isolation: sandbox.Isolation) -> None:
        super().__init__()
        self.sandbox_limits = limits
        self.isolation = isolation
        self.limits = asdict(limits)
        self.first_pid: int | None = None  # the sandbox's PID 1 (bubblewrap's own init), as the host sees it
        self.group: jobgroup.JobGroup | None = None
        self.breach: jobgroup.Breach | None = None

    def run(self, job_dir: Path, timeout_s: float, on_progress: Progress, *, heartbeat_s: float,
            max_bytes: int) -> Outcome:
        self.group = jobgroup.open_group(self.isolation.job_limits, job_dir.name, self.sandbox_limits.job())
        self.breach = None
        try:
            outcome = super().run(job_dir, timeout_s, on_progress, heartbeat_s=heartbeat_s, max_bytes=max_bytes)
            # A limit may show only after the end (the memory limit's OOM killer took the runner itself).
            breach = self.breach or self.group.check()
        finally:
            self.group.remove()
            self.group = None
        if breach is not None and (outcome.result is None or outcome.result.error is not None):
            outcome = Outcome(error_code=breach.code, error=breach.message, stderr_tail=outcome.stderr_tail)
        return outcome

    def wait_end(self, proc: subprocess.Popen[bytes], seconds: float) -> bool:
        """Wait for the check, reading the job-wide figures every ``POLL_S`` seconds; past a limit the whole job
        is killed at once."""
        deadline = time.monotonic() + seconds
        while True:
            if _waited(proc, max(0.0, min(jobgroup.POLL_S, deadline - time.monotonic()))):
                return True
            if self.group is not None and (breach := self.group.check()) is not None:
                self.breach = breach
                self.stop(proc)  # first: it returns once every process of the PID namespace is gone
                self.group.kill()  # anything the group still holds (without bubblewrap's namespace)
                return True
            if time.monotonic() >= deadline:
                return False

    def start(self, job_dir: Path, out: IO[bytes], err: IO[bytes]) -> subprocess.Popen[bytes]:
        if not self.isolation.bubblewrap:
            self.first_pid = None
            proc = super().start(job_dir, out, err)
            if self.group is not None:
                self.group.started(proc.pid)
            return proc
        read_end, write_end = os.pipe()
        argv = self.command(job_dir)
        at = argv.index("bwrap") + 1  # after the job group's prefix
        argv[at:at] = ["--info-fd", str(write_end)]
        try:
            proc = subprocess.Popen(argv, cwd=job_dir, env=self.prepare(job_dir), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True, close_fds=True,
                                    pass_fds=(write_end,))
        finally:
            os.close(write_end)
        if self.group is not None:
            self.group.started(proc.pid)
        self.first_pid = _read_first_pid(read_end)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill the sandbox's first process: the kernel then kills every process of its PID namespace, and the
        outer bubblewrap exits only once they are all gone -- so waiting for it means nothing is left."""
        if self.first_pid is not None and proc.poll() is None:  # outer bwrap not reaped: the pid is still its child
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.first_pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        _kill_group(proc.pid)

    def command(self, job_dir: Path) -> list[str]:
        prefix = self.group.enter_argv() if self.group is not None else []
        return prefix + sandbox.wrap(super().command(job_dir), job_dir, self.sandbox_limits, self.isolation)

    def prepare(self, job_dir: Path) -> dict[str, str]:
        job_file = job_dir / runner.JOB
        job = Job.model_validate_json(job_file.read_text())
        job.sandbox = SandboxSpec(limits=dict(self.limits), isolation=self.isolation.as_dict())
        job_file.write_text(job.model_dump_json(exclude_none=True))
        sandbox.prepare_scratch(job_dir, self.isolation)
        # No account owns the sandbox's user id: name one, for libraries that ask (getpass reads these first).
        return child_env(job_dir) | {"USER": "sandbox", "LOGNAME": "sandbox"}


def _read_first_pid(read_end: int, timeout_s: float = 20.0) -> int | None:
    """bubblewrap's ``--info-fd`` answer: JSON with ``child-pid``, written once the sandbox exists, then closed."""
    data = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_end, 4096) if ready else b""
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None  # bwrap failed before the sandbox existed; its stderr says why


def _finish(status: str | None, job_dir: Path, max_bytes: int, timeout_s: float, returncode: int | None,
            sandboxed: bool = False, limits: dict[str, Any] | None = None) -> Outcome:
    if status == "timeout":
        return Outcome(error_code="time_limit", error=f"the check exceeded its time limit of {timeout_s:g} s "
                       "and was stopped")
    if status == "abandoned":
        return Outcome(error_code="abandoned", error="the run was taken over or deleted while it ran")
    if returncode is not None and returncode < 0:
        note = f"was killed by signal {signal.Signals(-returncode).name}"
    else:
        note = f"exited with code {returncode}"
    outcome = read_result(job_dir, max_bytes, note)
    if outcome.error_code == "child_crashed":
        contained = classify_exit(returncode, sandboxed, outcome.stderr_tail, limits or {})
        if contained:
            outcome.error_code, outcome.error = contained
    return outcome


class ForkServerLauncher:
    """One preloaded runner process per worker process; each check is a fresh fork of it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.home: Path | None = None
        self.buffer = b""

    def _server(self) -> subprocess.Popen[bytes]:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc
        self.home = scratch.make("home")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gradcheck_service.service.jobs.runner", "serve"], cwd=self.home,
            env=child_env(self.home), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            bufsize=0, start_new_session=True, close_fds=True,
        )
        self.buffer = b""
        return self.proc

    def _line(self, proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any] | None:
        """Next answer line of the server, waiting up to ``timeout_s``; lines are split here (no stdio
        buffering), so two answers arriving together are both seen."""
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, remaining))
            if not ready:
                return None
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, job_dir: Path, timeout_s: float, on_progress: Progress, *, heartbeat_s: float,
            max_bytes: int) -> Outcome:
        proc = self._server()
        assert proc.stdin is not None
        try:
            proc.stdin.write(str(job_dir).encode() + b"\n")
            # Waiting for the fork answer covers the server's start-up (imports), hence the generous wait.
            started = self._line(proc, 120.0)
        except (BrokenPipeError, ValueError, OSError):
            started = None
        if not started or "pid" not in started:
            self.close()
            return Outcome(error_code="runner_unavailable", error="the check runner process did not start")
        pid = int(started["pid"])
        ending: dict[str, Any] = {}

        def ended(seconds: float) -> bool:
            answer = self._line(proc, seconds)
            if answer is not None:
                ending.update(answer)
                return True
            if proc.poll() is not None:
                ending["lost"] = True
                return True
            return False

        try:
            status = _watch(pid, job_dir, timeout_s, on_progress, heartbeat_s, ended)
        except BaseException:  # e.g. Celery's soft time limit: stop the check, forget the server's state
            _kill_group(pid)
            self.close()
            raise
        if status is not None:  # killed: collect the server's answer about it
            deadline = time.monotonic() + 10
            while not ending and time.monotonic() < deadline:
                ended(max(0.0, deadline - time.monotonic()))
        _kill_group(pid)
        if ending.get("lost"):
            self.close()
        code = -int(ending["signal"]) if "signal" in ending else ending.get("code")
        return _finish(status, job_dir, max_bytes, timeout_s, code)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                _kill_group(self.proc.pid)
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self.proc = None
        if self.home is not None:
            scratch.remove(self.home)
            self.home = None


def make_launcher(mode: str) -> SpawnLauncher | ForkServerLauncher:
    """The launcher of JSON specs (no user code): ``spawn`` or ``fork`` (``GRADCHECK_RUNNER_MODE``)."""
    return SpawnLauncher() if mode == "spawn" else ForkServerLauncher()
