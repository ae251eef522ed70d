"""Every random generator a forward may draw from, replayed identically for every evaluation of the check.

Finite differences compare losses of the *same* function at nearby points, so every evaluation must draw the same
dropout masks, noise and augmentations. Forwards draw from more than torch's CPU generator: a CUDA device's
generator (dropout on the GPU), Python's ``random`` (reversible layers that pick their own seeds), NumPy's global
generator (SpecAugment-style masks), and some reseed from the operating system with ``torch.seed()`` (a fresh,
non-deterministic seed per call). :class:`RngState` captures and restores all of them at once, and
:func:`isolated_randomness` makes the OS-seeded calls deterministic for the duration of the check and gives the
caller back exactly the generator states it had.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class RngState:
    """The state of torch's CPU generator, each initialised CUDA device's, and (where a forward draws from them)
    Python's ``random`` and NumPy's global generator.

    Restoring NumPy's state costs ~0.2 ms, far more than a small model's forward, so :func:`generators_drawn`
    finds out once which of Python's and NumPy's generators a forward uses and only those are captured.
    """

    cpu: torch.Tensor
    python: tuple[Any, ...] | None = None
    numpy: Any | None = None
    cuda: tuple[torch.Tensor, ...] = ()

    @classmethod
    def capture(cls, python: bool = True, numpy: bool = True) -> RngState:
        np = sys.modules.get("numpy") if numpy else None
        return cls(
            cpu=torch.get_rng_state(),
            python=random.getstate() if python else None,
            numpy=np.random.get_state() if np is not None else None,
            cuda=tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else (),
        )

    @classmethod
    def seeded(cls, seed: int, python: bool = True, numpy: bool = True) -> RngState:
        """The state every generator has right after being seeded with ``seed`` (the caller's state is kept)."""
        before = cls.capture(python, numpy)
        try:
            seed_all(seed)
            return cls.capture(python, numpy)
        finally:
            before.restore()

    def like(self) -> RngState:
        """The generators' state now, captured for the same generators as this one."""
        return RngState.capture(python=self.python is not None, numpy=self.numpy is not None)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.python is not None:
            random.setstate(self.python)
        np = sys.modules.get("numpy")
        if np is not None and self.numpy is not None:
            np.random.set_state(self.numpy)
        if self.cuda and torch.cuda.is_initialized():
            torch.cuda.set_rng_state_all(list(self.cuda))


def seed_all(seed: int) -> None:
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2**32)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def generators_drawn(run: Callable[[], Any]) -> tuple[bool, bool]:
    """Run ``run()`` once; whether it drew from Python's ``random`` and from NumPy's global generator."""
    python_before = random.getstate()
    np = sys.modules.get("numpy")
    numpy_before = np.random.get_state() if np is not None else None
    run()
    np = sys.modules.get("numpy")
    if np is None:
        numpy_drawn = False
    elif numpy_before is None:  # imported by the forward itself
        numpy_drawn = True
    else:
        numpy_now = np.random.get_state()
        numpy_drawn = numpy_now[2] != numpy_before[2] or not np.array_equal(numpy_now[1], numpy_before[1])
    return random.getstate() != python_before, numpy_drawn


def _deterministic_torch_seed() -> int:
    """``torch.seed()`` during a check: a seed drawn from Python's replayed generator instead of the OS."""
    seed = random.getrandbits(63)
    torch.manual_seed(seed)
    return seed


def _deterministic_cuda_seed() -> None:
    torch.cuda.manual_seed(random.getrandbits(63))


def _deterministic_cuda_seed_all() -> None:
    torch.cuda.manual_seed_all(random.getrandbits(63))


def _seeded_from_draws(original: Callable[..., Any]) -> Callable[..., Any]:
    """``random.seed()`` / ``numpy.random.seed()`` without an argument read the OS; with one they stay as they are."""

    def seed(a: Any = None, *args: Any, **kwargs: Any) -> Any:
        return original(random.getrandbits(32) if a is None else a, *args, **kwargs)

    return seed


@contextmanager
def isolated_randomness() -> Iterator[None]:
    """Inside: OS-seeded calls are deterministic draws. After: every generator is as the caller left it."""
    saved = RngState.capture()
    patches: list[tuple[Any, str, Any]] = [
        (torch, "seed", _deterministic_torch_seed),
        (torch.random, "seed", _deterministic_torch_seed),
        (torch.cuda, "seed", _deterministic_cuda_seed),
        (torch.cuda, "seed_all", _deterministic_cuda_seed_all),
        (random, "seed", _seeded_from_draws(random.seed)),
    ]
    np = sys.modules.get("numpy")
    if np is not None:
        patches.append((np.random, "seed", _seeded_from_draws(np.random.seed)))
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        saved.restore()
