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

The launcher puts the job's first process into the cgroup with a small shell wrapper *before* it execs
bubblewrap (no ``preexec_fn`` in a threaded worker), so every later process of the job is born inside it.
While the job runs the launcher calls :meth:`JobGroup.check` every :data:`POLL_S` seconds; a breach ends the job
with an error code and a message naming the limit and the figure measured:

* memory: the cgroup's own OOM killer fired (only processes of the job can be its victims) -> ``memory_limit``;
* processes: a fork or thread was refused at the job's limit -> ``process_limit`` (a bomb that catches the error
  and keeps forking would otherwise hold its processes until the wall-time limit);
* CPU time: the job's processes together used more than their CPU seconds -> ``cpu_time_limit``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
POLL_S = 0.25  # how often a running job's figures are read
PARENT = "gradcheck"  # the directory under the worker's own cgroup that holds one cgroup per job
V2_SERVICE_LEAF = "gradcheck-service"  # where a v2 worker moves its own processes to delegate its cgroup
CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000

# Puts the wrapper's own process into each ``cgroup.procs`` file named before ``--``, then execs the rest.
_ENTER = ('while [ "$1" != -- ]; do echo $$ > "$1" || { echo "gradcheck: cannot enter the job cgroup $1" >&2; '
          'exit 126; }; shift; done; shift; exec "$@"')


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


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _read_int(path: Path) -> int:
    text = _read(path).strip()
    return int(text) if text.isdigit() else 0


def _keyed(path: Path) -> dict[str, int]:
    """A flat keyed file such as ``memory.events`` or ``pids.events`` (``key value`` per line)."""
    values: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


def _write(path: Path, value: str) -> None:
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
        if self.memory_kills():
            peak = self.memory_peak()
            return Breach("memory_limit", f"memory limit: the check's processes together reached the job's memory "
                          f"limit of {_gib(limits.memory_bytes)} (peak {_gib(peak)}, {self.memory_kills()} "
                          "killed by the limit); the job was ended")
        refused = self.refused_forks()
        if refused:
            return Breach("process_limit", f"process limit: the model tried to start more than {limits.processes} "
                          f"processes or threads, the job's limit ({refused:,} refused); the job was ended")
        used = self.cpu_seconds()
        if used > limits.cpu_seconds:
            wall = time.monotonic() - self.started_at
            return Breach("cpu_time_limit", f"CPU time limit: the check's processes together used {used:.1f} CPU "
                          f"seconds in {wall:.1f} s, over the job's limit of {limits.cpu_seconds:g} CPU seconds "
                          f"(CPU share {limits.cpu_cores:g} cores)")
        return None


# --- cgroups ---------------------------------------------------------------------------------------------------


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and ``""`` for the v2 (unified) hierarchy."""
    paths: dict[str, str] = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _mounts() -> dict[str, Path]:
    """Mount point per v1 controller, and ``""`` for the cgroup2 mount."""
    mounts: dict[str, Path] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        fields = line.split()
        if " - " not in line:
            continue
        after = line.split(" - ", 1)[1].split()
        fstype, options = after[0], after[2] if len(after) > 2 else ""
        if fstype == "cgroup2":
            mounts.setdefault("", Path(fields[4]))
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in V1_CONTROLLERS:
                    mounts.setdefault(option, Path(fields[4]))
    return mounts


def _under(mount: Path, path: str) -> Path:
    return mount / path.lstrip("/")


def _make_dir(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        path.mkdir(parents=True)


def _kill_members(procs_files: list[Path], deadline_s: float) -> None:
    """SIGKILL every process listed until all lists are empty (a fork racing the kill is caught next round)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        pids = {int(p) for f in procs_files for p in _read(f).split() if p.isdigit()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _remove_dir(path: Path, deadline_s: float = 5.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:  # EBUSY while the last processes are being reaped
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return
            time.sleep(0.05)


class CgroupV1Group(JobGroup):
    """One directory per controller (memory, pids, cpu, cpuacct) under the worker's own cgroup of each."""

    mechanism = "cgroup-v1"

    def __init__(self, limits: JobLimits, name: str, parents: Mapping[str, Path]) -> None:
        super().__init__(limits)
        self.dirs: dict[str, Path] = {}
        for controller in V1_CONTROLLERS:
            path = parents[controller] / name
            if path not in self.dirs.values():  # co-mounted controllers (cpu,cpuacct) share a directory
                _make_dir(path)
            self.dirs[controller] = path
        memory = self.dirs["memory"]
        _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # no swap beyond the limit either
            _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        _write(self.dirs["pids"] / "pids.max", str(limits.processes))
        _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu_cores * CPU_PERIOD_US))))

    def _procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in dict.fromkeys(self.dirs.values())]

    def enter_argv(self) -> list[str]:
        return ["/bin/sh", "-c", _ENTER, "gradcheck-enter", *map(str, self._procs_files()), "--"]

    def memory_peak(self) -> int:
        return _read_int(self.dirs["memory"] / "memory.max_usage_in_bytes")

    def memory_kills(self) -> int:
        return _keyed(self.dirs["memory"] / "memory.oom_control").get("oom_kill", 0)

    def refused_forks(self) -> int:
        return _keyed(self.dirs["pids"] / "pids.events").get("max", 0)

    def cpu_seconds(self) -> float:
        return _read_int(self.dirs["cpuacct"] / "cpuacct.usage") / 1e9

    def kill(self) -> None:
        _kill_members(self._procs_files(), 5.0)

    def remove(self) -> None:
        self.kill()
        for path in dict.fromkeys(self.dirs.values()):
            _remove_dir(path)


