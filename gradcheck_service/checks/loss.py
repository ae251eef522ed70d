"""The scalar a check differentiates: the user's ``loss_fn`` or a fixed random projection of every output."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from ..types import LossFn as LossFn  # also imported from here by the engine modules


def float_leaves(output: Any) -> Iterator[torch.Tensor]:
    """Floating-point tensors of a (nested) output, in a stable order; integer and bool parts are ignored."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point() or output.is_complex():
            yield output
    elif isinstance(output, Mapping):
        for key in sorted(output, key=str):
            yield from float_leaves(output[key])
    elif isinstance(output, Sequence) and not isinstance(output, str | bytes):
        for item in output:
            yield from float_leaves(item)


IMAGINARY_OFFSET = 1_000_000  # weight positions of the imaginary parts of complex outputs, apart from the real ones


class RandomProjection:
    """``sum(u_i * y_i)`` over every float output element, with ``u`` fixed by a seed.

    A complex output contributes its real and imaginary parts, each projected with weights of its own.

    A random projection makes every output element matter to the loss (a plain sum would hide errors that sum to
    zero, e.g. in a softmax's Jacobian), and it is the same on every evaluation because ``u`` is generated once per
    output shape from a dedicated generator, independent of the global RNG that dropout consumes.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._weights: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        # Output positions autograd can differentiate; None: all. Outputs a forward marks non-differentiable (a
        # norm's saved mean and inverse std) have no backward to check, as torch.autograd.gradcheck treats them.
        self.differentiable: set[int] | None = None

    def restrict_to_differentiable(self, output: Any) -> list[int]:
        """Leave out float outputs that do not require grad (when some do); return the positions left out."""
        leaves = list(float_leaves(output))
        keep = {i for i, leaf in enumerate(leaves) if leaf.requires_grad}
        if not keep or len(keep) == len(leaves):
            return []
        self.differentiable = keep
        return [i for i in range(len(leaves)) if i not in keep]

    def weight(self, position: int, like: torch.Tensor) -> torch.Tensor:
        key = (position, tuple(like.shape))
        w = self._weights.get(key)
        if w is None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + position)
            w = torch.randn(like.shape, generator=gen, dtype=torch.float64)
            self._weights[key] = w
        return w.to(dtype=like.dtype, device=like.device)

    def __call__(self, output: Any, *inputs: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for position, leaf in enumerate(float_leaves(output)):
            if self.differentiable is not None and position not in self.differentiable:
                continue
            if leaf.is_complex():  # both parts matter, each with its own weights: a real loss, as autograd needs
                term = (leaf.real * self.weight(position, leaf.real)).sum() + (
                    leaf.imag * self.weight(IMAGINARY_OFFSET + position, leaf.imag)).sum()
            else:
                term = (leaf * self.weight(position, leaf)).sum()
            total = term if total is None else total + term
        if total is None:
            raise ValueError("the model's output has no floating-point tensor to differentiate")
        return total


def resolve_loss(loss_fn: LossFn | None, seed: int) -> LossFn:
    """The loss a check uses: the user's, or a seeded random projection of the output."""
    return loss_fn if loss_fn is not None else RandomProjection(seed)
