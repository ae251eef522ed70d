"""The float64 reference stays float64 through a model's own casts; float32 is the fallback only when needed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradcheck_service import check
from tests.fixtures.correct_models import Float32OnlyTanh
from tests.fixtures.seeded_functions import plain_scaled_grad

QUICK: dict[str, Any] = {"health": False, "memory": False}


class UpcastingNorm(nn.Module):
    """RMSNorm written as LLaMA's: the variance is computed in float32, whatever the input dtype."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight * h.to(dtype)


class CastingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.norm = UpcastingNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.softmax(self.norm(self.lin(x)), dim=-1, dtype=torch.float32)
        return scores.float() @ torch.eye(8, dtype=torch.float32)


def test_internal_float32_casts_are_kept_in_float64_and_listed() -> None:
    torch.manual_seed(0)
    report = check(CastingModel(), (torch.randn(4, 8),), mode="full", **QUICK)
    gc = report.gradient_check
    assert report.passed and gc.promoted and gc.dtype == "float64"
    kept = next(w for w in report.warnings if "kept float64" in w)
    assert "Tensor.to" in kept and "softmax" in kept and "Tensor.float" in kept
    # float64 resolution: the worst comparison is many orders of magnitude tighter than float32 could be
    assert max(t.max_rel_error for t in gc.parameters) < 1e-6


class WrongNorm(UpcastingNorm):
    """The same norm with a backward 3 % off, hidden in the float32-internal path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ScaleGrad.apply(super().forward(x))


_ScaleGrad = plain_scaled_grad(1.03)


def test_wrong_backward_in_a_float32_internal_path_is_named() -> None:
    torch.manual_seed(0)
    model = CastingModel()
    model.norm = WrongNorm(8)
    report = check(model, (torch.randn(4, 8),), **QUICK)
    assert not report.passed
    assert report.localization.faulty_modules == ["norm"]


class PinnedMLP(nn.Module):
    def __init__(self, wrong: float = 1.0) -> None:
        super().__init__()
        self.a, self.b, self.wrong = nn.Linear(16, 32), nn.Linear(32, 4), wrong

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = Float32OnlyTanh.apply(self.a(x))
        return self.b(_ScaleBy.apply(h, self.wrong))


class _ScaleBy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def test_float32_fallback_passes_a_correct_model_and_catches_a_few_percent() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    right = check(PinnedMLP(), (x,), **QUICK)
    assert right.passed and not right.gradient_check.promoted and right.gradient_check.dtype == "float32"
    torch.manual_seed(0)
    wrong = check(PinnedMLP(wrong=1.05), (x,), **QUICK)
    assert not wrong.passed
    gc = wrong.gradient_check
    # the wrong gradient reaches everything upstream of the scaling: the model's input (through the whole model)
    assert "input[0]" in [t.name for t in gc.parameters + gc.inputs if not t.passed]


class AutocastBlock(nn.Module):
    """Mixed-precision training code: the projection runs under CPU autocast (bfloat16), the rest in float32."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.proj(x)
        return self.head(torch.tanh(y.float()))


def test_autocast_does_not_lower_the_precision_of_the_float64_reference() -> None:
    """Autocast leaves float64 tensors alone, so the reference compares float64 arithmetic, not bfloat16's."""
    torch.manual_seed(0)
    report = check(AutocastBlock(), torch.randn(4, 8), **QUICK)
    gc = report.gradient_check
    assert report.verdict == "passed" and gc.dtype == "float64"
    assert all(not t.unused and "bfloat16" not in t.method for t in gc.parameters)
    assert max(t.undetected_error or 1.0 for t in gc.parameters) < 1e-6  # bfloat16 steps would allow ~1e-2
