"""Default mode's local strategy: parameters checked through their own module's call, composition by joint probes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradcheck_service import check
from tests.fixtures.seeded_functions import WrongGrad

QUICK: dict[str, Any] = {"health": False, "memory": False}


class Gate(nn.Module):
    """A parameterised module that is not a stock Linear: its parameters go through the local check."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.tanh(x) * self.scale)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), Gate(8), nn.Linear(8, 8), Gate(8), nn.Linear(8, 3))


def test_a_correct_model_passes_through_local_checks_and_joint_probes() -> None:
    report = check(_net(), (torch.randn(5, 6),), **QUICK)
    gc = report.gradient_check
    assert report.verdict == "passed" and gc.strategy == "local"
    assert gc.composition is not None and gc.composition.passed and gc.composition.probes == 4
    by_name = {t.name: t for t in gc.parameters}
    assert by_name["1.scale"].method.startswith("local: finite differences of 1's own forward")
    assert by_name["3.norm.weight"].coverage == "full" and by_name["3.norm.weight"].coordinates_checked == 8
    assert all(t.coordinates_checked + t.probes > 0 for t in gc.parameters + gc.inputs)


def test_local_and_global_agree_on_a_correct_model() -> None:
    x = torch.randn(5, 6)
    local = check(_net(), (x,), **QUICK)
    whole = check(_net(), (x,), strategy="global", **QUICK)
    assert local.verdict == whole.verdict == "passed"
    assert whole.gradient_check.strategy == "global"


class Block(nn.Module):
    """Its own forward code (not a submodule) applies a wrong backward between its two layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), Gate(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(WrongGrad.apply(self.a(x)))


def test_a_bug_no_submodule_owns_fails_the_joint_probes_and_names_the_parent() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.Linear(8, 3))
    report = check(model, (torch.randn(5, 6),), **QUICK)
    gc = report.gradient_check
    assert report.verdict == "failed"
    assert gc.composition is not None and not gc.composition.passed  # every local check alone would pass
    assert gc.strategy == "global"  # the failure is reported tensor by tensor, as the whole-model check sees it
    assert report.localization.faulty_modules == ["0"]
