"""Job groups in cgroups: one cgroup per job under the worker's own, created by the (root) worker before the job
starts. ``cgroup-v2`` needs the worker's cgroup delegated (a container's private cgroup namespace); ``cgroup-v1``
uses one directory per controller. See :mod:`.jobgroup` for what is limited and how a breach is named.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from .jobgroup import Breach, JobGroup, JobLimits, read_file, read_int, read_keyed, write_file

PARENT = "gradcheck"  # the directory under the worker's own cgroup that holds one cgroup per job
V2_SERVICE_LEAF = "gradcheck-service"  # where a v2 worker moves its own processes to delegate its cgroup
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000

# Puts the wrapper's own process into each ``cgroup.procs`` file named before ``--``, then execs the rest.
_ENTER = ('while [ "$1" != -- ]; do echo $$ > "$1" || { echo "gradcheck: cannot enter the job cgroup $1" >&2; '
          'exit 126; }; shift; done; shift; exec "$@"')


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and ``""`` for the v2 (unified) hierarchy."""
    paths: dict[str, str] = {}
    for line in read_file(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _mounts() -> dict[str, Path]:
    """Mount point per v1 controller, and ``""`` for the cgroup2 mount."""
    mounts: dict[str, Path] = {}
    for line in read_file(Path("/proc/self/mountinfo")).splitlines():
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
        pids = {int(p) for f in procs_files for p in read_file(f).split() if p.isdigit()}
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
        try:
            for controller in V1_CONTROLLERS:
                path = parents[controller] / name
                if path not in self.dirs.values():  # co-mounted controllers (cpu,cpuacct) share a directory
                    _make_dir(path)
                self.dirs[controller] = path
            self._set(limits)
        except OSError:
            self.remove()  # no half-made group left behind
            raise

    def _set(self, limits: JobLimits) -> None:
        memory = self.dirs["memory"]
        write_file(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # no swap beyond the limit either
            write_file(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        write_file(self.dirs["pids"] / "pids.max", str(limits.processes))
        write_file(self.dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        write_file(self.dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu_cores * CPU_PERIOD_US))))

    def _procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in dict.fromkeys(self.dirs.values())]

    def enter_argv(self) -> list[str]:
        return ["/bin/sh", "-c", _ENTER, "gradcheck-enter", *map(str, self._procs_files()), "--"]

    def memory_peak(self) -> int:
        return read_int(self.dirs["memory"] / "memory.max_usage_in_bytes")

    def memory_kills(self) -> int:
        return read_keyed(self.dirs["memory"] / "memory.oom_control").get("oom_kill", 0)

    def refused_forks(self) -> int:
        return read_keyed(self.dirs["pids"] / "pids.events").get("max", 0)

    def cpu_seconds(self) -> float:
        return read_int(self.dirs["cpuacct"] / "cpuacct.usage") / 1e9

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
        self.peak_seen = 0
        _make_dir(self.path)
        try:
            self._set(limits)
        except OSError:
            self.remove()  # no half-made group left behind
            raise

    def _set(self, limits: JobLimits) -> None:
        write_file(self.path / "memory.max", str(limits.memory_bytes))
        for optional, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if (self.path / optional).exists():
                write_file(self.path / optional, value)
        write_file(self.path / "pids.max", str(limits.processes))
        write_file(self.path / "cpu.max", f"{max(1000, int(limits.cpu_cores * CPU_PERIOD_US))} {CPU_PERIOD_US}")

    def enter_argv(self) -> list[str]:
        return ["/bin/sh", "-c", _ENTER, "gradcheck-enter", str(self.path / "cgroup.procs"), "--"]

    def memory_peak(self) -> int:
        current = read_int(self.path / "memory.peak") or read_int(self.path / "memory.current")
        self.peak_seen = max(self.peak_seen, current)
        return self.peak_seen

    def memory_kills(self) -> int:
        return read_keyed(self.path / "memory.events").get("oom_kill", 0)

    def refused_forks(self) -> int:
        return read_keyed(self.path / "pids.events").get("max", 0)

    def cpu_seconds(self) -> float:
        return read_keyed(self.path / "cpu.stat").get("usage_usec", 0) / 1e6

    def check(self) -> Breach | None:
        self.memory_peak()  # without memory.peak (kernels before 5.19) the peak is the largest figure sampled
        return super().check()

    def kill(self) -> None:
        if (self.path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                write_file(self.path / "cgroup.kill", "1")
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
    if not wanted <= set(read_file(base / "cgroup.controllers").split()):
        raise OSError(f"the worker's cgroup {base} lacks the {', '.join(sorted(wanted))} controllers "
                      "(the container's cgroup is not delegated)")
    if base != mount and not wanted <= set(read_file(base / "cgroup.subtree_control").split()):
        leaf = base / V2_SERVICE_LEAF
        _make_dir(leaf)
        for pid in read_file(base / "cgroup.procs").split():
            with contextlib.suppress(OSError):  # a process that exited meanwhile
                write_file(leaf / "cgroup.procs", pid)
        write_file(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))
    parent = base / PARENT
    _make_dir(parent)
    if base == mount and not wanted <= set(read_file(base / "cgroup.subtree_control").split()):
        write_file(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))
    if not wanted <= set(read_file(parent / "cgroup.subtree_control").split()):
        write_file(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))
    _weigh(parent / "cpu.weight", 100, 10_000)
    return parent


def _weigh(path: Path, per_cpu: int, most: int) -> None:
    """Give the parent of all jobs the scheduling weight of one busy process per CPU (default: one process), so
    checks together are not starved by the machine's other processes; each job is still held to its quota."""
    with contextlib.suppress(OSError):
        write_file(path, str(min(most, per_cpu * len(os.sched_getaffinity(0)))))


def _v1_jobs_parents(mounts: Mapping[str, Path], own: Mapping[str, str]) -> dict[str, Path]:
    missing = [c for c in V1_CONTROLLERS if c not in mounts or c not in own]
    if missing:
        raise OSError(f"no cgroup v1 hierarchy for {', '.join(missing)}")
    parents = {c: _under(mounts[c], own[c]) / PARENT for c in V1_CONTROLLERS}
    for path in dict.fromkeys(parents.values()):
        _make_dir(path)
    _weigh(parents["cpu"] / "cpu.shares", 1024, 262_144)
    return parents


def _parents(mechanism: str) -> Path | dict[str, Path]:
    mounts, own = _mounts(), _own_cgroups()
    if mechanism == "cgroup-v2":
        if "" not in mounts or "" not in own:
            raise OSError("no cgroup2 hierarchy is mounted")
        return _v2_jobs_parent(mounts[""], own[""])
    return _v1_jobs_parents(mounts, own)


def open_cgroup(mechanism: str, name: str, limits: JobLimits) -> JobGroup:
    parents = _parents(mechanism)
    if isinstance(parents, Path):
        return CgroupV2Group(limits, name, parents)
    return CgroupV1Group(limits, name, parents)
