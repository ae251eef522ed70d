"""Fused Triton kernels checked on CPU through Triton's interpreter, with the pytest helper and the library.

``triton_repo``'s RMSNorm refuses float64 (its backward's dtype table has none): it is checked in float32, at
float32's precision, and the report says so. Its GEGLU runs in the float64 model but computes in float32 inside:
the check measures that precision. A one-line bug in either backward kernel fails with the module and the Python
module of its kernels named, at about the cost of the passing check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.triton_models import MODULE_OF, copy_repository, load_model, require_triton

require_triton()

from gradcheck_service import check  # noqa: E402
from gradcheck_service.testing import assert_gradients_ok  # noqa: E402

KERNELS = {"norm": {"kernels.rmsnorm.rms_norm_forward", "kernels.rmsnorm.rms_norm_backward"},
           "geglu": {"kernels.geglu.geglu_forward", "kernels.geglu.geglu_backward"}}


@pytest.fixture(scope="module")
def passing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The correct kernels' reports, through the pytest helper (which raises unless the check passes)."""
    root = copy_repository(tmp_path_factory.mktemp("triton") / "repo")
    reports = {}
    for model in ("norm", "geglu"):
        definition = load_model(root, model)
        reports[model] = assert_gradients_ok(definition.module, definition.inputs)
    return reports


def _interpreted(report: Any, model: str) -> None:
    gc = report.gradient_check
    assert {k.name for k in gc.interpreted_kernels} == KERNELS[model]
    assert all(k.precision == "float32" and k.launches > 0 for k in gc.interpreted_kernels)
    assert any(n.startswith("Triton kernels ran in Triton's interpreter on CPU") for n in gc.notes)


def test_rmsnorm_that_refuses_float64_passes_in_float32(passing: dict[str, Any]) -> None:
    report = passing["norm"]
    assert (report.gradient_check.dtype, report.gradient_check.promoted) == ("float32", False)
    assert any("could not run in float64 (KeyError: torch.float64)" in w for w in report.warnings)
    assert all(t.coordinates_checked + t.probes > 0 for t in report.gradient_check.parameters)
    _interpreted(report, "norm")


def test_geglu_computing_in_float32_inside_passes_at_that_precision(passing: dict[str, Any]) -> None:
    report = passing["geglu"]
    assert (report.gradient_check.dtype, report.gradient_check.promoted) == ("float64", True)
    assert any("steps sized for float32" in n for n in report.gradient_check.notes)
    assert all("float64" in k.tensor_dtypes for k in report.gradient_check.interpreted_kernels)
    _interpreted(report, "geglu")


@pytest.mark.parametrize("model", ["norm", "geglu"])
def test_a_one_line_bug_in_a_backward_kernel_fails_named(tmp_path: Path, model: str,
                                                         passing: dict[str, Any]) -> None:
    definition = load_model(copy_repository(tmp_path / "repo", bug=model), model)
    report = check(definition.module, definition.inputs, memory=False)
    module, python_module = MODULE_OF[model]
    assert report.verdict == "failed" and report.localization.faulty_modules == [module]
    blamed = next(m for m in report.localization.modules if m.blamed)
    assert blamed.defined_in == python_module
    # About the cost of the passing check (localization included), not thousands of interpreted launches.
    spent = report.gradient_check.evaluations + report.localization.evaluations
    assert spent <= 2 * passing[model].gradient_check.evaluations, report.timings
    _interpreted(report, model)


def test_the_pytest_helper_names_the_kernel_module(tmp_path: Path) -> None:
    definition = load_model(copy_repository(tmp_path / "repo", bug="norm"), "norm")
    with pytest.raises(AssertionError) as failure:
        assert_gradients_ok(definition.module, definition.inputs)
    assert "RMSNorm, defined in kernels.rmsnorm" in str(failure.value)
