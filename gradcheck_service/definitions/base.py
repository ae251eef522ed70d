"""What every kind of model definition turns into, and the error it raises when it cannot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..types import LossFn


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition: ``path`` is a JSON path like ``$.layers[2].out_features``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DefinitionError(ValueError):
    """A definition that cannot be used; ``problems`` lists each issue with its location."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        self.problems = list(problems or [])
        # A problem already spelled out by the message (a model file's error names the file) is not repeated.
        detail = "; ".join(str(p) for p in self.problems if p.message not in message)
        super().__init__(f"{message}: {detail}" if detail else message)
        self.message = message


@dataclass
class Definition:
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    loss_fn: LossFn | None
    name: str
    kind: Literal["spec", "python"]
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
