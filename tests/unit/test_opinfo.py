"""check() on PyTorch's own operator database: no crash and no false alarm where torch.autograd.gradcheck agrees.

For every OpInfo operator that supports autograd, the first float64 sample becomes a plain function whose
arguments are the sample's differentiable float tensors (the input and any float tensor among the args and
kwargs that the sample marks ``requires_grad``; everything else is held fixed), built exactly as PyTorch's own
gradient tests build it (the operator's ``gradcheck_wrapper`` and the sample's ``output_process_fn_grad``).
The operator is in scope when ``torch.autograd.gradcheck`` accepts that function; ``check()`` must then neither
raise nor report a failure with default options (an ``inconclusive`` verdict with its reason is allowed: gradcheck
also accepts a zero-size sample or one that is all kinks). An operator out of scope is skipped with gradcheck's
own reason, so every one is accounted for.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from gradcheck_service import check

# PyTorch's test utilities change process-wide state when imported: they freeze torch.backends flags (setting
# e.g. torch.backends.cudnn.deterministic then raises) and set environment variables. Undo both, so the rest of
# the test session runs as it would without this module.
_flags_were_frozen = torch.backends.flags_frozen()
_environment = dict(os.environ)
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.opinfo.core import OpInfo, SampleInput  # noqa: E402

if not _flags_were_frozen:
    # No public switch undoes torch.backends.disable_global_flags(); its flag is a global of that module.
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
for _name in set(os.environ) - set(_environment):
    del os.environ[_name]

pytestmark = pytest.mark.slow

# gradcheck's default (slow) mode builds the whole Jacobian one input coordinate at a time: minutes for the few
# samples with thousands of input elements (sort and msort 8,000, slice_scatter and ctc_loss 16,000). Above this
# many input elements gradcheck runs in its fast mode (random projections of the same Jacobian, same tolerances),
# which accepts at least as readily, so the set of operators check() is held to can only grow.
SLOW_GRADCHECK_MAX_INPUT_NUMEL = 2000

# Operators gradcheck accepts but check() reports, each with its cause: open defects of check() (issue 10), not
# exclusions. The mark is strict, so it fails as soon as the operator passes and must then be removed.
@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Every sample is tiny: intra-op threads only contend (10-100x slower on two busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def op_id(op: OpInfo) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


AUTOGRAD_OPS = [op for op in op_db if op.supports_autograd]


def first_float64_sample(op: OpInfo) -> SampleInput | None:
    torch.manual_seed(0)  # some sample generators draw random shapes or values
    return next(iter(op.sample_inputs("cpu", torch.float64, requires_grad=True)), None)


def as_function(op: OpInfo, sample: SampleInput) -> tuple[Callable[..., Any], tuple[torch.Tensor, ...]]:
    """The sample as ``fn(*float_tensors)`` and those tensors (detached: check() owns their gradients)."""
    leaves, spec = tree_flatten((sample.input, sample.args, sample.kwargs))
    free = [i for i, leaf in enumerate(leaves)
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.requires_grad]
    fixed = [leaf.detach() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]

    def fn(*tensors: torch.Tensor) -> Any:
        values = list(fixed)
        for i, t in zip(free, tensors, strict=True):
            values[i] = t
        inp, args, kwargs = tree_unflatten(values, spec)
        out = op.gradcheck_wrapper(op.get_op(), inp, *args, **kwargs)
        return sample.output_process_fn_grad(out) if sample.output_process_fn_grad is not None else out

    fn.__qualname__ = op_id(op)
    return fn, tuple(leaves[i].detach() for i in free)


def gradcheck_rejects(fn: Callable[..., Any], args: tuple[torch.Tensor, ...]) -> str | None:
    """None when torch.autograd.gradcheck (default tolerances) accepts ``fn`` at ``args``, else its reason."""
    fast = sum(a.numel() for a in args) > SLOW_GRADCHECK_MAX_INPUT_NUMEL
    try:
        torch.autograd.gradcheck(fn, tuple(a.clone().requires_grad_(True) for a in args), fast_mode=fast)
    except Exception as exc:  # GradcheckError, or the function itself failing under gradcheck
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
    return None


def _mark(op: OpInfo) -> Any:
    name = op_id(op)
    return pytest.param(op, id=name)


@pytest.mark.parametrize("op", [_mark(op) for op in AUTOGRAD_OPS])
def test_no_false_alarm_where_gradcheck_accepts(op: OpInfo) -> None:
    with warnings.catch_warnings():
        # The operators' own warnings (deprecations, "this op is nondeterministic"), not the check's.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        sample = first_float64_sample(op)
        if sample is None:
            pytest.skip("no float64 sample on the CPU")
        fn, args = as_function(op, sample)
        if not args:
            pytest.skip("the sample has no differentiable float tensor")
        rejected = gradcheck_rejects(fn, args)
        if rejected is not None:
            pytest.skip(f"torch.autograd.gradcheck rejects it: {rejected}")
        report = check(fn, args)
    failing = [t for t in report.gradient_check.inputs if not t.passed]
    assert not report.failed_because and not failing, (report.failed_because, [
        (t.name, t.shape, f"err/tol {t.max_error_ratio:.3g}", t.worst, t.note) for t in failing])
    # Not a failure, but not a pass either: an inconclusive verdict must say why (zero-size tensors, nothing but
    # kinks, a gradient that is exactly zero).
    assert report.passed or getattr(report, "inconclusive_because", None), report
