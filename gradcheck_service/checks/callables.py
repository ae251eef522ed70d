"""What ``check()`` accepts besides a model with parameters: plain functions of tensors and parameter-free modules.

A kernel author's first check is usually a custom ``autograd.Function`` or a function of tensors, the way
``torch.autograd.gradcheck`` takes it. Such a callable is wrapped into a small module so every section of the
report runs unchanged; its float inputs are what the gradient check compares. This module also refuses, with the
tensor's name, what the float64 reference cannot perturb (complex and sparse tensors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .working_copy import CheckError


class FunctionModule(nn.Module):
    """A module whose forward is a plain function of tensors: ``forward(*inputs) == fn(*inputs)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.fn(*inputs)

    def extra_repr(self) -> str:
        return callable_name(self.fn)


def callable_name(fn: Callable[..., Any]) -> str:
    """``fn``'s own name for the report (``__qualname__``, else its type's name).

    A method bound to a class is named after that class: ``MyFunction.apply``, not the inherited ``Function.apply``.
    """
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type):
        return f"{owner.__qualname__}.{getattr(fn, '__name__', 'apply')}"
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)


def as_module(model: nn.Module | Callable[..., Any], name: str | None) -> tuple[nn.Module, str | None]:
    """The module to check and the report's name for it: a module as is, any other callable wrapped.

    A wrapped function is named after itself unless ``name`` is given.
    """
    if isinstance(model, nn.Module):
        return model, name
    if not callable(model):
        raise CheckError(f"model must be a torch.nn.Module or a callable of tensors, got {type(model).__name__}")
    return FunctionModule(model), name or callable_name(model)


def require_checkable(model: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
    """Raise :class:`CheckError` for tensors the check cannot perturb, or when there is nothing to differentiate.

    Complex and sparse tensors are refused by name: central differences here perturb real, strided values only.
    With no trainable parameter and no float input, no gradient exists to compare.
    """
    for i, t in enumerate(inputs):
        _require_supported(f"input[{i}]", t)
    for name, p in model.named_parameters():
        _require_supported(f"parameter {name}", p)
    trainable = any(p.requires_grad for p in model.parameters())
    if not trainable and not any(t.is_floating_point() for t in inputs):
        raise CheckError(
            "nothing to check: the model has no parameter that requires grad and no floating-point input "
            f"(input dtypes: {', '.join(str(t.dtype).removeprefix('torch.') for t in inputs) or 'none'})"
        )


def _require_supported(name: str, t: torch.Tensor) -> None:
    if t.layout != torch.strided:
        raise CheckError(f"{name} has layout {str(t.layout).removeprefix('torch.')}: only dense (strided) tensors "
                         "can be checked")
    if t.is_complex():
        raise CheckError(f"{name} is complex ({str(t.dtype).removeprefix('torch.')}): complex tensors are not "
                         "supported; pass the real and imaginary parts as separate real tensors")


def differentiable_inputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The inputs for a health/memory pass: float inputs become leaves that require grad when no parameter does.

    Without a trainable parameter the only gradients a training step produces are the inputs' (a layer of a
    larger network, a custom Function), so the pass differentiates with respect to them instead of raising.
    The leaves are detached copies (same storage), so the caller's tensors never receive ``.grad``.
    """
    if any(p.requires_grad for p in model.parameters()):
        return inputs
    return tuple(_gradient_leaf(t) if t.is_floating_point() else t for t in inputs)


def _gradient_leaf(t: torch.Tensor) -> torch.Tensor:
    leaf = t.detach().requires_grad_(True)
    # The profile runs several backward passes into the same leaves. An operator whose derivative is identically
    # zero (sgn of a real input) hands autograd an immutable zero tensor, which the first pass stores as ``.grad``
    # and the second cannot add to; a materialized copy can be added to.
    leaf.register_hook(lambda grad: grad.clone() if grad._is_zerotensor() else grad)
    return leaf
