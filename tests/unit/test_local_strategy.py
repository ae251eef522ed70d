"""Default mode's local strategy: parameters checked through their own module's call, composition by joint probes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from gradcheck_service import check
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


@pytest.mark.parametrize("recheck", [False, True], ids=["local-report", "recheck"])
def test_a_bug_no_submodule_owns_fails_the_joint_probes_and_names_the_parent(recheck: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.Linear(8, 3))
    report = check(model, (torch.randn(5, 6),), recheck=recheck, **QUICK)
    gc = report.gradient_check
    assert report.verdict == "failed"
    assert gc.composition is not None and not gc.composition.passed  # every local check alone would pass
    # With recheck the failure is reported tensor by tensor, as the whole-model check sees it; without, the report
    # is the local one.
    assert gc.strategy == ("global" if recheck else "local")
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


def test_a_failing_default_report_comes_from_the_local_checks_and_names_the_coordinate() -> None:
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
    # Module 2's own parameters failed their local check: localization takes that as measured.
    two = next(m for m in report.localization.modules if m.module == "2")
    assert not two.passed and two.blamed and two.probes == 0 and "local check failed" in (two.detail or "")


def test_a_bug_no_module_owns_fails_the_verdict_without_the_whole_model_check() -> None:
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


# A model that cannot be batched is evaluated one forward at a time: its re-check takes minutes even at 4k
# parameters, which is why it runs on request alone (not tried here with recheck for that reason).
@pytest.mark.parametrize(("fn", "recheck"), [(WrongGrad, False), (WrongGrad, True), (_PlainWrongGrad, False)],
                         ids=["batched-local-report", "batched-recheck", "sequential-local-report"])
def test_the_whole_model_re_check_runs_on_request_alone(fn: Any, recheck: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), _Wrong(fn), nn.Linear(256, 2))
    report = check(model, (torch.randn(4, 16),), recheck=recheck, **QUICK)
    gc = report.gradient_check
    assert report.verdict == "failed" and gc.strategy == ("global" if recheck else "local")
    assert report.localization.faulty_modules == ["2"]
    if recheck:  # tensor by tensor through the whole model: every weight before the bug fails
        assert not {t.name: t for t in gc.parameters}["0.weight"].passed