class CgroupV2Group(JobGroup):
    """One cgroup under the worker's delegated cgroup (see :func:`_v2_jobs_parent`)."""

    mechanism = "cgroup-v2"

    def __init__(self, limits: JobLimits, name: str, parent: Path) -> None:
        super().__init__(limits)
        self.path = parent / name
        _make_dir(self.path)
        _write(self.path / "memory.max", str(limits.memory_bytes))
        for optional, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if (self.path / optional).exists():
                _write(self.path / optional, value)
        _write(self.path / "pids.max", str(limits.processes))
        _write(self.path / "cpu.max", f"{max(1000, int(limits.cpu_cores * CPU_PERIOD_US))} {CPU_PERIOD_US}")
        self.peak_seen = 0

    def enter_argv(self) -> list[str]:
        return ["/bin/sh", "-c", _ENTER, "gradcheck-enter", str(self.path / "cgroup.procs"), "--"]

    def memory_peak(self) -> int:
        current = _read_int(self.path / "memory.peak") or _read_int(self.path / "memory.current")
        self.peak_seen = max(self.peak_seen, current)
        return self.peak_seen

    def memory_kills(self) -> int:
        return _keyed(self.path / "memory.events").get("oom_kill", 0)

    def refused_forks(self) -> int:
        return _keyed(self.path / "pids.events").get("max", 0)

    def cpu_seconds(self) -> float:
        return _keyed(self.path / "cpu.stat").get("usage_usec", 0) / 1e6

    def check(self) -> Breach | None:
        self.memory_peak()  # without memory.peak (kernels before 5.19) the peak is the largest figure sampled
        return super().check()

    def kill(self) -> None:
        if (self.path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.path / "cgroup.kill", "1")
        _kill_members([self.path / "cgroup.procs"], 5.0)

    def remove(self) -> None:
        self.kill()
        _remove_dir(self.path)


def _v2_jobs_parent(mount: Path, own: str) -> Path:
    """The cgroup under which this worker creates job cgroups, delegating its own cgroup on first use.

    cgroup v2 lets a cgroup (other than the root) hand controllers to its children only while it holds no process
    itself, so the worker's processes move into a leaf (``gradcheck-service``) and the controllers are enabled
    below its cgroup.
    A pool process forked later finds itself in that leaf and uses the same parent.
    """
    base = _under(mount, own)
    if base.name == V2_SERVICE_LEAF:
        base = base.parent
    wanted = set(V2_CONTROLLERS)
    if not wanted <= set(_read(base / "cgroup.controllers").split()):
        raise OSError(f"the worker's cgroup {base} lacks the {', '.join(sorted(wanted))} controllers "
                      "(the container's cgroup is not delegated)")
    if base != mount and not wanted <= set(_read(base / "cgroup.subtree_control").split()):
        leaf = base / V2_SERVICE_LEAF
        _make_dir(leaf)
        for pid in _read(base / "cgroup.procs").split():
            with contextlib.suppress(OSError):  # a process that exited meanwhile
                _write(leaf / "cgroup.procs", pid)
        _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))
    parent = base / PARENT
    _make_dir(parent)
    if base == mount and not wanted <= set(_read(base / "cgroup.subtree_control").split()):
        _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))
    if not wanted <= set(_read(parent / "cgroup.subtree_control").split()):
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))
    return parent


def _v1_jobs_parents(mounts: Mapping[str, Path], own: Mapping[str, str]) -> dict[str, Path]:
    missing = [c for c in V1_CONTROLLERS if c not in mounts or c not in own]
    if missing:
        raise OSError(f"no cgroup v1 hierarchy for {', '.join(missing)}")
    parents = {c: _under(mounts[c], own[c]) / PARENT for c in V1_CONTROLLERS}
    for path in dict.fromkeys(parents.values()):
        _make_dir(path)
    return parents


# --- choosing the mechanism ------------------------------------------------------------------------------------


def _parents(mechanism: str) -> Path | dict[str, Path]:
    mounts, own = _mounts(), _own_cgroups()
    if mechanism == "cgroup-v2":
        if "" not in mounts or "" not in own:
            raise OSError("no cgroup2 hierarchy is mounted")
        return _v2_jobs_parent(mounts[""], own[""])
    return _v1_jobs_parents(mounts, own)


def _open_cgroup(mechanism: str, name: str, limits: JobLimits) -> JobGroup:
    parents = _parents(mechanism)
    if isinstance(parents, Path):
        return CgroupV2Group(limits, name, parents)
    return CgroupV1Group(limits, name, parents)


def open_group(mechanism: str, name: str, limits: JobLimits) -> JobGroup:
    """A new group for one job, named after its job directory (unique on the machine). Where the self-test's
    cgroup cannot be created any more (the hierarchy changed under a running worker), the watchdog holds the job
    rather than nothing."""
    try:
        if mechanism in ("cgroup-v2", "cgroup-v1"):
            return _open_cgroup(mechanism, name, limits)
    except OSError as exc:
        log.warning("job cgroup %s could not be created (%s); the watchdog limits this job", name, exc)
    from .watchdog import WatchdogGroup

    return WatchdogGroup(limits)


def detect() -> tuple[str, list[str]]:
    """The strongest mechanism that works here, proved by creating a group and starting a process inside it;
    with the reasons the stronger ones failed."""
    import subprocess

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
            group = _open_cgroup(mechanism, f"selftest-{os.getpid()}", probe)
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
