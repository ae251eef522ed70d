"""The ready-to-copy GitHub Actions workflow, run as far as this machine allows.

Its ``local`` job's shell steps run in order in a fresh virtual environment on a tiny ML repository: the install
step installs gradcheck-service the way the workflow says (a pip requirement on a git URL at a pinned revision,
here this checkout's own repository at its current commit), then the repository itself; the gate step runs
``gradcheck-service ci``. Only what needs the network is left out: PyTorch's CPU index (torch, like the other
dependencies, comes from the test environment, which the fresh environment can read but not modify).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.service_support import ROOT

pytestmark = pytest.mark.e2e

WORKFLOW = ROOT / "deploy" / "ci" / "github-actions.yml"

TINY_REPOSITORY = {
    "pyproject.toml": '''
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "tiny-ml"
version = "0.1.0"

[tool.setuptools]
py-modules = ["tinynet"]

[tool.gradcheck]
models = ["checks/net_check.py"]

[tool.gradcheck.defaults]
mode = "fast"
''',
    "tinynet.py": '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        print(f"number of parameters: {sum(p.numel() for p in self.parameters())}")  # as minGPT prints

    def forward(self, x):
        return self.body(x)
''',
    "checks/net_check.py": '''
import torch

from tinynet import Net


def build():
    torch.manual_seed(0)
    return Net().double(), torch.randn(4, 3, dtype=torch.float64)
''',
}


def _run_steps(job: dict) -> list[str]:  # type: ignore[type-arg]
    return [str(step["run"]) for step in job["steps"] if "run" in step]


def _fresh_environment(where: Path) -> dict[str, str]:
    """A new virtual environment whose own site-packages holds nothing of ours, reading the test environment's
    packages (torch, numpy, ...) through a .pth file; the environment variables a step runs with."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The build backend comes from the test environment too (this venv's own setuptools is older than the
    # project requires).
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    Path(site, "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADCHECK_", "PIP_", "VIRTUAL_ENV"))}
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.update({
        "PATH": f"{where / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        # No network here: nothing from an index; dependencies are already importable, so only the package
        # itself is installed (and re-installed over what the test environment has).
        "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_FORCE_REINSTALL": "1", "PIP_NO_BUILD_ISOLATION": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    })
    return env


def _this_revision() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_the_workflow_installs_a_pinned_revision_not_a_package_no_index_has() -> None:
    text = WORKFLOW.read_text()
    workflow = yaml.safe_load(text)
    name, _, url = workflow["env"]["GRADCHECK_PACKAGE"].partition(" @ ")
    assert name == "gradcheck-service" and url.startswith("git+https://") and url.rsplit("@", 1)[-1]
    for job in workflow["jobs"].values():
        installs = [line.strip() for step in _run_steps(job) for line in step.splitlines() if "pip install" in line]
        assert 'pip install "$GRADCHECK_PACKAGE"' in installs, installs
        assert not [line for line in installs if line.split()[-1] == "gradcheck-service"], installs


def test_the_gitlab_template_installs_the_same_pinned_revision() -> None:
    text = (ROOT / "deploy" / "ci" / "gitlab-ci.yml").read_text()
    template = yaml.safe_load(text)[".gradcheck"]
    github = yaml.safe_load(WORKFLOW.read_text())["env"]["GRADCHECK_PACKAGE"]
    assert template["variables"]["GRADCHECK_PACKAGE"] == github
    assert 'pip install -q "$GRADCHECK_PACKAGE"' in template["before_script"]
    assert not [line for line in text.splitlines() if line.rstrip().endswith("pip install -q gradcheck-service")]


def test_the_local_job_installs_and_gates_a_tiny_repository(tmp_path: Path) -> None:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["local"]
    install, gate = _run_steps(job)
    repository = tmp_path / "repo"
    for path, text in TINY_REPOSITORY.items():
        (repository / path).parent.mkdir(parents=True, exist_ok=True)
        (repository / path).write_text(text.lstrip())
    env = _fresh_environment(tmp_path / "venv")
    # The workflow's requirement, pointed at this checkout's repository at its current commit.
    env["GRADCHECK_PACKAGE"] = f"gradcheck-service @ git+file://localhost{ROOT}@{_this_revision()}"

    lines = [line for line in install.splitlines() if line.strip()]
    online = [line for line in lines if "download.pytorch.org" in line]
    assert len(online) == 1 and "pip install torch" in online[0]  # only torch's own index is left out
    offline = [line for line in lines if line not in online]
    installed = subprocess.run(["bash", "-e", "-c", "\n".join(offline)], cwd=repository, env=env,
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "project.license" not in installed.stdout + installed.stderr  # no setuptools deprecation
    where = subprocess.run(["python", "-c", "import gradcheck_service; print(gradcheck_service.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "venv")), where  # the installed copy, not this checkout

    gated = subprocess.run(["bash", "-e", "-c", gate], cwd=repository, env=env, capture_output=True, text=True,
                           timeout=600)
    assert gated.returncode == 0, gated.stdout + gated.stderr[-3000:]
    summary = (repository / "reports" / "summary.md").read_text()
    assert gated.stdout == summary  # the job's output is the Markdown summary alone
    assert summary.startswith("## ✅ gradcheck: all 1 models passed") and "number of parameters" not in gated.stderr
    suite = ET.parse(repository / "reports" / "gradcheck.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("errors") == "0"
    report = (repository / "reports" / "models" / "net_check.json").read_text()
    assert "number of parameters: 26" in report  # the model's own print went into its report
