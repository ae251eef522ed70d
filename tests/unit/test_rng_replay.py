"""Forwards that draw from any generator, or reseed from the OS, are replayed identically at every evaluation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradcheck_service import check
from tests.fixtures.seeded_functions import WrongGrad


class ReseedsFromPythonRandom(nn.Module):
    """Reversible-layer style: the layer picks its own dropout seed with Python's random module."""

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 6)
        self.wrong = wrong

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(random.randint(0, 2**31))
        h = F.dropout(self.linear(x), 0.3, training=True)
        return WrongGrad.apply(h) if self.wrong else h


class ReseedsFromTheOS(nn.Module):
    """Reformer style: ``torch.seed()`` (a fresh seed from the OS) before drawing dropout masks."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(torch.seed() % 2**31)
        return F.dropout(self.linear(x), 0.3, training=True)


class NumpyMask(nn.Module):
    """SpecAugment style: the mask is drawn with NumPy's global generator."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.from_numpy(np.random.rand(x.shape[0], 6) > 0.3)
        return self.linear(x) * keep


@pytest.mark.parametrize("model_cls", [ReseedsFromPythonRandom, ReseedsFromTheOS, NumpyMask])
@pytest.mark.parametrize("mode", ["default", "full"])
def test_forwards_drawing_from_any_generator_are_checked_and_pass(model_cls: type[nn.Module], mode: str) -> None:
    torch.manual_seed(0)
    report = check(model_cls(), torch.randn(5, 4), mode=mode, health=False, memory=False)
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    assert report.gradient_check.reproducible
    assert report.gradient_check.dtype == "float64"
    assert all(not t.unused and t.coordinates_checked + t.probes > 0 for t in report.gradient_check.parameters)


def test_a_wrong_backward_behind_a_python_seeded_dropout_fails() -> None:
    torch.manual_seed(0)
    report = check(ReseedsFromPythonRandom(wrong=True), torch.randn(5, 4), health=False, memory=False)
    assert report.verdict == "failed"
    assert report.gradient_check.reproducible


def test_the_callers_generators_are_left_as_they_were() -> None:
    checks = [(ReseedsFromTheOS(), torch.randn(5, 4)), (NumpyMask(), torch.randn(5, 4))]
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    seed_function = torch.seed
    for model, inputs in checks:
        check(model, inputs)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert torch.seed is seed_function  # the deterministic stand-in is gone after the check
