"""Real architectures from `transformers` (tiny configs, random init): right verdicts, bugs named where they live.

The models are built as their authors wrote them, with their own losses; only the seeded bugs are ours: a custom
Function replacing one submodule, a ``.detach()`` inside a block's forward, a wrong backward inside a
float32-internal path, a softmax submodule with a diagonal-only backward behind an additive attention mask.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

from gradcheck_service import check
from tests.fixtures.hf_models import BUILDERS, Classifier
from tests.fixtures.hf_seeded import SEEDED

QUICK: dict[str, Any] = {"health": False, "memory": False}


def _summary(report: Any) -> str:
    gc = report.gradient_check
    bad = [(t.name, t.max_error_ratio, t.note) for t in gc.parameters + gc.inputs if not t.passed or not t.resolved]
    return f"{report.verdict} {report.failed_because} {report.inconclusive_because} {bad[:4]} {report.warnings}"


@pytest.mark.slow
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_real_architecture_passes_with_real_coverage(name: str, train: bool) -> None:
    model, inputs, loss = BUILDERS[name]()
    model.train(train)
    report = check(model, inputs, loss, **QUICK)
    assert report.verdict == "passed", _summary(report)
    gc = report.gradient_check
    assert gc.dtype == "float64" and gc.promoted and gc.reproducible
    tensors = gc.parameters + gc.inputs
    assert len(gc.parameters) == len([p for p in model.parameters() if p.requires_grad])
    # Every tensor compared: tiny ones coordinate by coordinate, the rest by probes that bound the error any
    # single coordinate could hide.
    assert all(t.coordinates_checked + t.probes > 0 for t in tensors if t.numel)
    assert all(t.undetected_error is not None for t in tensors if t.numel), _summary(report)
    # A gradient that is zero by symmetry (a key bias under softmax) stays unresolved; real ones are seen.
    unresolved = [t.name for t in tensors if not t.resolved]
    assert len(unresolved) <= max(1, len(tensors) // 10), _summary(report)


# The seeded bugs (tests/fixtures/hf_seeded.py) are Functions in the vmap-compatible style, as in
# tests/fixtures/seeded_functions.py.


@pytest.mark.parametrize("case", sorted(SEEDED))
def test_seeded_bug_in_a_real_architecture_is_named(case: str) -> None:
    model, inputs, loss, faulty = SEEDED[case](True)
    report = check(model, inputs, loss, **QUICK)
    assert report.verdict == "failed"
    assert report.localization.faulty_modules == [faulty], report.localization.note
    if case == "llama_rmsnorm":  # the float32-internal RMSNorm is computed in float64 all the same
        assert any("kept float64" in w for w in report.warnings)


def test_pad_tokens_in_the_loss_are_not_a_false_alarm() -> None:
    model, (ids,), loss = BUILDERS["gpt2"]()
    model.inner.transformer.wte.padding_idx = 0
    ids = ids.clone()
    ids[:, -3:] = 0  # pad tokens inside the sequence the loss is computed over
    report = check(model, (ids,), loss, **QUICK)
    assert report.verdict == "passed", _summary(report)
    wte = next(t for t in report.gradient_check.parameters if t.name.endswith("wte.weight"))
    assert wte.note is not None and "padding_idx" in wte.note


class _Reversible(torch.autograd.Function):
    """A reversible residual pair (y1 = x1 + f(x2), y2 = x2 + g(y1)) that delivers f's and g's weight gradients
    by an inner backward into ``.grad``, as memory-saving reversible layers do; autograd sees no parameter."""

    @staticmethod
    def forward(ctx: Any, x1: torch.Tensor, x2: torch.Tensor, f: nn.Module, g: nn.Module) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            y1 = x1 + f(x2)
            y2 = x2 + g(y1)
        ctx.f, ctx.g = f, g
        ctx.save_for_backward(x1, x2)
        return y1, y2

    @staticmethod
    def backward(ctx: Any, g1: torch.Tensor, g2: torch.Tensor) -> tuple[Any, ...]:
        x1, x2 = (t.detach().requires_grad_(True) for t in ctx.saved_tensors)
        with torch.enable_grad():
            y1 = x1 + ctx.f(x2)
            y2 = x2 + ctx.g(y1)
            torch.autograd.backward((y1, y2), (g1, g2))
        return x1.grad, x2.grad, None, None


class ReversibleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.g = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1, y2 = _Reversible.apply(x[:, :6], x[:, 6:], self.f, self.g)
        return self.head(torch.cat([y1, y2], dim=1))


def test_gradients_delivered_by_an_inner_backward_pass() -> None:
    torch.manual_seed(0)
    report = check(ReversibleNet(), (torch.randn(4, 12),), mode="full", **QUICK)
    assert report.verdict == "passed", _summary(report)
    assert not any(t.unused for t in report.gradient_check.parameters)


class Reseeding(nn.Module):
    """Seeds its dropout from the OS on every forward, behind the check's back (``torch.seed()``, as Reformer calls
    it, is replayed by the check; reading ``os.urandom`` directly cannot be)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
        return nn.functional.dropout(self.lin(x), 0.3, training=True)


def test_a_forward_that_reseeds_its_rng_is_inconclusive() -> None:
    torch.manual_seed(0)
    report = check(Reseeding(), (torch.randn(4, 6),), **QUICK)
    assert report.verdict == "inconclusive" and not report.passed
    assert not report.gradient_check.reproducible
    assert "not reproducible" in report.inconclusive_because[0]


def test_a_model_with_nothing_to_compare_is_not_passed() -> None:
    model = nn.Linear(4, 2)
    model.requires_grad_(False)

    class Shift(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(ids.float())

    with pytest.raises(Exception, match="nothing|requires grad|no parameter"):
        report = check(Shift(), (torch.ones(3, 4, dtype=torch.long),), **QUICK)
        assert report.verdict != "passed"


def test_classifier_wrapper_is_what_users_write() -> None:  # guard: the corpus uses the models' own losses
    model, inputs, _ = BUILDERS["bert"]()
    assert isinstance(model, Classifier) and model(*inputs).dim() == 0
