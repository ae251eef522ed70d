"""Job-wide limits of a sandboxed check: memory, processes and CPU for all of the job's processes together.

The per-process limits of :mod:`.sandbox` (``prlimit``) bound each process, but a job is many processes: sixteen
children of 1 GiB each pass every per-process limit, and a fork bomb that ignores the refused fork keeps its
processes spinning. A :class:`JobGroup` bounds them together, with the strongest mechanism this worker may use:

``cgroup-v2``  a cgroup per job under the worker's own (delegated) cgroup: ``memory.max`` (swap 0, the whole
               group killed together), ``pids.max``, ``cpu.max``; the kernel enforces all three.
``cgroup-v1``  the same with one directory per controller (memory, pids, cpu, cpuacct), as on hosts with the
               legacy hierarchy.
``watchdog``   no cgroup may be created here: the worker samples the job's processes every
               :data:`POLL_S` seconds (proportional set size, thread count, CPU time) and ends the job past a
               limit. Memory is then ended by the watchdog, not the kernel, and the CPU share is only a lower
               scheduling priority (``nice``).

The cgroup mechanisms live in :mod:`.cgroups`, the watchdog in :mod:`.watchdog`. The launcher puts the job's
first process into the cgroup with a small shell wrapper *before* it execs bubblewrap (no ``preexec_fn`` in a threaded worker), so every later process of the job is born inside it.
While the job runs the launcher calls :meth:`JobGroup.check` every :data:`POLL_S` seconds; a breach ends the job
with an error code and a message naming the limit and the figure measured:

* memory: the cgroup's own OOM killer fired (only processes of the job can be its victims) -> ``memory_limit``;
* processes: a fork or thread was refused at the job's limit -> ``process_limit`` (a bomb that catches the error
  and keeps forking would otherwise hold its processes until the wall-time limit);
* CPU time: the job's processes together used more than their CPU seconds -> ``cpu_time_limit``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
POLL_S = 0.25  # how often a running job's figures are read


@dataclass(frozen=True)
class JobLimits:
    """Limits of one job's processes together (bytes, count, cores, CPU seconds)."""

    memory_bytes: int
    processes: int
    cpu_cores: float
    cpu_seconds: float


@dataclass(frozen=True)
class Breach:
    """A job-wide limit the job went past: the run's error code and message."""

    code: str
    message: str


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB".replace(".00 GiB", " GiB")


def read_file(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def read_int(path: Path) -> int:
    text = read_file(path).strip()
    return int(text) if text.isdigit() else 0


def read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file such as ``memory.events`` or ``pids.events`` (``key value`` per line)."""
    values: dict[str, int] = {}
    for line in read_file(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


def write_file(path: Path, value: str) -> None:
    path.write_text(value)


class JobGroup:
    """The job-wide limits of one check; subclasses say how they are measured and enforced."""

    mechanism = "none"

    def __init__(self, limits: JobLimits) -> None:
        self.limits = limits
        self.started_at = time.monotonic()

    def enter_argv(self) -> list[str]:
        """The command prefix that starts the job inside this group."""
        return []

    def started(self, pid: int) -> None:
        """The job's outermost process has started (the watchdog samples from it)."""
        self.started_at = time.monotonic()

    # Figures; each mechanism reads them its own way.
    def memory_peak(self) -> int:
        return 0

    def memory_kills(self) -> int:
        return 0

    def refused_forks(self) -> int:
        return 0

    def cpu_seconds(self) -> float:
        return 0.0

    def kill(self) -> None:
        """Kill every process of the job."""

    def remove(self) -> None:
        """Kill what is left and delete the group."""

    def check(self) -> Breach | None:
        """The job-wide limit this job has gone past, or None. Memory first: a job killed by the memory limit
        often shows refused forks and CPU time too."""
        limits = self.limits
        kernel = self.mechanism.startswith("cgroup")  # else the watchdog's samples, not the kernel's counts
        if kills := self.memory_kills():
            how = f"{kills} killed by the limit" if kernel else "measured by the watchdog"
            return Breach("memory_limit", f"memory limit: the check's processes together reached the job's memory "
                          f"limit of {_gib(limits.memory_bytes)} (peak {_gib(self.memory_peak())}, {how}); the job "
                          "was ended")
        if refused := self.refused_forks():
            how = f"{refused:,} refused" if kernel else "held at the limit"
            return Breach("process_limit", f"process limit: the model tried to start more than {limits.processes} "
                          f"processes or threads, the job's limit ({how}); the job was ended")
        used = self.cpu_seconds()
        if used > limits.cpu_seconds:
            wall = time.monotonic() - self.started_at
            return Breach("cpu_time_limit", f"CPU time limit: the check's processes together used {used:.1f} CPU "
                          f"seconds in {wall:.1f} s, over the job's limit of {limits.cpu_seconds:g} CPU seconds "
                          f"(CPU share {limits.cpu_cores:g} cores)")
        return None


# --- choosing the mechanism ------------------------------------------------------------------------------------


def open_group(mechanism: str, name: str, limits: JobLimits) -> JobGroup:
    """A new group for one job, named after its job directory (unique on the machine). Where the self-test's
    cgroup cannot be created any more (the hierarchy changed under a running worker), the watchdog holds the job
    rather than nothing."""
    try:
        if mechanism in ("cgroup-v2", "cgroup-v1"):
            from .cgroups import open_cgroup

            return open_cgroup(mechanism, name, limits)
    except OSError as exc:
        log.warning("job cgroup %s could not be created (%s); the watchdog limits this job", name, exc)
    from .watchdog import WatchdogGroup

    return WatchdogGroup(limits)


def detect() -> tuple[str, list[str]]:
    """The strongest mechanism that works here, proved by creating a group and starting a process inside it;
    with the reasons the stronger ones failed."""
    import subprocess

    from .cgroups import open_cgroup

    notes: list[str] = []
    if os.geteuid() != 0:
        notes.append("the worker does not run as root, so it cannot create cgroups")
        candidates: tuple[str, ...] = ()
    else:
        candidates = ("cgroup-v2", "cgroup-v1")
    probe = JobLimits(memory_bytes=256 * 2**20, processes=16, cpu_cores=0.5, cpu_seconds=60)
    for mechanism in candidates:
        group: JobGroup | None = None
        try:
            group = open_cgroup(mechanism, f"selftest-{os.getpid()}", probe)
            seen = subprocess.run([*group.enter_argv(), "cat", "/proc/self/cgroup"], capture_output=True,
                                  timeout=10, text=True)
            if seen.returncode != 0 or f"/selftest-{os.getpid()}" not in seen.stdout:
                raise OSError(seen.stderr.strip() or "the probe process did not land in the job cgroup")
            return mechanism, notes
        except (OSError, subprocess.SubprocessError) as exc:
            notes.append(f"{mechanism}: {exc}")
        finally:
            if group is not None:
                group.remove()
    notes.append("job-wide limits fall back to a watchdog sampling the job's processes every "
                 f"{POLL_S:g} s: memory (proportional set size) and processes are ended by the watchdog rather "
                 "than the kernel, and the CPU share is only a lower scheduling priority (nice)")
    return "watchdog", notes
