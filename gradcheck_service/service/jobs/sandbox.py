"""The sandbox a Python model file runs in: namespaces, a whitelisted read-only filesystem, an unprivileged user
and resource limits, all applied by launcher programs (bubblewrap, setpriv, prlimit) rather than by code that
runs between fork and exec in a threaded worker.

Layers, outermost first::

    bwrap     new network, PID, IPC and UTS namespaces; a fresh /proc; an empty root with only the system
              directories, the Python installation and the package bound read-only, plus the job's scratch
              directory read-write; dies with its parent; its own session
    setpriv   when started as root: become an unprivileged user with no capabilities, so file permissions and
              the per-user process limit apply. The user id is one of a reserved range, picked per worker
              process (:func:`sandbox_uid`), so a fork bomb in one check does not use up the process limit of
              checks running beside it
    prlimit   address space, CPU seconds (a soft limit sending SIGXCPU, then SIGKILL 5 s later), processes
              (threads count), file size, open files

Around all of them the launcher starts the job in a :class:`~.jobgroup.JobGroup` (a cgroup where the worker may
create one, else a watchdog): memory, processes and CPU of the job's processes together.

The network namespace has only a loopback interface with nothing listening, so there is no route to the
database, the broker or the API. The environment is already scrubbed by the launcher; with a PID namespace
``/proc/1/environ`` is bubblewrap's own (scrubbed) environment.

:func:`self_test` reports what this machine supports. Where the network cannot be isolated, Python model files
are refused unless the operator sets ``GRADCHECK_ALLOW_UNSANDBOXED_PYTHON=1``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ... import PACKAGE_DIR
from . import jobgroup
from .scratch import folder as scratch_folder

NOBODY = 65534  # kept for callers that want the conventional unprivileged user
UID_BASE = 1_200_000  # reserved range of user ids for check children; no account owns them
UID_SPAN = 100_000
CPU_GRACE_S = 5  # seconds between SIGXCPU (soft CPU limit) and SIGKILL (hard)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one check (bytes and seconds). ``processes`` and ``cpu_seconds`` hold per process
    (prlimit) and for the job's processes together; ``memory_bytes`` and ``cpu_cores`` only for the job together
    (see :mod:`.jobgroup`)."""

    address_space_bytes: int = 8 * 2**30
    cpu_seconds: int = 900
    processes: int = 256
    file_size_bytes: int = 256 * 2**20
    open_files: int = 512
    memory_bytes: int = 4 * 2**30
    cpu_cores: float = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Limits:
        """The limits set by the ``GRADCHECK_SANDBOX_*`` settings (see :data:`gradcheck_service.service.config.DEFAULTS`);
        job memory and CPU share left unset are sized for ``GRADCHECK_WORKER_CONCURRENCY`` jobs at once."""
        jobs = max(1, int(config.get("WORKER_CONCURRENCY") or 1))
        memory, cores = config.get("SANDBOX_MEMORY_BYTES"), config.get("SANDBOX_CPU_CORES")
        return cls(
            address_space_bytes=int(config["SANDBOX_ADDRESS_SPACE_BYTES"]),
            cpu_seconds=int(config["SANDBOX_CPU_S"]),
            processes=int(config["SANDBOX_PROCESSES"]),
            file_size_bytes=int(config["SANDBOX_FILE_SIZE_BYTES"]),
            open_files=int(config["SANDBOX_OPEN_FILES"]),
            memory_bytes=int(memory) if memory else default_job_memory(jobs),
            cpu_cores=float(cores) if cores else default_cpu_cores(jobs),
        )

    def job(self) -> jobgroup.JobLimits:
        return jobgroup.JobLimits(memory_bytes=self.memory_bytes, processes=self.processes,
                                  cpu_cores=self.cpu_cores, cpu_seconds=self.cpu_seconds)


def _machine_memory() -> int:
    """Bytes of memory this worker may use: the machine's, or its container's limit where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(path).read_text()))
    return total


def default_job_memory(jobs: int) -> int:
    """Three quarters of the worker's memory shared by ``jobs`` checks at once (the rest for the worker, the
    database and the page cache), in whole 256 MiB."""
    share = _machine_memory() * 3 // 4 // jobs
    return max(2**28, share // 2**28 * 2**28)


def _machine_cpus() -> float:
    """CPUs this worker may use: its affinity, or its container's CPU quota where that is lower."""
    cpus = float(len(os.sched_getaffinity(0)))
    quotas = [("/sys/fs/cgroup/cpu.max", None), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "cpu.cfs_period_us")]
    for path, period_file in quotas:
        with contextlib.suppress(OSError, ValueError, IndexError):
            words = Path(path).read_text().split()
            period = words[1] if period_file is None else (Path(path).parent / period_file).read_text()
            if words[0] not in ("max", "-1"):
                cpus = min(cpus, int(words[0]) / int(period))
    return cpus


