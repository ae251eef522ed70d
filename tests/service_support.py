"""Helpers for the service tests: specs, real reports, starting and stopping real service processes."""

from __future__ import annotations

import contextlib
import copy
import gzip
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A tiny model: checks in well under a second.
TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "input": {"shape": [4, 3], "dtype": "float64"},
    "layers": [{"type": "linear", "out_features": 4}, {"type": "tanh"}, {"type": "linear", "out_features": 2}],
    "loss": {"type": "mse"},
}

# A model file whose build() sleeps, so a test can act while the run is in `running`.
SLOW_MODEL = '''
import time
import torch
from torch import nn

def build():
    time.sleep({sleep})
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double(), torch.randn(4, 3, dtype=torch.float64)
'''

# A custom autograd Function whose backward is wrong by a factor of 1.5 (a real bug the check must catch).
BUGGY_MODEL = '''
import torch
from torch import nn

class BadSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3.0 * x

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(BadSquare.apply(self.linear(x)))

def build():
    torch.manual_seed(0)
    return Net().double(), torch.randn(4, 3, dtype=torch.float64)
'''


def tar_gz_bomb(member_bytes: int = 3 * 2**29, name: str = "bomb.py", kind: bytes = tarfile.REGTYPE) -> bytes:
    """A tar.gz holding one member of ``member_bytes`` zero bytes (default 1.5 GiB, in about 1.5 MB) of tar type
    ``kind`` (a type tarfile does not know is skipped over by its size).

    Built without compressing the whole member: a gzip file may be a series of gzip streams, and every 4 MiB of
    zeros is the same ~4 KB stream, repeated.
    """
    header = tarfile.TarInfo(name)
    header.size, header.type = member_bytes, kind
    block = 4 * 2**20
    assert member_bytes % block == 0
    zeros = gzip.compress(bytes(block), 9)
    return gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT)) + zeros * (member_bytes // block) \
        + gzip.compress(bytes(1024))


def tar_gz_directory_bomb(entries: int = 2**20) -> bytes:
    """A tar.gz of ``entries`` directory headers (default a million: 512 MiB of tar in about 5 MB); directories
    hold no bytes and are no files, but each costs reading a header."""
    header = tarfile.TarInfo("d")
    header.type = tarfile.DIRTYPE
    per_stream = 8192
    assert entries % per_stream == 0
    stream = gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT) * per_stream, 9)
    return stream * (entries // per_stream) + gzip.compress(bytes(1024))


def spec(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(TINY_SPEC)
    data.update(changes)
    return data


def real_report(spec_data: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Run the real engine in this (test) process on a spec and return the report's JSON form."""
    from gradcheck_service.checks.engine import check
    from gradcheck_service.definitions.build import build_from_spec

    definition = build_from_spec(spec_data or TINY_SPEC)
    report = check(definition.module, definition.inputs, definition.loss_fn, name=definition.name, **options)
    return report.to_jsonable()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(**settings: Any) -> dict[str, str]:
    """The test process's environment without any GRADCHECK_* setting, plus ``settings`` as GRADCHECK_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADCHECK_")}
    env["PYTHONPATH"] = str(ROOT)
    for key, value in settings.items():
        env[f"GRADCHECK_{key}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a service command (``python -m gradcheck_service.cli ...``) to completion."""
    return subprocess.run([sys.executable, "-m", "gradcheck_service.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


class ServiceProcess:
    """A long-running service process (worker, server) in its own process group, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gradcheck_service.cli", *args], env=env,
                                     cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}) before '{text}':\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"'{text}' not seen within {timeout} s:\n{self.output()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker, its pool and its check children)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in the group
        self.handle.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def service_ready(where: int | str) -> bool:
    """True once the service at ``where`` (a port on 127.0.0.1, or a base URL) answers ``/readyz`` as ready."""
    url = f"http://127.0.0.1:{where}" if isinstance(where, int) else where
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(json.loads(response.read())["status"] == "ready")
    except OSError:
        return False


def wait_until_ready(where: int | str, timeout: float, what: str = "the service to be ready") -> None:
    """Wait (up to ``timeout`` seconds) until the service at ``where`` is ready: its database and queue answer."""
    wait_until(lambda: service_ready(where), timeout, what)


CORRECT_MODEL = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double(), torch.randn(4, 3, dtype=torch.float64)
'''


def prerequisite_missing(message: str, remedy: str) -> NoReturn:
    """Skip the test for a missing prerequisite (a server, a program); with ``CI=true`` fail it, naming the remedy,
    since CI provides every prerequisite and a skip there would hide a test that never ran."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: {remedy})")
    pytest.skip(message)


def require_bubblewrap() -> None:
    if shutil.which("bwrap") is None:
        prerequisite_missing("bubblewrap (bwrap) is not installed: the sandbox cannot be tested",
                             "apt-get install bubblewrap")


def processes_left_behind(run_id: str) -> list[str]:
    """Processes whose command line names the run's job directory (``/tmp/gradcheck-<id[:12]>-...``): bwrap, the
    runner, and anything they forked (a fork inherits its parent's command line)."""
    marker = f"gradcheck-{run_id[:12]}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
                found.append(f"{entry.name}: {shown}")
    return found


def signed_in_opener(url: str, token: str) -> urllib.request.OpenerDirector:
    """A browser-like opener holding a dashboard session (the login form with its CSRF token)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(f"{url}/login", timeout=10) as response:
        page = response.read().decode()
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert match, page[:2000]
    form = urllib.parse.urlencode({"csrf_token": match.group(1), "token": token}).encode()
    with opener.open(f"{url}/login", data=form, timeout=10) as response:
        assert response.status == 200
    return opener


def api_get(url: str, token: str) -> Any:
    """The JSON answer of an authenticated GET."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
