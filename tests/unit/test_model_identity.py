"""The model checked is the model the user runs: closures, attributes and parameter hooks see what is checked."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from gradcheck_service import check
from tests.fixtures import closure_gpt

FIXTURE = Path(closure_gpt.__file__)


@pytest.fixture
def gelu_backward() -> Iterator[None]:
    yield
    closure_gpt.GELU_BACKWARD = "right"


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_gpt_calling_its_mlp_through_a_lambda_is_checked_in_float64_with_every_tensor_compared() -> None:
    model, idx = closure_gpt.build()
    before = _state(model)
    report = check(model, idx, closure_gpt.loss_fn)
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    gc = report.gradient_check
    assert gc.dtype == "float64" and gc.promoted
    assert not report.warnings
    mlp = [t for t in gc.parameters if ".mlp." in t.name]
    assert len(mlp) == 8 and all(not t.unused and t.coordinates_checked + t.probes > 0 for t in mlp)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())


def test_a_wrong_activation_backward_reached_through_the_lambda_fails_and_is_named(gelu_backward: None) -> None:
    closure_gpt.GELU_BACKWARD = "no pdf"
    model, idx = closure_gpt.build()
    report = check(model, idx, closure_gpt.loss_fn, health=False, memory=False)
    assert report.verdict == "failed"
    assert set(report.localization.faulty_modules) == {"h.0.mlp.act", "h.1.mlp.act"}


def test_a_hook_on_a_parameter_changes_what_is_compared() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    observed: list[torch.dtype] = []
    model[0].weight.register_hook(lambda g: observed.append(g.dtype))  # looks only: the gradient is right
    assert check(model, torch.randn(5, 3), health=False, memory=False).verdict == "passed"
    assert torch.float64 in observed  # the hook ran on the float64 pass: the check ran the user's parameters

    handle = model[2].bias.register_hook(lambda g: 2 * g)  # training would step with twice the gradient
    report = check(model, torch.randn(5, 3), health=False, memory=False)
    assert report.verdict == "failed"
    assert [t.name for t in report.gradient_check.parameters if not t.passed] == ["2.bias"]
    handle.remove()


class SkipsScaleInFloat64(nn.Module):
    """Trains with ``scale`` but leaves it out when run in float64 (as a copy calling the original modules did):
    in the check it gets no gradient and moves nothing, so comparing it says nothing about the model."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.ones_like(self.scale) if self.scale.dtype == torch.float64 else self.scale
        return self.linear(x) * scale


def test_a_parameter_that_trains_but_gets_no_gradient_in_the_check_is_inconclusive() -> None:
    torch.manual_seed(0)
    report = check(SkipsScaleInFloat64(), torch.randn(4, 3))
    assert report.verdict == "inconclusive"
    assert any("scale" in reason and "get a gradient when the model trains" in reason
               for reason in report.inconclusive_because)


def _cli(path: Path) -> subprocess.CompletedProcess[str]:
    code = "from gradcheck_service.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, "check", str(path), "--no-health", "--no-memory"],
                          capture_output=True, text=True, timeout=300)


def test_the_cli_exits_0_for_the_lambda_gpt_and_1_with_the_module_named_for_its_bug(tmp_path: Path) -> None:
    right = _cli(FIXTURE)
    assert right.returncode == 0, right.stdout + right.stderr
    assert "PASSED" in right.stdout and "note" not in right.stdout.lower()
    buggy = tmp_path / "buggy_gpt.py"
    buggy.write_text(FIXTURE.read_text().replace('GELU_BACKWARD = "right"', 'GELU_BACKWARD = "no pdf"'))
    wrong = _cli(buggy)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "h.0.mlp.act" in wrong.stdout
