"""Helpers for a repository's own test suite: ``assert_gradients_ok(model, inputs)`` in any pytest test.

    from gradcheck_service.testing import assert_gradients_ok

    def test_my_layer_backward():
        assert_gradients_ok(MyNet(), torch.randn(4, 8, dtype=torch.float64))

On failure the AssertionError names every failing parameter (with its largest errors and worst coordinate) and the
faulty modules whose own backward is wrong, so the test log says where to look.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .report import Report

# A unit test asks "is my backward right?": the memory profile is skipped, and the gradient-health diagnosis is only
# measured when fail_on asks for one of its findings. Both can be turned on with health=True / memory=True.
_TEST_DEFAULTS = {"memory": False}


def check_gradients(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor], loss_fn: Any = None,
                    **options: Any) -> Report:
    """Run :func:`gradcheck_service.check` with the test defaults above; returns the report without asserting."""
    from .checks.engine import check

    values = {**_TEST_DEFAULTS, "health": bool(options.get("fail_on")), **options}
    return check(model, inputs, loss_fn, **values)


def assert_gradients_ok(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor], loss_fn: Any = None,
                        **options: Any) -> Report:
    """Check ``model``'s backward against finite differences; raise AssertionError naming what is wrong.

    ``inputs`` is one example batch; ``loss_fn(output, *inputs)`` defaults to a random projection of the output;
    ``options`` are :class:`gradcheck_service.options.CheckOptions` fields (``mode``, ``order``, ``fail_on``, ...).
    Returns the report when the check passes.
    """
    from .ci.describe import failure_message

    __tracebackhide__ = True  # pytest: the failure points at the test's call, not inside this helper
    report = check_gradients(model, inputs, loss_fn, **options)
    if not report.passed:
        gc = report.gradient_check
        header = (f"gradients of {report.model.name} are wrong ({gc.mode} mode, {gc.dtype}"
                  f"{'' if gc.promoted else ', not promoted to float64'}):")
        raise AssertionError(f"{header}\n{failure_message(report) or '; '.join(report.failed_because)}")
    return report
