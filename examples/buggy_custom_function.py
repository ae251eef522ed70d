"""A model whose custom activation has a seeded bug in its backward -- a demonstration of a failing check.

``Swish`` computes y = x * sigmoid(x) correctly, but its backward returns only sigmoid(x), dropping the term
x * sigmoid(x) * (1 - sigmoid(x)). Every parameter *before* it gets a wrong gradient too, yet a check names the
module whose own backward is wrong: ``blocks.1.activation``.
"""

from __future__ import annotations

import torch
from torch import nn


class SwishFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        # SEEDED BUG: the derivative is s + x * s * (1 - s); the second term is missing.
        return grad_out * s


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SwishFunction.apply(x)


class Block(nn.Module):
    def __init__(self, features: int, activation: nn.Module) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Block 0 uses PyTorch's own SiLU (the same function, correct backward); block 1 uses the buggy Swish.
        self.blocks = nn.Sequential(Block(8, nn.SiLU()), Block(8, Swish()), Block(8, nn.Tanh()))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def build() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Net(), torch.randn(4, 8)
