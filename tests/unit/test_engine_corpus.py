"""The engine's verdicts on a corpus of seeded backward bugs and of correct-but-tricky models."""

from __future__ import annotations

import pytest
import torch

from gradcheck_service import check
from tests.fixtures.buggy_models import BUGGY, CustomLinear, LinearWrongColumn
from tests.fixtures.correct_models import CORRECT

FAST = {"health": False, "memory": False}


@pytest.mark.parametrize("case", sorted(BUGGY))
def test_seeded_bug_fails_and_is_localized(case: str) -> None:
    model, inputs, faulty = BUGGY[case]()
    report = check(model, inputs, mode="full", **FAST)
    assert not report.passed
    assert not report.gradient_check.passed
    assert any(not t.passed for t in report.gradient_check.parameters + report.gradient_check.inputs)
    assert report.localization.performed
    assert report.localization.faulty_modules == [faulty], report.localization.model_dump()


@pytest.mark.parametrize("case", sorted(CORRECT))
def test_correct_model_passes(case: str) -> None:
    model, inputs, options = CORRECT[case]()
    report = check(model, inputs, **options, **FAST)
    failing = [(t.name, t.max_rel_error, t.worst) for t in report.gradient_check.parameters
               + report.gradient_check.inputs if not t.passed]
    assert report.passed, failing
    assert not report.localization.performed


def test_wrong_activation_is_blamed_not_the_linear_layers_before_it() -> None:
    model, inputs, _ = BUGGY["wrong_activation_derivative"]()
    report = check(model, inputs, mode="full", **FAST)
    by_name = {m.module: m for m in report.localization.modules}
    assert not by_name["3"].passed and by_name["3"].blamed
    assert by_name["0"].passed and by_name["2"].passed  # their gradients are corrupted, their backward is not
    # Every parameter upstream of the bug fails the whole-model check; the ones after it pass.
    verdicts = {t.name: t.passed for t in report.gradient_check.parameters}
    assert not verdicts["0.weight"] and not verdicts["2.weight"]
    assert verdicts["4.weight"] and verdicts["6.weight"]


def test_tenth_of_a_percent_error_fails_where_torch_gradcheck_passes() -> None:
    model, inputs, _ = BUGGY["off_by_a_tenth_of_a_percent"]()
    model = model.double()
    x = inputs[0].double().requires_grad_()
    # torch's default rtol=1e-3 accepts a 0.1 % error ...
    assert torch.autograd.gradcheck(lambda t: model(t), (x,), raise_exception=False)
    # ... the calibrated check does not.
    report = check(model, (x.detach(),), mode="full", **FAST)
    assert not report.passed
    worst = max(report.gradient_check.inputs[0].max_rel_error, 0)
    assert 5e-4 < worst < 2e-3


def test_huge_magnitudes_pass_where_torch_gradcheck_fails() -> None:
    model, inputs, options = CORRECT["very_large_magnitudes"]()
    model = model.double()
    x = inputs[0].double()
    out = model(x)
    assert out.abs().max() > 1e9
    assert not torch.autograd.gradcheck(lambda t: model(t), (x.clone().requires_grad_(),), raise_exception=False)
    assert check(model, (x,), **options, **FAST).passed


def test_unused_parameter_passes_marked_unused_and_frozen_is_listed() -> None:
    model, inputs, options = CORRECT["unused_and_frozen"]()
    report = check(model, inputs, **options, **FAST)
    by_name = {t.name: t for t in report.gradient_check.parameters}
    assert by_name["unused.weight"].unused and by_name["unused.weight"].passed
    assert not by_name["used.weight"].unused
    assert report.gradient_check.frozen_parameters == ["frozen.weight", "frozen.bias"]


def test_detached_parameter_fails_as_missing_gradient() -> None:
    model, inputs, _ = BUGGY["detached_parameter"]()
    report = check(model, inputs, mode="full", **FAST)
    weight = next(t for t in report.gradient_check.parameters if t.name == "2.weight")
    assert weight.unused and not weight.passed
    assert weight.worst is not None and weight.worst.analytic == 0.0 and weight.worst.numeric != 0.0


def test_unpromotable_model_is_checked_in_its_own_dtype_and_says_so() -> None:
    model, inputs, options = CORRECT["float32_pinned"]()
    report = check(model, inputs, **options, **FAST)
    assert report.passed
    assert report.gradient_check.dtype == "float32" and not report.gradient_check.promoted
    assert any("own dtype" in w for w in report.warnings)


def test_boundary_bug_is_found_in_default_mode_on_a_large_tensor() -> None:
    model, inputs, _ = BUGGY["wrong_boundary_coordinate"]()
    report = check(model, inputs, mode="default", max_coordinates=4, sample_coordinates=2, **FAST)
    scale = next(t for t in report.gradient_check.parameters if t.name == "2.scale")
    assert scale.coverage == "sampled" and not scale.passed


def test_fast_mode_uses_probes_only_and_still_catches_a_bug() -> None:
    model, inputs, _ = BUGGY["wrong_embedding_row"]()
    report = check(model, inputs, mode="fast", **FAST)
    emb = report.gradient_check.parameters[0]
    assert emb.coverage == "probes" and emb.coordinates_checked == 0 and emb.probes > 0
    assert not emb.passed


def test_second_order_check_passes_on_smooth_model() -> None:
    model, inputs, _ = CORRECT["correct_custom_function"]()
    report = check(model, inputs, order=2, **FAST)
    assert report.passed and report.gradient_check.second_order


def test_exact_relu_kink_is_detected_not_reported_as_a_bug() -> None:
    # A pre-activation exactly at 0: the central differences there average the two one-sided slopes (torch's
    # gradcheck reports a mismatch); the check must recognise the kink and leave it out of the verdict.
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.2], [-0.3, 0.8]]))
        model[0].bias.zero_()
    x = torch.tensor([[1.0, 1.0], [0.3, -0.7]], dtype=torch.float64)
    assert not torch.autograd.gradcheck(lambda t: model(t), (x.clone().requires_grad_(),), raise_exception=False)
    report = check(model, x, mode="full", **FAST)
    assert report.passed
    kinks = {t.name: t.kinks for t in report.gradient_check.parameters + report.gradient_check.inputs}
    assert kinks["0.weight"] > 0 and kinks["input[0]"] > 0 and kinks["2.weight"] == 0


def test_default_mode_catches_one_wrong_column_of_a_large_tensor() -> None:
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 96), torch.nn.Tanh(), CustomLinear(LinearWrongColumn, 96),
                                torch.nn.Linear(96, 2))
    report = check(model, torch.randn(4, 8), mode="default", **FAST)
    weight = next(t for t in report.gradient_check.parameters if t.name == "2.weight")
    assert weight.coverage == "sampled" and weight.numel > 4096 and weight.probes > 0
    assert not weight.passed
    assert report.localization.faulty_modules == ["2"]
