"""`gradcheck-service ci` on repositories laid out as real ones: locally and through a live service.

Each layout (see ``repository_layouts``) keeps its model in repository modules that a check file in a subfolder
imports: a root-level ``model.py``, a ``src/`` package with relative imports, a model split over three modules.
Locally, through the embedded service and through Redis + PostgreSQL with a separate worker, a correct model
passes (exit 0), the seeded backward bug in ``mylib/layers.py`` fails (exit 1) with that module named in the JUnit
file and the summary, and widening a hidden layer on a branch is a memory regression against ``main`` with
``--fail-on regression``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.ml_repository import clean_env
from tests.e2e.repository_layouts import LayoutRepository
from tests.integration.service_fixtures import Service, pg_url, redis_pg_service, redis_target  # noqa: F401
from tests.service_support import ServiceProcess, cli, free_port, service_env, wait_until_ready

pytestmark = pytest.mark.e2e
LAYOUTS = ("root_model", "src_package", "three_modules")


def _case(junit: Path, suite: str, name: str) -> ET.Element:
    root = ET.parse(junit).getroot()
    found = [c for s in root.iter("testsuite") if s.get("name") == suite for c in s.iter("testcase")
             if c.get("name") == name]
    assert len(found) == 1, ET.tostring(root, encoding="unicode")
    return found[0]


def _assert_package_module_named(repo: LayoutRepository, done: Any) -> None:
    """The seeded bug fails the job and both reports name the package module whose backward is wrong."""
    assert done.returncode == 1, done.stdout + done.stderr
    junit = repo.root / "reports" / "gradcheck.xml"
    localization = _case(junit, "net", "localization").find("failure")
    assert localization is not None
    assert localization.get("message") == "faulty module: act (defined in mylib.layers)"
    assert "module act (ScaledTanh, defined in mylib.layers): its own backward is wrong" in (localization.text or "")
    summary = (repo.root / "reports" / "summary.md").read_text()
    assert "| `net` | ❌ failed |" in summary and "`act` (mylib.layers)" in summary
    assert "parameter proj.weight: max abs error" in summary
    assert "head.weight" not in summary  # the layer after the bug is not blamed


def _assert_regression(repo: LayoutRepository, done: Any) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    failure = _case(repo.root / "reports" / "gradcheck.xml", repo.model, "baseline").find("failure")
    assert failure is not None and "activation_bytes grew by" in failure.get("message", "")


def _local_flow(tmp_path: Path, layout: str) -> None:
    repo = LayoutRepository(tmp_path / layout, layout)
    passed = repo.ci("--save-report", "baseline")
    assert passed.returncode == 0, f"{layout}: {passed.stdout}{passed.stderr}"
    assert f"{repo.model}: passed" in passed.stderr

    repo.git("checkout", "-q", "-b", "wider")
    repo.widen()
    repo.commit("widen the hidden layer")
    widened = repo.ci("--baseline", "baseline", "--fail-on", "regression", "--summary", "reports/summary.md")
    _assert_regression(repo, widened)


def _local_broken_flow(tmp_path: Path) -> None:
    repo = LayoutRepository(tmp_path / "broken", "src_package")
    repo.break_backward()
    _assert_package_module_named(repo, repo.ci())


def test_layouts_locally(tmp_path: Path) -> None:
    flows = [lambda layout=layout: _local_flow(tmp_path, layout) for layout in LAYOUTS]
    flows.append(lambda: _local_broken_flow(tmp_path))
    with ThreadPoolExecutor(max_workers=2) as pool:  # two CI jobs at a time
        for future in [pool.submit(flow) for flow in flows]:
            future.result()


PACKAGE_TEST = '''
import torch

from mylib import Net


def test_net_backward(gradcheck):
    torch.manual_seed(0)
    gradcheck(Net().double(), torch.randn(4, 3, dtype=torch.float64))
'''


def test_the_repositorys_own_pytest_suite_imports_its_package(tmp_path: Path) -> None:
    """A test under tests/ imports the src/ package with no conftest or ini setting: the gradcheck configuration's
    root and pythonpath are importable, and a seeded bug fails the test naming the faulty module."""
    repo = LayoutRepository(tmp_path / "repo", "src_package")
    (repo.root / "tests").mkdir()
    (repo.root / "tests" / "test_net.py").write_text(PACKAGE_TEST)

    def pytest_run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                               "tests/test_net.py"], cwd=repo.root, capture_output=True, text=True, timeout=300,
                              env=clean_env())

    passed = pytest_run()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    repo.break_backward()
    failed = pytest_run()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "ScaledTanh, defined in mylib.layers" in failed.stdout


def _token(env: dict[str, str], project: str) -> str:
    made = cli(["token", "create", "--project", project], env)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body.decode()


def _layout_flow(url: str, token: str, tmp_path: Path, layout: str) -> None:
    """A correct model passes on `main` with every file stored; a wider one on a branch is a regression."""
    env = clean_env(GRADCHECK_TOKEN=token)
    repo = LayoutRepository(tmp_path / layout, layout)
    main = repo.ci("--server", url, env=env)
    assert main.returncode == 0, f"{layout}: {main.stdout}{main.stderr}"
    run = _get(f"{url}/api/v1/runs?branch=main&model={repo.model}", token)["runs"][0]
    definition = _get(f"{url}/api/v1/runs/{run['id']}/definition", token)
    files = {f["path"] for f in definition["files"]}
    if layout == "root_model":
        assert definition["entry"] == "gradcheck/tiny_check.py" and files == {"gradcheck/tiny_check.py", "model.py"}
    elif layout == "src_package":
        assert definition["pythonpath"] == ["src", "."]
        assert files == {"checks/net_check.py", "src/mylib/__init__.py", "src/mylib/net.py", "src/mylib/layers.py",
                         "src/mylib/config.py"}
    else:
        assert files == {"checks/network_check.py", "network.py", "blocks.py", "heads.py"}

    repo.git("checkout", "-q", "-b", "wider")
    repo.widen()
    repo.commit("widen the hidden layer")
    _assert_regression(repo, repo.ci("--server", url, "--fail-on", "regression", env=env))


def _broken_and_submitted_flow(url: str, token: str, tmp_path: Path) -> None:
    env = clean_env(GRADCHECK_TOKEN=token)
    repo = LayoutRepository(tmp_path / "broken", "src_package")
    repo.git("checkout", "-q", "-b", "broken")
    repo.break_backward()
    repo.commit("drop a factor in the backward")
    _assert_package_module_named(repo, repo.ci("--server", url, env=env))

    # `submit` sends the same archive from the repository root (its configuration's pythonpath applies).
    script = Path(sys.executable).parent / "gradcheck-service"
    submitted = subprocess.run([str(script), "submit", "checks/net_check.py", "--server", url, "--wait"],
                               cwd=repo.root, env=env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 1, submitted.stdout + submitted.stderr
    assert ": failed (model net_check" in submitted.stdout and "faulty modules: act" in submitted.stdout


def _missing_package_flow(url: str, token: str, tmp_path: Path) -> None:
    """A third-party package the workers lack: the run ends in error naming it, said once."""
    repo = LayoutRepository(tmp_path / "needs-package", "three_modules")
    repo.git("checkout", "-q", "-b", "kernels")
    heads = repo.root / "heads.py"
    heads.write_text("import tiny_attention_kernels  # noqa: F401\n" + heads.read_text())
    missing = repo.ci("--server", url, env=clean_env(GRADCHECK_TOKEN=token))
    assert missing.returncode == 3, missing.stdout + missing.stderr
    assert "[missing_package] the model imports 'tiny_attention_kernels'" in missing.stdout
    assert "heads.py" in missing.stdout and "torch " in missing.stdout
    output = missing.stdout + missing.stderr
    assert output.count("No module named 'tiny_attention_kernels'") == 1  # said once, in the summary
    junit = (repo.root / "reports" / "gradcheck.xml").read_text()
    assert junit.count("No module named 'tiny_attention_kernels'") == 1 and "missing_package" in junit
    workers = _get(f"{url}/api/v1/environment", token)["workers"]
    assert workers and any(p["name"] == "torch" for p in workers[0]["packages"])


def _through_service(url: str, token: str, tmp_path: Path) -> None:
    """Every flow at once, as several CI jobs of a team would submit (each model has its own name)."""
    flows = [lambda layout=layout: _layout_flow(url, token, tmp_path, layout) for layout in LAYOUTS]
    flows += [lambda: _broken_and_submitted_flow(url, token, tmp_path),
              lambda: _missing_package_flow(url, token, tmp_path)]
    with ThreadPoolExecutor(max_workers=len(flows)) as pool:
        for future in [pool.submit(flow) for flow in flows]:
            future.result()


def test_layouts_through_the_embedded_service(tmp_path: Path) -> None:
    env = service_env(DATA_DIR=str(tmp_path / "data"))
    token = _token(env, "layouts")
    port = free_port()
    server = ServiceProcess(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 90, "the embedded server to be ready")
        _through_service(url, token, tmp_path)
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-3000:]


def test_layouts_through_redis_postgresql_and_a_separate_worker(redis_pg_service: Service,  # noqa: F811
                                                                tmp_path: Path) -> None:
    env = redis_pg_service.env()
    token = _token(env, "layouts")
    port = free_port()
    server = ServiceProcess(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "api.log")
    worker = redis_pg_service.worker("layouts", "--concurrency", "2")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 90, "the API to be ready")
        _through_service(url, token, tmp_path)
    finally:
        server.stop()
        worker.stop()
    assert "Traceback" not in worker.output(), worker.output()[-3000:]
