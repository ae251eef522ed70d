"""Which modules count as "layers" for the per-layer gradient flow, and how their outputs are captured.

Rule (documented in docs/how-the-check-works.md): a *layer* is a module that owns parameters directly (``parameters(recurse=False)``
is not empty: Linear, Conv, LSTM, MultiheadAttention, a custom block with its own ``nn.Parameter``) or that is an
activation or normalization module from ``torch.nn`` (ReLU, Tanh, Softmax, LayerNorm, BatchNorm without affine,
...). Pure containers (Sequential, a residual block without own parameters) and functional calls (``F.relu``) are
not layers: their effect shows in the next layer's signal. A module called twice is reported once per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .loss import float_leaves

_ACTIVATION_OR_NORM_MODULES = (
    "torch.nn.modules.activation",
    "torch.nn.modules.normalization",
    "torch.nn.modules.batchnorm",
    "torch.nn.modules.instancenorm",
)

DEAD_RELU_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


def is_layer(module: nn.Module) -> bool:
    """True when ``module`` is a layer by the rule in this module's docstring."""
    if next(module.parameters(recurse=False), None) is not None:
        return True
    return type(module).__module__ in _ACTIVATION_OR_NORM_MODULES


def named_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` for every layer of ``model``, in registration order ('' is the root)."""
    for name, module in model.named_modules():
        if is_layer(module):
            yield name, module


def grad_leaves(output: Any) -> list[torch.Tensor]:
    """Floating-point tensors of a (nested) module output that autograd will send a gradient to."""
    return [leaf for leaf in float_leaves(output) if leaf.requires_grad]


def dense(grad: torch.Tensor) -> torch.Tensor:
    """A gradient as a dense tensor: a sparse one (``Embedding(sparse=True)``) compares coordinate by coordinate."""
    return grad.detach().to_dense() if grad.is_sparse else grad.detach()
