"""Default mode's local strategy: parameters checked through their own module's call, composition by joint probes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from gradcheck_service import check
from gradcheck_service.checks import engine
from tests.fixtures.seeded_functions import WrongGrad, plain_scaled_grad

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
    # Named by bisection of the module tree: below the passing call of 0.b nothing was checked.
    loc = report.localization
    assert loc.calls_checked < loc.calls_recorded
    assert "0.b.norm" not in {m.module for m in loc.modules} and {"0", "0.a", "0.b", "1"} <= {
        m.module for m in loc.modules}


def _mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 4))


def test_the_passing_check_costs_the_same_evaluations_whatever_the_width() -> None:
    x = torch.randn(8, 32)
    narrow, wide = (check(_mlp(w), (x,), **QUICK) for w in (32, 512))
    assert narrow.verdict == wide.verdict == "passed"
    assert wide.model.parameters > 15 * narrow.model.parameters
    # Every tensor is probed where it is used: the count depends on the modules, not on their parameters.
    assert wide.gradient_check.evaluations == narrow.gradient_check.evaluations <= 200
    assert all(t.undetected_error is not None and t.scope == "local" for t in wide.gradient_check.parameters)
    # Stock Linear layers are probed through their exact linear map: no weight copy, no truncation error.
    assert all("exact linear map" in t.method for t in wide.gradient_check.parameters)


class _CornerOff(torch.autograd.Function):
    """``x @ w.T`` whose weight gradient is off by 1e-3 at [0, 0] alone."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x @ w.T

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, w = ctx.saved_tensors
        gw = grad.T @ x
        gw[0, 0] += 1e-3
        return grad @ w, gw


class CornerOff(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(256, 256) / 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CornerOff.apply(x, self.weight)


def test_a_wrong_coordinate_of_a_large_tensor_is_found_by_in_place_perturbation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), CornerOff(), nn.Tanh(), nn.Linear(256, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = check(model, (torch.randn(4, 16),), **QUICK)
    by_name = {t.name: t for t in report.gradient_check.parameters}
    # 65,536 weights: the sampled coordinates (corners included) are perturbed in place, one at a time.
    assert report.verdict == "failed" and not by_name["2.weight"].passed
    assert by_name["2.weight"].worst is not None and by_name["2.weight"].worst.index == [0, 0]
    assert by_name["2.weight"].failed_coordinates == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert report.localization.faulty_modules == ["2"]


def test_where_the_whole_model_check_is_too_costly_a_failing_report_comes_from_the_local_checks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "GLOBAL_FALLBACK_BUDGET", 0.0)  # as for a 124M-parameter model
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), CornerOff(), nn.Tanh(), nn.Linear(256, 2))
    report = check(model, (torch.randn(4, 16),), **QUICK)
    gc = report.gradient_check
    by_name = {t.name: t for t in gc.parameters}
    assert report.verdict == "failed" and gc.strategy == "local"
    assert not by_name["2.weight"].passed and by_name["2.weight"].scope == "local"
    assert by_name["2.weight"].worst is not None and by_name["2.weight"].worst.index == [0, 0]
    assert by_name["2.weight"].failed_coordinates == 1  # re-checked coordinate by coordinate, through module 2
    assert all(by_name[n].passed for n in by_name if n != "2.weight")
    assert report.localization.faulty_modules == ["2"]
    assert any("not re-run" in note for note in gc.notes)


def test_a_bug_no_module_owns_fails_the_verdict_without_the_whole_model_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "GLOBAL_FALLBACK_BUDGET", 0.0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 6), Block(), nn.Linear(8, 3))  # token ids: no float input to blame
    report = check(model, (torch.randint(0, 10, (5,)),), **QUICK)
    gc = report.gradient_check
    assert report.verdict == "failed" and gc.strategy == "local"
    assert gc.composition is not None and not gc.composition.passed
    assert all(t.passed for t in gc.parameters)  # every module's own backward is right
    assert report.localization.faulty_modules == ["1"]
    assert report.failed_because == ["joint probes through the whole model failed: a wrong gradient arises between "
                                     "modules in 1"]


# Old-style (ctx in forward, no vmap rule): the model cannot run under vmap. Backward 1.5x.
_PlainWrongGrad = plain_scaled_grad(1.5)


class _Wrong(nn.Module):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn.apply(x)


@pytest.mark.parametrize(("fn", "strategy"), [(WrongGrad, "global"), (_PlainWrongGrad, "local")])
def test_a_model_that_cannot_be_batched_counts_as_dearer_to_re_check(
        monkeypatch: pytest.MonkeyPatch, fn: Any, strategy: str) -> None:
    # ~1e8 evaluations x parameters: affordable batched, 64 times that one evaluation at a time is not.
    monkeypatch.setattr(engine, "GLOBAL_FALLBACK_BUDGET", 1e9)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), _Wrong(fn), nn.Linear(256, 2))
    report = check(model, (torch.randn(4, 16),), **QUICK)
    assert report.verdict == "failed" and report.gradient_check.strategy == strategy
    assert report.localization.faulty_modules == ["2"]
