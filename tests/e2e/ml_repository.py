"""A throwaway ML repository for the CI tests: a git repo with a pyproject, a broken and correct models, a spec.

``models/broken.py`` has a custom autograd Function with a seeded wrong backward inside the submodule
``encoder.act``; ``models/good.py`` is correct (its hidden width can be changed to make a real memory regression);
``specs/tiny.json`` is a declarative spec; ``models/raises.py`` fails in build().
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

BROKEN_MODEL = '''
import torch
from torch import nn


class ScaledTanhFunction(torch.autograd.Function):
    """y = 2 tanh(x)."""

    @staticmethod
    def forward(ctx, x):
        t = torch.tanh(x)
        ctx.save_for_backward(t)
        return 2.0 * t

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return grad * (1.0 - t * t)  # SEEDED BUG: the factor 2 of the forward is missing


class ScaledTanh(nn.Module):
    def forward(self, x):
        return ScaledTanhFunction.apply(x)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 5)
        self.act = ScaledTanh()

    def forward(self, x):
        return self.act(self.proj(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.encoder(x))


def build():
    torch.manual_seed(0)
    return Net().double(), torch.randn(4, 3, dtype=torch.float64)
'''

GOOD_MODEL = '''
import torch
from torch import nn

HIDDEN = {hidden}


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 2)).double()
    return model, torch.randn(4, 3, dtype=torch.float64)
'''

RAISING_MODEL = '''
def build():
    raise RuntimeError("checkpoint weights.pt not found")
'''

TINY_SPEC = {
    "name": "tiny",
    "seed": 0,
    "input": {"shape": [4, 3], "dtype": "float64"},
    "layers": [{"type": "linear", "out_features": 4}, {"type": "tanh"}, {"type": "linear", "out_features": 2}],
    "loss": {"type": "mse"},
}

PYPROJECT_HEAD = '''[project]
name = "toy-ml"
version = "0.1.0"

[tool.gradcheck]
junit = "reports/gradcheck.xml"

[tool.gradcheck.defaults]
mode = "default"
'''


def model_table(path: str, **keys: object) -> str:
    lines = ["", "[[tool.gradcheck.models]]", f'path = "{path}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


ALL_MODELS = (model_table("models/broken.py") + model_table("models/good.py", mode="full")
              + model_table("specs/tiny.json"))
CORRECT_MODELS = model_table("models/good.py", mode="full") + model_table("specs/tiny.json")

# Variables of CI systems that would make gitmeta read the surrounding CI job instead of the throwaway repository.
_CI_PREFIXES = ("GITHUB_", "GITLAB_", "CI_", "CIRCLE", "BUILDKITE", "JENKINS", "GRADCHECK_")
_CI_NAMES = {"CI", "GITLAB_CI", "CIRCLECI", "BUILDKITE", "JENKINS_URL", "BUILD_URL", "GIT_URL", "GIT_COMMIT",
             "GIT_BRANCH", "BRANCH_NAME", "CHANGE_ID", "CHANGE_TARGET"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CI_PREFIXES) and k not in _CI_NAMES}
    env.update({"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "Test",
                "GIT_COMMITTER_EMAIL": "test@example.com"})
    env.update(extra)
    return env


class MLRepository:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "models").mkdir(parents=True)
        (root / "specs").mkdir()
        (root / "models" / "broken.py").write_text(BROKEN_MODEL)
        (root / "models" / "raises.py").write_text(RAISING_MODEL)
        (root / "specs" / "tiny.json").write_text(json.dumps(TINY_SPEC, indent=2))
        self.set_hidden(4)
        self.configure(ALL_MODELS)
        self.git("init", "-q", "-b", "main")
        self.git("remote", "add", "origin", "https://ci-bot:s3cret@git.example.com/team/toy-ml.git")
        self.commit("initial models")

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", *args], cwd=self.root, env=clean_env(), capture_output=True, text=True,
                              check=True)
        return done.stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def set_hidden(self, width: int) -> None:
        (self.root / "models" / "good.py").write_text(GOOD_MODEL.format(hidden=width))

    def configure(self, models: str, head: str = PYPROJECT_HEAD, filename: str = "pyproject.toml") -> Path:
        path = self.root / filename
        path.write_text(head + models)
        return path

    def ci(self, *args: str, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``gradcheck-service ci ARGS`` in the repository root, as a CI job would run it."""
        script = shutil.which("gradcheck-service", path=str(Path(sys.executable).parent))
        assert script, "the gradcheck-service console script is not installed in this environment"
        return subprocess.run([script, "ci", *args], cwd=self.root, env=env or clean_env(), capture_output=True,
                              text=True, timeout=timeout)
