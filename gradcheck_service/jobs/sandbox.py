"""The sandbox a Python model file runs in: namespaces, a whitelisted read-only filesystem, an unprivileged user
and resource limits, all applied by launcher programs (bubblewrap, setpriv, prlimit) rather than by code that
runs between fork and exec in a threaded worker.

Layers, outermost first::

    bwrap     new network, PID, IPC and UTS namespaces; a fresh /proc; an empty root with only the system
              directories, the Python installation and the package bound read-only, plus the job's scratch
              directory read-write; dies with its parent; its own session
    setpriv   when started as root: become ``nobody`` with no capabilities, so file permissions and the
              per-user process limit apply
    prlimit   address space, CPU seconds, processes, file size, open files

The network namespace has only a loopback interface with nothing listening, so there is no route to the
database, the broker or the API. The environment is already scrubbed by the launcher; with a PID namespace
``/proc/1/environ`` is bubblewrap's own (scrubbed) environment.

:func:`self_test` reports what this machine supports. Where the network cannot be isolated, Python model files
are refused unless the operator sets ``GRADCHECK_ALLOW_UNSANDBOXED_PYTHON=1``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

NOBODY = 65534
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one check child (bytes and seconds)."""

    address_space_bytes: int = 8 * 2**30
    cpu_seconds: int = 900
    processes: int = 256
    file_size_bytes: int = 256 * 2**20
    open_files: int = 512


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

    @property
    def network_isolated(self) -> bool:
        return self.bubblewrap and self.network_namespace

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"network_isolated": self.network_isolated}


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def readonly_paths() -> list[str]:
    """What the child may read: system directories, the Python installation (base and venv) and the package."""
    package_root = str(Path(__file__).resolve().parents[2])
    candidates = [*SYSTEM_DIRS, sys.base_prefix, sys.prefix, package_root]
    for entry in sys.path:  # site-packages outside the prefixes (e.g. a user install)
        if entry and os.path.isdir(entry) and not entry.startswith(tuple(candidates)):
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
    return ["prlimit", f"--as={limits.address_space_bytes}", f"--cpu={limits.cpu_seconds}",
            f"--nproc={limits.processes}", f"--fsize={limits.file_size_bytes}", f"--nofile={limits.open_files}", "--"]


def wrap(argv: list[str], scratch: Path, limits: Limits, isolation: Isolation) -> list[str]:
    """The command line that runs ``argv`` inside the sandbox (as much of it as this machine supports)."""
    prefix: list[str] = []
    drop = isolation.unprivileged_user and isolation.bubblewrap  # outside bwrap nobody cannot reach the interpreter
    if isolation.bubblewrap:
        prefix += bwrap_args(scratch, drop)
    if drop:
        prefix += ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
                   "--bounding-set=-all", "--"]
    if isolation.rlimits:
        prefix += prlimit_args(limits)
    return prefix + argv


def prepare_scratch(scratch: Path, isolation: Isolation) -> None:
    """Make the scratch directory the only place the (possibly unprivileged) child can write."""
    if isolation.unprivileged_user and isolation.bubblewrap:
        for path in [scratch, *scratch.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    scratch.chmod(0o700)


@functools.cache
def self_test() -> Isolation:
    """Try each isolation feature once with a trivial command; cached for the life of the process."""
    notes: list[str] = []
    has_bwrap = shutil.which("bwrap") is not None
    has_prlimit = shutil.which("prlimit") is not None
    can_drop = os.geteuid() == 0 and shutil.which("setpriv") is not None
    namespaces = False
    if has_bwrap:
        probe = Path(tempfile.mkdtemp(prefix="gradcheck-selftest-"))
        try:
            proc = subprocess.run([*bwrap_args(probe, can_drop), "sh", "-c", "test ! -e /sys/class/net/eth0"],
                                  capture_output=True, timeout=20, env={"PATH": os.defpath})
            namespaces = proc.returncode == 0
            if not namespaces:
                notes.append(f"bubblewrap failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            notes.append(f"bubblewrap failed: {exc}")
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    else:
        notes.append("bubblewrap (bwrap) is not installed: no network, PID or filesystem isolation")
    if not has_prlimit:
        notes.append("prlimit is not installed: no resource limits beyond the wall-time watchdog")
    if os.geteuid() == 0 and not can_drop:
        notes.append("running as root without setpriv: the check would run as root")
    return Isolation(
        bubblewrap=has_bwrap and namespaces,
        network_namespace=namespaces,
        pid_namespace=namespaces,
        readonly_filesystem=namespaces,
        unprivileged_user=can_drop,
        rlimits=has_prlimit,
        notes=notes,
    )


def unsandboxed_python_allowed() -> bool:
    return os.environ.get("GRADCHECK_ALLOW_UNSANDBOXED_PYTHON", "") in {"1", "true", "yes"}
