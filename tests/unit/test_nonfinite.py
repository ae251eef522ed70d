"""NaN and infinity are verdicts: a backward that returns them fails, a loss that is not finite is inconclusive."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from gradcheck_service import check


def _tanh_with_gradient_edit(edit: str) -> type[torch.autograd.Function]:
    """tanh whose backward is right but for ``edit``: 'all' times NaN, 'one' NaN at one coordinate, 'inf'."""

    class EditedTanh(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            y = torch.tanh(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            (y,) = ctx.saved_tensors
            out = grad * (1 - y * y)
            if edit == "all":
                return out * float("nan")
            out = out.clone()
            out.view(-1)[0] = float("nan") if edit == "one" else float("inf")
            return out

    return EditedTanh


class Activation(nn.Module):
    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn.apply(x)


def _model(edit: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), Activation(_tanh_with_gradient_edit(edit)), nn.Linear(5, 3))


@pytest.mark.parametrize("mode", ["fast", "default", "full"])
@pytest.mark.parametrize("edit", ["all", "one", "inf"])
def test_a_backward_returning_nan_or_inf_fails_and_names_the_module(edit: str, mode: str) -> None:
    report = check(_model(edit), torch.randn(6, 4), mode=mode, health=False, memory=False)
    assert report.verdict == "failed"
    assert not report.passed
    assert report.localization.faulty_modules == ["1"]
    gc = report.gradient_check
    failing = [t for t in gc.parameters + gc.inputs if not t.passed]
    # the model's input gets the wrong gradient in every mode; full mode also compares the upstream Linear's
    # weight through the whole model (default and fast compare it through its own module, where it is right)
    assert "input[0]" in {t.name for t in failing}
    assert ("0.weight" in {t.name for t in failing}) == (mode == "full")
    # the report stays strict JSON: the failing tensor's worst comparison names its coordinate
    worst = next(t.worst for t in failing if t.worst is not None)
    assert worst.index is not None
    json.loads(report.to_json())


def test_comparisons_with_a_nan_analytic_value_never_pass() -> None:
    from gradcheck_service.checks.gradients.gradcheck import Comparison

    comparison = Comparison(
        index=torch.zeros((3, 1), dtype=torch.long),
        analytic=torch.tensor([float("nan"), float("inf"), 1.0], dtype=torch.float64),
        numeric=torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64),
        tolerance=torch.tensor([1e-6, float("inf"), 1e-6], dtype=torch.float64),
        kink=torch.zeros(3, dtype=torch.bool),
    )
    assert comparison.failed.tolist() == [True, False, False]  # an infinite tolerance is the caller's to avoid
    from gradcheck_service.checks.gradients.finite_difference import tolerance

    tol = tolerance(comparison.analytic, comparison.numeric, torch.zeros(3, dtype=torch.float64), 10.0,
                    torch.float64)
    assert torch.isfinite(tol).all()


class LogOfInput(nn.Module):
    """Finite weights, but the loss is NaN at the point: the log of a negative number."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.linear(x) - 100.0)


def test_a_loss_not_finite_at_the_point_is_inconclusive_with_the_reason() -> None:
    torch.manual_seed(0)
    report = check(LogOfInput(), torch.randn(2, 3), health=False, memory=False)
    assert report.verdict == "inconclusive"
    assert not report.passed
    assert not report.gradient_check.loss_finite
    assert "not finite" in " ".join(report.inconclusive_because)
    json.loads(report.to_json())
