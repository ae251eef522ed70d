"""Kernels computing below float64 inside a promoted model are compared at their own precision, inputs included."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_service import check
from tests.fixtures import float32_kernels


def test_a_correct_float32_kernel_passes_with_its_precision_said() -> None:
    report = check(*float32_kernels.build("right"), health=False, memory=False)
    assert report.verdict == "passed", (report.failed_because, report.inconclusive_because)
    gc = report.gradient_check
    assert all(t.kinks == 0 and t.coordinates_checked + t.probes > 0 for t in gc.parameters)
    norm = next(t for t in gc.parameters if t.name == "1.weight")
    assert "steps sized for float32" in norm.method


@pytest.mark.parametrize("bug", ["10% off", "no mean"])
@pytest.mark.parametrize("arithmetic", [np.float32, np.float64])
def test_a_norm_whose_backward_is_wrong_only_in_its_input_gradient_is_named(bug: str, arithmetic: type) -> None:
    report = check(*float32_kernels.build(bug, arithmetic), health=False, memory=False)
    assert report.verdict == "failed"
    assert report.localization.faulty_modules == ["1"]
    gc = report.gradient_check
    failing = {t.name for t in gc.parameters + gc.inputs if not t.passed}
    assert "input[0]" in failing and "1.weight" not in failing  # upstream is wrong, the norm's own weight is not
