"""Start the check child (``gradcheck_service.runner``), watch it, enforce its wall time, read its result.

The child gets a scrubbed environment (no ``GRADCHECK_*`` settings, no database or broker URL, no token), its own
session (so the whole process group can be killed), a scratch directory, and a wall-time limit; its result is
read back as JSON of bounded size. Two launchers share that contract: :class:`SpawnLauncher` starts a fresh
interpreter per check, :class:`ForkServerLauncher` keeps one preloaded runner per worker process and forks a child
per check (saves the ~1 s interpreter + torch start-up).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import runner

# Variables passed through to the child; everything else is dropped.
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                   "CUBLAS_WORKSPACE_CONFIG")

Progress = Callable[[str | None, float | None], bool]  # returns False to abandon the check


@dataclass
class Outcome:
    """How a check child ended: ``result`` is the parsed result.json, or None with ``error`` saying why."""

    result: dict[str, Any] | None = None
    error_code: str | None = None
    error: str | None = None
    stderr_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def child_env(scratch: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ}
    env.setdefault("PATH", os.defpath)
    package_root = str(Path(__file__).resolve().parents[2])
    env.update({"HOME": str(scratch), "TMPDIR": str(scratch), "PYTHONPATH": package_root,
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"})
    return env


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _read_progress(job_dir: Path) -> tuple[str | None, float | None]:
    try:
        data = json.loads((job_dir / runner.PROGRESS).read_text())
        return str(data.get("stage")), float(data.get("fraction"))
    except (OSError, ValueError, TypeError):
        return None, None


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_result(job_dir: Path, max_bytes: int, exit_note: str) -> Outcome:
    path = job_dir / runner.RESULT
    stderr = _tail(job_dir / "stderr.txt")
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
        result = json.loads(path.read_text())
    except ValueError as exc:
        return Outcome(error_code="bad_result", error=f"the check process wrote an unreadable result: {exc}")
    if not isinstance(result, dict) or not ("report" in result or "error" in result):
        return Outcome(error_code="bad_result", error="the check process wrote a result of the wrong shape")
    return Outcome(result=result, stderr_tail=stderr)


def _watch(pid: int, job_dir: Path, timeout_s: float, on_progress: Progress, heartbeat_s: float,
           wait_end: Callable[[float], bool]) -> str | None:
    """Wait for the child, sending heartbeats; None when it ended by itself, else "timeout" or "abandoned".

    ``wait_end(seconds)`` blocks until the child ends (True) or the time passes (False), so the end of a check is
    noticed at once rather than at the next poll.
    """
    deadline = time.monotonic() + timeout_s
    next_beat = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= deadline:
            _kill_group(pid)
            return "timeout"
        if now >= next_beat:
            next_beat = now + heartbeat_s
            stage, fraction = _read_progress(job_dir)
            if not on_progress(stage, fraction):
                _kill_group(pid)
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
    """A fresh ``python -m gradcheck_service.runner run JOB`` per check."""

    def run(self, job_dir: Path, timeout_s: float, on_progress: Progress, *, heartbeat_s: float,
            max_bytes: int) -> Outcome:
        with (job_dir / "stdout.txt").open("wb") as out, (job_dir / "stderr.txt").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gradcheck_service.runner", "run", str(job_dir)],
                cwd=job_dir, env=child_env(job_dir), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True,
            )
        try:
            status = _watch(proc.pid, job_dir, timeout_s, on_progress, heartbeat_s, lambda t: _waited(proc, t))
        finally:
            if proc.poll() is None:
                _kill_group(proc.pid)
            proc.wait()
        _kill_group(proc.pid)  # anything the check left behind in its group
        return _finish(status, job_dir, max_bytes, timeout_s, proc.returncode)

    def close(self) -> None:
        pass


def _finish(status: str | None, job_dir: Path, max_bytes: int, timeout_s: float, returncode: int | None) -> Outcome:
    if status == "timeout":
        return Outcome(error_code="time_limit", error=f"the check exceeded its time limit of {timeout_s:g} s "
                       "and was stopped")
    if status == "abandoned":
        return Outcome(error_code="abandoned", error="the run was taken over or deleted while it ran")
    if returncode is not None and returncode < 0:
        note = f"was killed by signal {signal.Signals(-returncode).name}"
    else:
        note = f"exited with code {returncode}"
    return read_result(job_dir, max_bytes, note)


class ForkServerLauncher:
    """One preloaded runner process per worker process; each check is a fresh fork of it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.home: Path | None = None
        self.buffer = b""

    def _server(self) -> subprocess.Popen[bytes]:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc
        import tempfile

        self.home = Path(tempfile.mkdtemp(prefix="gradcheck-runner-"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gradcheck_service.runner", "serve"], cwd=self.home,
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
        return json.loads(line)

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
            import shutil

            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None


def make_launcher(mode: str) -> SpawnLauncher | ForkServerLauncher:
    return SpawnLauncher() if mode == "spawn" else ForkServerLauncher()
