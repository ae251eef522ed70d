"""Job-wide limits on real processes: the mechanism this machine supports (a cgroup where the tests run as root
with cgroups to create, else the watchdog) and the watchdog itself, which works everywhere."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradcheck_service.service.jobs import jobgroup

DETECTED, NOTES = jobgroup.detect()
MECHANISMS = sorted({DETECTED, "watchdog"})


@pytest.fixture
def opened(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[jobgroup.JobGroup]]]:
    groups: list[jobgroup.JobGroup] = []
    yield request.param, groups
    for group in groups:
        group.remove()


def _start(group: jobgroup.JobGroup, argv: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*group.enter_argv(), *argv], start_new_session=True)
    group.started(proc.pid)
    return proc


def _breach_within(group: jobgroup.JobGroup, seconds: float) -> jobgroup.Breach | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (breach := group.check()) is not None:
            return breach
        time.sleep(jobgroup.POLL_S)
    return None


def _until_children(pid: int, count: int, timeout: float = 20.0) -> None:
    """Wait until the process has ``count`` children (it joined the job and started them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if len(children) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not start {count} children within {timeout} s")


def _name() -> str:
    return f"gradcheck-unit-{time.monotonic_ns()}"


def test_self_test_names_its_mechanism_and_why_not_a_stronger_one() -> None:
    assert DETECTED in ("cgroup-v2", "cgroup-v1", "watchdog")
    if DETECTED == "watchdog":
        assert any("fall back to a watchdog" in note for note in NOTES), NOTES


@pytest.mark.parametrize("opened", MECHANISMS, indirect=True)
def test_a_fork_loop_that_ignores_refusals_is_a_process_limit(opened: tuple[str, list[jobgroup.JobGroup]]) -> None:
    mechanism, groups = opened
    limits = jobgroup.JobLimits(memory_bytes=2**30, processes=12, cpu_cores=1, cpu_seconds=60)
    group = jobgroup.open_group(mechanism, _name(), limits)
    groups.append(group)
    # Each loop starts a sleeper and carries on whether or not the fork worked (paced: as root, the watchdog case
    # has no kernel limit on the count until it ends the job).
    proc = _start(group, ["sh", "-c", "while :; do sleep 30 & sleep 0.02; done 2>/dev/null"])
    breach = _breach_within(group, 10)
    group.remove()
    proc.wait(timeout=10)
    assert breach is not None and breach.code == "process_limit", breach
    assert "more than 12 processes" in breach.message


@pytest.mark.parametrize("opened", MECHANISMS, indirect=True)
def test_memory_of_several_processes_together_is_a_memory_limit(
        opened: tuple[str, list[jobgroup.JobGroup]]) -> None:
    mechanism, groups = opened
    limit = 256 * 2**20
    group = jobgroup.open_group(mechanism, _name(), jobgroup.JobLimits(limit, 64, 1, 60))
    groups.append(group)
    # Four processes of 96 MiB each: every one under the limit, together over it.
    child = "import time; b = b'x' * (96 * 2**20); time.sleep(30)"
    proc = _start(group, ["sh", "-c", f"for i in 1 2 3 4; do {sys.executable} -c \"{child}\" & done; wait"])
    breach = _breach_within(group, 15)
    group.remove()
    proc.wait(timeout=10)
    assert breach is not None and breach.code == "memory_limit", breach
    assert "memory limit of 0.25 GiB" in breach.message, breach.message
    if mechanism.startswith("cgroup"):  # the kernel's limit holds exactly; the watchdog may overshoot by a sample
        assert group.memory_peak() <= limit


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_remove_kills_every_process_of_the_job_and_leaves_no_cgroup(mechanism: str) -> None:
    name = _name()
    group = jobgroup.open_group(mechanism, name, jobgroup.JobLimits(2**30, 16, 1, 60))
    proc = _start(group, ["sh", "-c", "sleep 30 & sleep 30 & wait"])
    _until_children(proc.pid, 2)  # the shell inside the job, both sleeps started: on a busy machine 0.5 s was not
    group.check()  # the watchdog learns the job's processes by sampling
    group.remove()
    assert proc.wait(timeout=10) == -9
    assert [p for p in Path("/sys/fs/cgroup").glob(f"**/{name}")] == []
