"""A model with a hand-written ``torch.autograd.Function`` whose backward is correct.

Check it with ``gradcheck-service check examples/custom_function.py``: every parameter passes.
"""

from __future__ import annotations

import torch
from torch import nn


class ScaledSoftsignFunction(torch.autograd.Function):
    """y = a * x / (1 + |x|), with dy/dx = a / (1 + |x|)^2 and dy/da = x / (1 + |x|)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, a)
        return a * x / (1 + x.abs())

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, a = ctx.saved_tensors
        denom = 1 + x.abs()
        grad_x = grad_out * a / denom**2
        grad_a = (grad_out * x / denom).sum_to_size(a.shape)
        return grad_x, grad_a


class ScaledSoftsign(nn.Module):
    """A softsign activation with a learnable per-feature scale."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ScaledSoftsignFunction.apply(x, self.scale)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 8)
        self.activation = ScaledSoftsign(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.activation(self.encoder(x)))


def build() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Net(), torch.randn(5, 6)
