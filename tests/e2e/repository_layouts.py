"""Throwaway ML repositories laid out as real ones are, for the multi-file CI tests.

* ``root_model``: ``model.py`` at the root (as nanoGPT has it), imported by ``gradcheck/tiny_check.py``;
  configured in ``gradcheck.toml`` with ``models = ["..."]``.
* ``src_package``: the package ``src/mylib`` (relative imports between ``__init__``, ``net``, ``layers`` and
  ``config``), imported by ``checks/net_check.py``; configured in ``pyproject.toml`` with ``pythonpath = ["src"]``
  and an inline table. ``mylib/layers.py`` holds a custom autograd Function whose backward can be broken.
* ``three_modules``: a model split over ``blocks.py``, ``heads.py`` and ``network.py``, imported by
  ``checks/network_check.py``.

Each model is a few dozen parameters, so a check takes well under a second. ``widen`` changes the hidden width
of a layout (its activation memory grows), ``break_backward`` seeds the backward bug.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.ml_repository import MLRepository

LAYOUTS: dict[str, dict[str, str]] = {
    "root_model": {
        "model.py": '''
import torch
from torch import nn

HIDDEN = 4


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 2))

    def forward(self, x):
        return self.body(x)
''',
        "gradcheck/tiny_check.py": '''
import torch

from model import TinyNet


def build():
    torch.manual_seed(0)
    return TinyNet().double(), torch.randn(4, 3, dtype=torch.float64)
''',
        "gradcheck.toml": '''models = ["gradcheck/tiny_check.py"]
junit = "reports/gradcheck.xml"
summary = "reports/summary.md"
''',
    },
    "src_package": {
        "src/mylib/__init__.py": "from .net import Net\n",
        "src/mylib/config.py": "HIDDEN = 4\n",
        "src/mylib/layers.py": '''
import torch
from torch import nn

FACTOR = 2.0  # the backward's factor; the forward is 2 tanh(x)


class ScaledTanhFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        t = torch.tanh(x)
        ctx.save_for_backward(t)
        return 2.0 * t

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return grad * FACTOR * (1.0 - t * t)


class ScaledTanh(nn.Module):
    def forward(self, x):
        return ScaledTanhFunction.apply(x)
''',
        "src/mylib/net.py": '''
from torch import nn

from . import config
from .layers import ScaledTanh


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, config.HIDDEN)
        self.act = ScaledTanh()
        self.head = nn.Linear(config.HIDDEN, 2)

    def forward(self, x):
        return self.head(self.act(self.proj(x)))
''',
        "checks/net_check.py": '''
import torch

from mylib import Net


def build():
    torch.manual_seed(0)
    return Net().double(), torch.randn(4, 3, dtype=torch.float64)
''',
        "pyproject.toml": '''[project]
name = "mylib"
version = "0.1.0"

[tool.gradcheck]
pythonpath = ["src"]
models = [{ path = "checks/net_check.py", name = "net", mode = "full" }]
junit = "reports/gradcheck.xml"
summary = "reports/summary.md"
''',
    },
    "three_modules": {
        "blocks.py": '''
from torch import nn

HIDDEN = 4


class Block(nn.Module):
    def __init__(self, width=HIDDEN):
        super().__init__()
        self.linear = nn.Linear(3, width)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(self.linear(x))
''',
        "heads.py": '''
from torch import nn


class Head(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.out = nn.Linear(width, 2)

    def forward(self, x):
        return self.out(x)
''',
        "network.py": '''
from torch import nn

import blocks
from heads import Head


class Network(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = blocks.Block()
        self.head = Head(blocks.HIDDEN)

    def forward(self, x):
        return self.head(self.block(x))
''',
        "checks/network_check.py": '''
import torch

from network import Network


def build():
    torch.manual_seed(0)
    return Network().double(), torch.randn(4, 3, dtype=torch.float64)
''',
        "gradcheck.toml": '''junit = "reports/gradcheck.xml"

[[models]]
path = "checks/network_check.py"
''',
    },
}
# Where each layout keeps the hidden width that `widen` changes, and the name its model runs under.
WIDTH_FILE = {"root_model": "model.py", "src_package": "src/mylib/config.py", "three_modules": "blocks.py"}
MODEL_NAME = {"root_model": "tiny_check", "src_package": "net", "three_modules": "network_check"}


class LayoutRepository(MLRepository):
    """A git repository (branch ``main``, one commit) holding one of :data:`LAYOUTS`."""

    def __init__(self, root: Path, layout: str) -> None:  # noqa: D107 - the base class builds another layout
        self.root = root
        self.layout = layout
        for path, text in LAYOUTS[layout].items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text.lstrip("\n"))
        self.git("init", "-q", "-b", "main")
        self.git("remote", "add", "origin", f"https://git.example.com/team/{layout}.git")
        self.commit("initial layout")

    @property
    def model(self) -> str:
        return MODEL_NAME[self.layout]

    def widen(self, width: int = 16) -> None:
        path = self.root / WIDTH_FILE[self.layout]
        path.write_text(path.read_text().replace("HIDDEN = 4", f"HIDDEN = {width}"))

    def break_backward(self) -> None:
        """The seeded bug: the package's activation loses the factor 2 of its derivative."""
        path = self.root / "src/mylib/layers.py"
        path.write_text(path.read_text().replace("FACTOR = 2.0", "FACTOR = 1.0"))
