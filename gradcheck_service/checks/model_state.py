"""Leave a model exactly as it was: modes, gradients, buffers, plain attributes and the global RNG.

Every measurement in ``health`` and ``memory`` runs real forward and backward passes on the user's model. Those
passes write ``.grad``, update BatchNorm running statistics, fill lazily built caches (a buffer and an int saying
how much of it is filled) and consume random numbers (dropout); this module puts all of it back so a check is
invisible to the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def model_device(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.device:
    """Device of the model's first parameter or buffer, else of the first tensor input, else CPU."""
    for tensor in (*model.parameters(), *model.buffers(), *inputs):
        if isinstance(tensor, torch.Tensor):
            return tensor.device
    return torch.device("cpu")


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNG seeded to ``seed`` (``torch.manual_seed`` semantics for the model's
    device) and restore the caller's RNG state afterwards.

    ``fork_rng`` saves and restores the CPU generator and, for a CUDA model, that device's generator; listing the
    device explicitly avoids touching (and initializing) every CUDA device.
    """
    if device.type == "cuda":
        with torch.random.fork_rng(devices=[device], device_type="cuda"):
            torch.manual_seed(seed)
            yield
    else:
        # For a CPU model only the CPU generator matters. torch.manual_seed would also queue lazy seeding of every
        # accelerator backend, formatting a stack trace each time (~1 ms per call, a third of a small model's step).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield


# What nn.Module.__init__ puts in every module's __dict__: restored through their own paths (or never touched).
MODULE_INTERNALS = frozenset(vars(nn.Module())) - {"training"}


class Attributes:
    """Every module's buffer objects and plain attributes, put back as they were (the same objects).

    A lazily built cache is a buffer beside a plain int saying how much of it is filled; restoring the buffer alone
    would leave the int saying "filled" over an empty buffer, and every later forward would read zeros.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = list(model.modules())
        self.buffers = [dict(m._buffers) for m in self.modules]
        self.attributes = [{k: v for k, v in vars(m).items() if k not in MODULE_INTERNALS} for m in self.modules]

    def restore(self) -> None:
        for m, buffers, attributes in zip(self.modules, self.buffers, self.attributes, strict=True):
            m._buffers.clear()
            m._buffers.update(buffers)
            for name in [k for k in vars(m) if k not in MODULE_INTERNALS and k not in attributes]:
                delattr(m, name)
            m.__dict__.update(attributes)


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Snapshot train/eval modes, every parameter's ``.grad`` (``None`` included), every buffer and every plain
    attribute; restore on exit.

    Inside the block each parameter's ``.grad`` starts as ``None`` so measured gradients are the block's own. The
    original gradient tensors, buffers and attributes are put back as the same objects (buffers with their values
    copied back in place), so references the caller holds (e.g. an optimizer's) stay valid.
    """
    modes = {module: module.training for module in model.modules()}
    params = list(model.parameters())
    grads = [p.grad for p in params]
    attributes = Attributes(model)
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        for p in params:
            p.grad = None
        yield
    finally:
        attributes.restore()
        for module, training in modes.items():
            module.training = training
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def clear_grads(model: nn.Module) -> None:
    """Set every parameter's ``.grad`` to ``None`` (between measured passes inside :func:`preserved`)."""
    for p in model.parameters():
        p.grad = None