def default_cpu_cores(jobs: int) -> float:
    """The worker's CPUs less half a core for the worker itself, shared by ``jobs`` checks at once."""
    return max(0.25, int((_machine_cpus() - 0.5) / jobs * 100) / 100)  # hundredths, rounded down


@dataclass(frozen=True)
class Isolation:
    """What the sandbox can enforce on this machine (the startup self-test's answer)."""

    bubblewrap: bool
    network_namespace: bool
    pid_namespace: bool
    readonly_filesystem: bool
    unprivileged_user: bool
    rlimits: bool
    notes: list[str] = field(default_factory=list)
    job_limits: str = "watchdog"  # how a job's processes are limited together: cgroup-v2, cgroup-v1 or watchdog

    @property
    def network_isolated(self) -> bool:
        return self.bubblewrap and self.network_namespace

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"network_isolated": self.network_isolated}


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def readonly_paths() -> list[str]:
    """What the child may read: system directories, the Python installation (base and venv) and the package.

    Only the package directory itself is bound, not the checkout around it (an editable install would otherwise
    show its ``.git``, configuration files and anything else next to it)."""
    package_dir = str(PACKAGE_DIR)
    candidates = [*SYSTEM_DIRS, sys.base_prefix, sys.prefix, package_dir]
    for entry in sys.path:  # site-packages outside the prefixes; never the worker's cwd or its PYTHONPATH
        if os.path.basename(entry) in ("site-packages", "dist-packages") and os.path.isdir(entry):
            candidates.append(entry)
    seen: list[str] = []
    for path in candidates:
        if os.path.islink(path) or not os.path.exists(path):
            continue  # merged-/usr symlinks such as /bin -> usr/bin are recreated by symlink_args()
        if not any(path == s or path.startswith(s.rstrip("/") + "/") for s in seen):
            seen.append(path)
    return seen


def symlink_args() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
    return args


def sandbox_uid() -> int:
    """The unprivileged user id of this worker process's check children (one check at a time per process).

    Distinct per worker process (modulo a rare collision of process ids) because ``RLIMIT_NPROC`` counts every
    process of a user id on the machine: under one shared id a fork bomb would starve the checks beside it.
    """
    return UID_BASE + os.getpid() % UID_SPAN


def bwrap_args(scratch: Path, drop_to_nobody: bool) -> list[str]:
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--hostname", "sandbox", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if drop_to_nobody:
        args += ["--cap-add", "CAP_SETUID,CAP_SETGID"]  # only so setpriv can switch user; it drops all after
    made: set[str] = {"/tmp"}
    binds = [(p, "--ro-bind") for p in readonly_paths()] + [(str(scratch), "--bind")]
    for path, flag in binds:
        for parent in _ancestors(path):
            if parent not in made:  # bwrap would create these 0700, hiding the bind from an unprivileged user
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += [flag, path, path]
        made.add(path)
    return [*args, *symlink_args(), "--chdir", str(scratch), "--"]


def prlimit_args(limits: Limits) -> list[str]:
    return ["prlimit", f"--as={limits.address_space_bytes}",
            f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + CPU_GRACE_S}", f"--nproc={limits.processes}",
            f"--fsize={limits.file_size_bytes}", f"--nofile={limits.open_files}", "--"]


def drops_privileges(isolation: Isolation) -> bool:
    """Whether :func:`wrap` switches to the unprivileged user (only inside bwrap: outside it that user could not
    be kept from the rest of the filesystem, and might not reach the interpreter)."""
    return isolation.unprivileged_user and isolation.bubblewrap


def wrap(argv: list[str], scratch: Path, limits: Limits, isolation: Isolation, uid: int | None = None) -> list[str]:
    """The command line that runs ``argv`` inside the sandbox (as much of it as this machine supports).

    ``uid`` is the unprivileged user to become (default: :func:`sandbox_uid`); it must match
    :func:`prepare_scratch`'s.
    """
    prefix: list[str] = []
    drop = drops_privileges(isolation)
    if isolation.bubblewrap:
        prefix += bwrap_args(scratch, drop)
    if drop:
        user = sandbox_uid() if uid is None else uid
        prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all",
                   "--bounding-set=-all", "--"]
    if isolation.rlimits:
        prefix += prlimit_args(limits)
    return prefix + argv


