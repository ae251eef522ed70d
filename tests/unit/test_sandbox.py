"""The sandbox's command line, its self-test, the refusal policy and the naming of each containment."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from gradcheck_service.definitions import DefinitionError
from gradcheck_service.service import config as service_config
from gradcheck_service.service.jobs import sandbox
from gradcheck_service.service.jobs.containment import classify_exception, classify_exit
from gradcheck_service.service.jobs.execute import model_file_launcher
from gradcheck_service.service.jobs.launcher import SandboxedLauncher
from gradcheck_service.service.jobs.runner import execute
from tests.service_support import ROOT, TINY_SPEC

FULL = sandbox.Isolation(bubblewrap=True, network_namespace=True, pid_namespace=True, readonly_filesystem=True,
                         unprivileged_user=True, rlimits=True)
BARE = sandbox.Isolation(bubblewrap=False, network_namespace=False, pid_namespace=False, readonly_filesystem=False,
                         unprivileged_user=False, rlimits=True, notes=["bubblewrap (bwrap) is not installed"])
LIMITS = sandbox.Limits(address_space_bytes=3 * 2**30, cpu_seconds=5, processes=64, file_size_bytes=2**20,
                        open_files=100)


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_wrap_layers_bwrap_setpriv_prlimit(tmp_path: Path) -> None:
    argv = sandbox.wrap(["python", "-c", "pass"], tmp_path, LIMITS, FULL, uid=1_234_567)
    assert argv[0] == "bwrap" and argv[-3:] == ["python", "-c", "pass"]
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert _pairs(argv, "--bind") == [str(tmp_path)]  # the only writable place
    readonly = _pairs(argv, "--ro-bind")
    assert str(ROOT / "gradcheck_service") in readonly and str(ROOT) not in readonly  # not the checkout's .git
    setpriv = argv.index("setpriv")
    assert "--reuid=1234567" in argv[setpriv:] and "--bounding-set=-all" in argv[setpriv:]
    prlimit = argv[argv.index("prlimit"):]
    assert {f"--as={3 * 2**30}", "--cpu=5:10", "--nproc=64", f"--fsize={2**20}", "--nofile=100"} <= set(prlimit)


def test_wrap_without_bubblewrap_keeps_limits_and_never_switches_user(tmp_path: Path) -> None:
    argv = sandbox.wrap(["python"], tmp_path, LIMITS, BARE)
    assert argv[0] == "prlimit" and "bwrap" not in argv and "setpriv" not in argv


def test_limits_come_from_the_settings() -> None:
    settings = service_config.load({"GRADCHECK_SANDBOX_CPU_S": "7", "GRADCHECK_SANDBOX_PROCESSES": "9"})
    limits = sandbox.Limits.from_config(settings)
    assert (limits.cpu_seconds, limits.processes) == (7, 9)
    assert limits.address_space_bytes == service_config.DEFAULTS["SANDBOX_ADDRESS_SPACE_BYTES"]


def test_self_test_finds_every_feature_here(bubblewrap: None) -> None:
    isolation = sandbox.self_test()
    assert isolation.network_isolated and isolation.pid_namespace and isolation.readonly_filesystem, isolation
    assert isolation.rlimits and isolation.unprivileged_user == (os.geteuid() == 0), isolation


def test_self_test_probe_tells_a_bare_run_from_the_sandbox(bubblewrap: None) -> None:
    bare, error = sandbox._probe(sandbox.Isolation(False, False, False, False, False, True))
    assert not error and bare == {"network": False, "pid": False, "readonly": False, "user": os.geteuid() != 0,
                                  "rlimits": True}


def test_refusal_where_the_network_cannot_be_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "self_test", lambda: BARE)
    settings = service_config.load({})
    refused = model_file_launcher(settings)
    assert isinstance(refused, str) and "refused" in refused and "bubblewrap (bwrap) is not installed" in refused
    allowed = model_file_launcher(service_config.load({"GRADCHECK_ALLOW_UNSANDBOXED_PYTHON": "1"}))
    assert isinstance(allowed, SandboxedLauncher)


def test_sandbox_check_command_reports_and_exits_by_policy(bubblewrap: None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADCHECK_")}
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "gradcheck_service.cli",
                           "sandbox-check", "--json"], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["network_isolated"] and answer["python_model_files"] == "run"
    assert answer["limits"]["processes"] == service_config.DEFAULTS["SANDBOX_PROCESSES"]
    assert answer["job_limits"] in ("cgroup-v2", "cgroup-v1", "watchdog")
    assert answer["limits"]["memory_bytes"] >= 2**28 and answer["limits"]["cpu_cores"] >= 0.25


def test_job_wide_defaults_share_the_machine_between_concurrent_checks() -> None:
    one = sandbox.Limits.from_config(service_config.load({}))
    four = sandbox.Limits.from_config(service_config.load({"GRADCHECK_WORKER_CONCURRENCY": "4"}))
    # Four hostile checks at once fit in three quarters of the memory and leave the worker half a core.
    assert 4 * four.memory_bytes <= 0.75 * sandbox._machine_memory() and four.memory_bytes < one.memory_bytes
    assert 4 * four.cpu_cores <= max(1.0, sandbox._machine_cpus() - 0.5) and four.cpu_cores < one.cpu_cores
    set_here = sandbox.Limits.from_config(service_config.load({"GRADCHECK_SANDBOX_MEMORY_BYTES": str(2**31),
                                                               "GRADCHECK_SANDBOX_CPU_CORES": "1.5"}))
    assert (set_here.memory_bytes, set_here.cpu_cores) == (2**31, 1.5)


def test_sandboxed_command_is_cut_off(tmp_path: Path, bubblewrap: None) -> None:
    """A real run through the chain: no network, read-only outside scratch, another user, the limits set."""
    script = ("id -u; ulimit -u; (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && echo net-open; "
              "touch /usr/x 2>/dev/null && echo usr-written; touch ok && echo scratch-written; ls /proc | grep -c '^[0-9]'")
    sandbox.prepare_scratch(tmp_path, FULL)
    done = subprocess.run(sandbox.wrap(["bash", "-c", script], tmp_path, LIMITS, sandbox.self_test()),
                          capture_output=True, text=True, timeout=30, cwd=tmp_path, env={"PATH": os.defpath})
    lines = done.stdout.split()
    assert done.returncode == 0, done.stderr
    assert lines[0] != "0" and lines[1] == "64" and "net-open" not in lines and "usr-written" not in lines
    assert "scratch-written" in lines and int(lines[-1]) <= 4  # bwrap init, bash, ls, grep: nothing of the host


def test_exceptions_are_named_by_their_containment(tmp_path: Path) -> None:
    limits = {"address_space_bytes": 3 * 2**30, "processes": 64, "file_size_bytes": 2**20, "open_files": 100}

    def code(exc: BaseException) -> str | None:
        found = classify_exception(exc, tmp_path, limits)
        return found[0] if found else None

    assert code(MemoryError()) == "memory_limit"
    assert code(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried")) == "memory_limit"
    assert code(BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")) == "process_limit"
    assert code(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) == "network_blocked"
    assert code(OSError(errno.EFBIG, "File too large")) == "file_size_limit"
    assert code(PermissionError(errno.EACCES, "denied", "/proc/1/environ")) == "filesystem_blocked"
    assert code(OSError(errno.EROFS, "read-only", "/usr/x")) == "filesystem_blocked"
    assert code(FileNotFoundError(errno.ENOENT, "missing", str(tmp_path / "mine.txt"))) is None  # its own scratch
    assert code(ValueError("the model's own bug")) is None
    try:  # the loader re-raises a model's error as a DefinitionError "from None": the original is its context
        try:
            raise MemoryError
        except MemoryError:
            raise DefinitionError("model.py: build() raised MemoryError") from None
    except DefinitionError as wrapped:
        assert code(wrapped) == "memory_limit"
    message = classify_exception(MemoryError(), tmp_path, limits)
    assert message is not None and "3 GiB" in message[1]


def test_exits_are_named_by_their_signal() -> None:
    assert classify_exit(128 + signal.SIGXCPU, True, "", {"cpu_seconds": 5}) == (
        "cpu_time_limit", "CPU time limit: the check used its 5 CPU seconds and was stopped (SIGXCPU)")
    assert classify_exit(-signal.SIGXCPU, False, "", {})[0] == "cpu_time_limit"  # type: ignore[index]
    assert classify_exit(128 + signal.SIGXCPU, False, "", {}) is None  # a plain exit code, not bubblewrap's
    assert classify_exit(1, True, "terminate called after throwing an instance of 'std::bad_alloc'", {})[0] == (  # type: ignore[index]
        "memory_limit")
    assert classify_exit(1, True, "ValueError: nope", {}) is None


def test_spec_caps_hold_on_the_worker_path(tmp_path: Path) -> None:
    """The child re-validates a spec with the same caps as the API, so a spec reaching a worker some other way
    (an older API, a hand-made message) is still refused before anything is allocated."""
    huge = {**TINY_SPEC, "input": {"shape": [100_000, 1000], "dtype": "float64"}}
    (tmp_path / "model.json").write_text(json.dumps(huge))
    (tmp_path / "job.json").write_text(json.dumps({"definition": "model.json", "options": {}}))
    result = execute(tmp_path)
    assert result.error is not None and result.error.code == "invalid_definition"
    assert "over the cap" in " ".join(p.message for p in result.error.problems)


def test_without_cgroups_the_watchdog_ends_a_fork_bomb_that_ignores_refusals(tmp_path: Path,
                                                                            bubblewrap: None) -> None:
    """The fallback through the real launcher: the per-user process limit refuses the forks, the watchdog sees the
    job held at its limit and ends it as process_limit, leaving nothing behind."""
    import dataclasses
    import time

    bomb = ROOT / "tests" / "fixtures" / "hostile" / "job_wide" / "fork_bomb_ignoring_refusals.py"
    (tmp_path / "model.py").write_text(bomb.read_text())
    (tmp_path / "job.json").write_text(json.dumps({"definition": "model.py", "options": {}, "name": "bomb"}))
    isolation = dataclasses.replace(sandbox.self_test(), job_limits="watchdog")
    launcher = SandboxedLauncher(dataclasses.replace(LIMITS, cpu_seconds=60, address_space_bytes=8 * 2**30),
                                 isolation)
    started = time.monotonic()
    outcome = launcher.run(tmp_path, 60, lambda _stage, _fraction: True, heartbeat_s=1, max_bytes=2**20)
    assert outcome.error_code == "process_limit", (outcome.error, outcome.stderr_tail)
    assert "more than 64 processes" in (outcome.error or "") and "held at the limit" in (outcome.error or "")
    assert time.monotonic() - started < 30
    marker = str(tmp_path).encode()
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and marker in _cmdline(p)]
    assert left == []


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:
        return b""
