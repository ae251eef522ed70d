"""GPU autograd against the float64 CPU reference. The CUDA cases run wherever a GPU is present."""

from __future__ import annotations

import pytest
import torch

from gradcheck_service import check
from gradcheck_service.checks.engine import CheckError
from tests.fixtures.buggy_models import BUGGY
from tests.fixtures.correct_models import CORRECT

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
QUICK = {"health": False, "memory": False}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this case is about machines without CUDA")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error() -> None:
    model, inputs, options = CORRECT["correct_custom_function"]()
    with pytest.raises(CheckError, match="no CUDA device"):
        check(model, inputs, device="cuda", **QUICK)


@pytest.mark.cuda
@needs_cuda
def test_correct_model_passes_on_cuda() -> None:
    model, inputs, options = CORRECT["conv_net"]()
    report = check(model, inputs, **{**options, "device": "cuda"}, **QUICK)
    assert report.passed and report.gradient_check.device == "cuda"


@pytest.mark.cuda
@needs_cuda
def test_seeded_bug_fails_on_cuda() -> None:
    model, inputs, _ = BUGGY["missing_factor"]()
    report = check(model, inputs, device="cuda", **QUICK)
    assert not report.gradient_check.passed