def prepare_scratch(scratch: Path, isolation: Isolation, uid: int | None = None) -> None:
    """Make the scratch directory the only place the (possibly unprivileged) child can write."""
    if drops_privileges(isolation):
        user = sandbox_uid() if uid is None else uid
        for path in [scratch, *scratch.rglob("*")]:
            os.chown(path, user, user)
    scratch.chmod(0o700)


# Run through the whole chain by :func:`self_test`; prints one ``name=0|1`` word per feature. A namespace is our
# own when its identity (the inode behind /proc/self/ns/*) differs from the worker's, given as $2 and $3.
_PROBE = """
n=0; p=0; r=0; u=0; l=0
[ "$(readlink /proc/self/ns/net)" != "$2" ] && n=1
[ "$(readlink /proc/self/ns/pid)" != "$3" ] && p=1
[ ! -w /usr ] && touch "$1/written" && r=1
[ "$(id -u)" != 0 ] && u=1
[ "$(ulimit -n)" = 123 ] && l=1
echo "network=$n pid=$p readonly=$r user=$u rlimits=$l"
"""


def _probe(isolation: Isolation) -> tuple[dict[str, bool], str]:
    """Run the probe inside ``wrap`` with the features ``isolation`` claims; the features seen, or the error."""
    try:
        with scratch_folder("selftest") as scratch:
            prepare_scratch(scratch, isolation)
            host = [os.readlink(f"/proc/self/ns/{kind}") for kind in ("net", "pid")]
            argv = wrap(["sh", "-c", _PROBE, "probe", str(scratch), *host], scratch, Limits(open_files=123),
                        isolation)
            proc = subprocess.run(argv, capture_output=True, timeout=30, env={"PATH": os.defpath}, cwd=scratch)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, f"{type(exc).__name__}: {exc}"
    words = proc.stdout.decode(errors="replace").split()
    seen = {k: v == "1" for k, _, v in (w.partition("=") for w in words)}
    return seen, "" if proc.returncode == 0 and seen else proc.stderr.decode(errors="replace").strip()[:300]


@functools.cache
def self_test() -> Isolation:
    """Run a probe through the whole sandbox chain and report what it could enforce; cached for the life of the
    process (the worker runs it once at start, before its pool forks)."""
    notes: list[str] = []
    has_bwrap = shutil.which("bwrap") is not None
    has_prlimit = shutil.which("prlimit") is not None
    can_drop = os.geteuid() == 0 and shutil.which("setpriv") is not None
    if not has_bwrap:
        notes.append("bubblewrap (bwrap) is not installed: no network, PID or filesystem isolation")
    if not has_prlimit:
        notes.append("prlimit is not installed: no resource limits beyond the wall-time watchdog")
    if os.geteuid() == 0 and not can_drop:
        notes.append("running as root without setpriv: the check would run as root")
    claimed = Isolation(bubblewrap=has_bwrap, network_namespace=has_bwrap, pid_namespace=has_bwrap,
                        readonly_filesystem=has_bwrap, unprivileged_user=can_drop, rlimits=has_prlimit)
    seen, error = _probe(claimed)
    if error and has_bwrap:
        notes.append(f"bubblewrap failed: {error}")
        claimed = Isolation(bubblewrap=False, network_namespace=False, pid_namespace=False,
                            readonly_filesystem=False, unprivileged_user=can_drop, rlimits=has_prlimit)
        seen, error = _probe(claimed)
    if error:
        notes.append(f"the sandbox probe failed: {error}")
    bubblewrap = claimed.bubblewrap and not error
    job_limits, job_notes = jobgroup.detect()
    notes += job_notes if job_limits == "watchdog" else []
    return Isolation(
        bubblewrap=bubblewrap,
        network_namespace=bubblewrap and seen.get("network", False),
        pid_namespace=bubblewrap and seen.get("pid", False),
        readonly_filesystem=bubblewrap and seen.get("readonly", False),
        unprivileged_user=drops_privileges(claimed) and seen.get("user", False),
        rlimits=has_prlimit and seen.get("rlimits", False),
        notes=notes,
        job_limits=job_limits,
    )


def unsandboxed_python_allowed(config: Mapping[str, Any]) -> bool:
    """The operator's explicit opt-in (``GRADCHECK_ALLOW_UNSANDBOXED_PYTHON=1``) to run model files without a
    network namespace."""
    return str(config.get("ALLOW_UNSANDBOXED_PYTHON", "")).lower() in {"1", "true", "yes"}


def refusal(isolation: Isolation) -> str:
    """Why a Python model file cannot be run here (the ``sandbox_unavailable`` error's message)."""
    reasons = "; ".join(isolation.notes) or "the network namespace could not be created"
    return ("this worker cannot isolate a model file from the network, so Python model files are refused "
            f"({reasons}); JSON specs still run")
