"""A failing check costs about what the passing one does: seeded bugs against their passing twins, in evaluations.

The failing report comes from the local checks, the joint probes and localization by bisection; the whole-model
re-check, coordinate by coordinate, runs only on request (``recheck``) or in full mode.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from gradcheck_service import check
from gradcheck_service.report import Report
from tests.fixtures.hf_seeded import SEEDED

QUICK: dict[str, Any] = {"health": False, "memory": False}
# The target: a failing check within ~10x the passing one (both measured here in evaluations, check and
# localization together).
FAILING_OVER_PASSING = 10


def _spent(report: Report) -> int:
    return report.gradient_check.evaluations + report.localization.evaluations


class _Swish(torch.autograd.Function):
    """A hand-written swish, old style (no vmap rule: evaluated one forward at a time); ``wrong`` drops the
    sigmoid's derivative from the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wrong: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.wrong = wrong
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * (s if ctx.wrong else s * (1 + x * (1 - s))), None


class Swish(nn.Module):
    def __init__(self, wrong: bool) -> None:
        super().__init__()
        self.wrong = wrong

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Swish.apply(x, self.wrong)


def _swish_block(wrong: bool) -> tuple[nn.Module, tuple[torch.Tensor, ...], None, str]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), Swish(wrong), nn.Linear(8, 5))  # 99 parameters
    return model, (torch.randn(4, 6),), None, "1"


CASES = {"swish_block_sequential": _swish_block, "bert_softmax": SEEDED["bert_softmax"]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failing_check_costs_at_most_ten_times_its_passing_twin(case: str) -> None:
    model, inputs, loss, faulty = CASES[case](False)
    passing = check(model, inputs, loss, **QUICK)
    model, inputs, loss, faulty = CASES[case](True)
    failing = check(model, inputs, loss, **QUICK)
    assert passing.verdict == "passed" and failing.verdict == "failed"
    assert failing.localization.faulty_modules == [faulty], failing.localization.note
    assert failing.gradient_check.strategy == "local"  # no whole-model re-check unless asked for
    assert _spent(failing) <= FAILING_OVER_PASSING * _spent(passing), (_spent(failing), _spent(passing))


def test_recheck_re_measures_every_tensor_through_the_whole_model_on_request() -> None:
    model, inputs, loss, faulty = SEEDED["bert_softmax"](True)
    report = check(model, inputs, loss, recheck=True, **QUICK)
    gc = report.gradient_check
    assert report.verdict == "failed" and gc.strategy == "global"
    assert report.localization.faulty_modules == [faulty]
    # Through the whole model every tensor before the softmax sees the wrong gradient, coordinate by coordinate.
    assert any(t.scope == "global" and not t.passed and t.failed_coordinates for t in gc.parameters)
