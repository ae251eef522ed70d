"""The library entry point: the model is left untouched, and unusable input is a clear CheckError."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from gradcheck_service import CheckOptions, check
from gradcheck_service.checks.engine import CheckError


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2))
    return model, torch.randn(6, 4)


def test_model_is_exactly_as_before_after_every_section() -> None:
    model, x = _model()
    model.train()
    model[4].eval()  # a mixed-mode model must keep its mix
    model(x).sum().backward()  # existing .grad values must survive
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_grads = [p.grad.clone() for p in model.parameters()]
    before_modes = [m.training for m in model.modules()]
    before_rng = torch.get_rng_state()

    report = check(model, x, checkpointing=True, batch_scaling=True)

    assert report.gradient_check.passed
    after_state = model.state_dict()
    assert before_state.keys() == after_state.keys()
    for k, v in before_state.items():
        assert torch.equal(v, after_state[k]), k  # parameters and running statistics
    assert all(torch.equal(a, p.grad) for a, p in zip(before_grads, model.parameters(), strict=True))
    assert [m.training for m in model.modules()] == before_modes
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), before_rng)


def test_options_can_be_given_as_a_typed_config() -> None:
    model, x = _model()
    report = check(model.eval(), x, options=CheckOptions(mode="fast", health=False, memory=False))
    assert report.options.mode == "fast" and report.gradient_check.mode == "fast"


def test_unknown_option_is_rejected_by_name() -> None:
    model, x = _model()
    with pytest.raises(ValidationError, match="rtol"):
        check(model, x, rtol=1e-3)


@pytest.mark.parametrize(
    ("model", "inputs", "loss_fn", "message"),
    [
        ("not a module", torch.ones(2), None, "torch.nn.Module"),
        (nn.Linear(3, 2), "not a tensor", None, "Tensor"),
        (nn.Linear(3, 2), torch.ones(4, 5), None, "raised RuntimeError"),
        (nn.Linear(3, 2), torch.ones(4, 3), lambda out, *_: out, "scalar"),
    ],
)
def test_unusable_input_raises_check_error_naming_the_problem(model, inputs, loss_fn, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckError, match=message):
        check(model, inputs, loss_fn, health=False, memory=False)


def test_user_loss_function_is_used() -> None:
    torch.manual_seed(0)
    model, x = nn.Linear(3, 2), torch.randn(5, 3)
    target = torch.randn(5, 2)
    report = check(model, x, lambda out, inp: ((out - target) ** 2).mean(), mode="full", health=False, memory=False)
    assert report.passed
    assert report.gradient_check.inputs[0].name == "input[0]"
