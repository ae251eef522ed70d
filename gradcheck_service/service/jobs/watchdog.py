"""The job-wide limits where the worker may not create a cgroup: it samples the job's process tree.

Every :data:`~.jobgroup.POLL_S` seconds the launcher asks :meth:`WatchdogGroup.check` for the job's figures,
summed over the outer process and all its descendants: memory as proportional set size (pages shared after a fork
counted once), threads, CPU seconds (of exited processes too). Past a limit the watchdog, not the kernel, ends the
job, so a fast allocation can overshoot the memory limit by what it allocates in one interval; the per-process
address-space limit still bounds each process. The CPU share is only a lower scheduling priority. The tree is
complete inside bubblewrap's PID namespace (its first process adopts orphans); without bubblewrap a process that
detaches from its parent leaves the tree, and only the per-user process limit still counts it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psutil

from .jobgroup import Breach, JobGroup, JobLimits

WATCHDOG_NICE = 10


class WatchdogGroup(JobGroup):
    """Where no cgroup may be created: the worker samples the job's process tree (psutil)."""

    mechanism = "watchdog"

    def __init__(self, limits: JobLimits) -> None:
        super().__init__(limits)
        self.root: Any = None
        self.peak = 0
        self.over_memory = False
        self.at_process_limit = 0
        self.cpu_of_exited = 0.0
        self.cpu_by_pid: dict[int, float] = {}

    def enter_argv(self) -> list[str]:
        return ["nice", "-n", str(WATCHDOG_NICE)]  # the only CPU share available without a cgroup

    def started(self, pid: int) -> None:
        super().started(pid)
        with contextlib.suppress(psutil.Error):
            self.root = psutil.Process(pid)

    def _processes(self) -> list[Any]:
        if self.root is None:
            return []
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def check(self) -> Breach | None:
        memory, threads, cpu = 0, 0, {}
        for process in self._processes():
            with contextlib.suppress(psutil.Error), process.oneshot():
                threads += process.num_threads()
                times = process.cpu_times()
                cpu[process.pid] = times.user + times.system
                memory += getattr(process.memory_full_info(), "pss", 0)  # shared pages counted once
        gone = set(self.cpu_by_pid) - set(cpu)
        self.cpu_of_exited += sum(self.cpu_by_pid[pid] for pid in gone)
        self.cpu_by_pid = cpu
        self.peak = max(self.peak, memory)
        self.over_memory = self.over_memory or memory > self.limits.memory_bytes
        # RLIMIT_NPROC refuses forks at the limit; a job sitting there is a job that keeps trying.
        self.at_process_limit = self.at_process_limit + 1 if threads >= self.limits.processes else 0
        return super().check()

    def memory_peak(self) -> int:
        return self.peak

    def memory_kills(self) -> int:
        return int(self.over_memory)

    def refused_forks(self) -> int:
        return self.at_process_limit if self.at_process_limit >= 2 else 0

    def cpu_seconds(self) -> float:
        return self.cpu_of_exited + sum(self.cpu_by_pid.values())

    def kill(self) -> None:
        # Parents before their children: a parent that outlived its children would see them die and could exit
        # on its own (or start new ones) before its own SIGKILL arrives.
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                process.kill()

    def remove(self) -> None:
        self.kill()
