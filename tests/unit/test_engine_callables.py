"""check() on what a kernel author checks first: parameter-free modules, custom Functions and plain functions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import Function

from gradcheck_service import check
from gradcheck_service.checks.engine import CheckError


class SoftplusFn(Function):
    """softplus(x) = log(1 + e^x), whose derivative is sigmoid(x)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        return torch.log1p(torch.exp(x))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class WrongSoftplusFn(SoftplusFn):
    """The same forward with a backward 1 % too large."""

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x) * 1.01


class FunctionAsModule(nn.Module):
    """A custom Function wrapped as a module, as a kernel author writes it: no parameters of its own."""

    def __init__(self, fn: type[Function]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fn.apply(x) * y


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)


def test_parameter_free_custom_function_passes_when_right() -> None:
    report = check(FunctionAsModule(SoftplusFn), _inputs())
    assert report.passed, report.failed_because
    assert report.model.trainable_parameters == 0
    assert [t.name for t in report.gradient_check.inputs] == ["input[0]", "input[1]"]
    assert all(t.coordinates_checked == 20 for t in report.gradient_check.inputs)


def test_parameter_free_custom_function_fails_when_wrong_and_names_the_input() -> None:
    report = check(FunctionAsModule(WrongSoftplusFn), _inputs(), health=False, memory=False)
    assert not report.passed
    by_name = {t.name: t for t in report.gradient_check.inputs}
    assert not by_name["input[0]"].passed  # the Function's input carries the wrong derivative
    assert by_name["input[1]"].passed  # the product's other factor is right
    assert report.failed_because == ["gradient check failed for input[0] in <root>"]


def test_custom_function_apply_is_checked_and_named_after_its_class() -> None:
    report = check(WrongSoftplusFn.apply, torch.randn(6), health=False, memory=False)
    assert not report.passed
    assert report.model.name == "WrongSoftplusFn.apply"


def test_plain_function_of_tensors_passes_and_is_named_after_itself() -> None:
    def scaled_dot(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.T / 2.0, dim=-1)

    report = check(scaled_dot, _inputs())
    assert report.passed, report.failed_because
    assert "scaled_dot" in report.model.name
    assert report.model.parameters == 0


def test_lambda_with_integer_argument_checks_only_the_float_input() -> None:
    index = torch.tensor([2, 0, 1])
    report = check(lambda x, i: x[i].sin(), (torch.randn(3, 4), index), health=False, memory=False)
    assert report.passed
    assert [t.name for t in report.gradient_check.inputs] == ["input[0]"]


def test_parameter_free_report_describes_the_inputs_in_health_and_memory() -> None:
    x, y = _inputs()
    report = check(FunctionAsModule(SoftplusFn), (x, y))
    assert report.gradient_norms is not None and report.memory is not None
    assert report.gradient_norms.parameters == []
    inputs = {g.name: g for g in report.gradient_norms.inputs}
    assert set(inputs) == {"input[0]", "input[1]"}
    assert all(g.has_gradient and g.l2_norm > 0 and g.shape == [4, 5] for g in inputs.values())
    assert report.memory.parameter_bytes == 0 and report.memory.gradient_bytes == 0
    assert report.memory.resident_bytes >= x.numel() * x.element_size() * 2  # the two inputs
    assert report.memory.activation_bytes > 0  # the Function saved its input for backward
    assert x.grad is None and not x.requires_grad  # the caller's tensors were not touched


def test_frozen_model_checks_its_inputs_too() -> None:
    model = nn.Linear(5, 3).requires_grad_(False)
    report = check(model, torch.randn(4, 5))
    assert report.passed, report.failed_because
    assert [g.name for g in report.gradient_norms.inputs] == ["input[0]"]  # type: ignore[union-attr]


def test_nothing_to_differentiate_is_a_check_error() -> None:
    with pytest.raises(CheckError, match="no parameter that requires grad and no floating-point input"):
        check(lambda i: i.float() * 2, torch.arange(6))


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 2)])
def test_zero_size_input_has_nothing_to_compare_and_does_not_crash(shape: tuple[int, ...]) -> None:
    def fn(empty: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x.exp() + empty.sum()

    report = check(fn, (torch.randn(shape), torch.randn(3)))
    assert report.passed, report.failed_because
    empty, full = report.gradient_check.inputs
    assert empty.numel == 0 and empty.coordinates_checked == 0 and empty.probes == 0 and empty.passed
    assert "zero-size" in (empty.note or "")
    assert full.coordinates_checked == 3


def test_zero_size_output_of_a_parameter_free_module() -> None:
    report = check(lambda x: torch.linalg.det(x), torch.randn(0, 3, 3))
    assert report.gradient_check.inputs[0].numel == 0
    assert report.gradient_check.inputs[0].passed


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        (lambda x: x.abs(), torch.randn(3, dtype=torch.complex64), r"input\[0\] is complex \(complex64\)"),
        (lambda x, y: x * y.real, (torch.randn(3), torch.randn(3, dtype=torch.complex128)), r"input\[1\] is complex"),
        (lambda x: x.to_dense().sum(), torch.eye(3).to_sparse(), r"input\[0\] has layout sparse_coo"),
    ],
)
def test_complex_and_sparse_inputs_are_refused_by_name(model, inputs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckError, match=message):
        check(model, inputs)


def test_complex_parameter_is_refused_by_name() -> None:
    class Phase(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rotation = nn.Parameter(torch.ones(3, dtype=torch.complex64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * self.rotation).real

    with pytest.raises(CheckError, match="parameter rotation is complex"):
        check(Phase(), torch.randn(3))


def test_not_callable_is_a_check_error() -> None:
    with pytest.raises(CheckError, match="callable"):
        check(42, torch.ones(2))  # type: ignore[arg-type]


def test_complex_output_of_real_inputs_is_checked_in_float64() -> None:
    def spectrum(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x * x)

    report = check(spectrum, torch.randn(2, 8), health=False, memory=False)
    assert report.passed, report.failed_because
    assert report.gradient_check.dtype == "float64"  # complex128 is float64 precision, not a lower one


def test_wrong_backward_into_a_complex_output_fails() -> None:
    class HalfImaginary(Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def, override]
            return torch.complex(x, 2 * x)

        @staticmethod
        def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
            return grad.real + grad.imag  # the imaginary part's factor 2 is missing

    report = check(HalfImaginary.apply, torch.randn(5), health=False, memory=False)
    assert not report.passed


def test_sparse_tensor_inside_the_forward_is_profiled() -> None:
    def through_sparse(x: torch.Tensor) -> torch.Tensor:
        return (x.to_sparse() * 3.0).to_dense().tanh()

    report = check(through_sparse, torch.randn(4, 3))
    assert report.passed, report.failed_because
    assert report.memory is not None and report.memory.peak_increase_bytes > 0


def test_parameter_free_report_renders_the_inputs_gradients() -> None:
    from gradcheck_service.cli.render import render_report

    x, y = (t.double() for t in _inputs())
    report = check(FunctionAsModule(SoftplusFn), (x, y))
    assert report.gradient_norms is not None and report.memory is not None
    assert report.gradient_norms.dtype == "float64" and report.memory.dtype == "float64"  # the inputs' dtype
    text = render_report(report)
    assert "input[0] 4x5: |grad|" in text and "input[1] 4x5: |grad|" in text
