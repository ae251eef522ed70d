"""The small shared vocabulary of the library: option values, verdicts, exit codes and the loss callable.

Every alias lives here once, so the options, the report, the command line, CI and the pytest plugin spell the
same values (the values of :class:`~gradcheck_service.options.CheckOptions` fields are these literals).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    import torch

Mode = Literal["full", "default", "fast"]
FailOn = Literal["vanishing", "exploding", "nonfinite", "dead_relu", "checkpoint_mismatch", "precision", "underflow"]
Precision = Literal["bf16", "fp16"]
Device = Literal["cpu", "cuda"]
Verdict = Literal["passed", "failed", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = ("passed", "failed", "inconclusive")
# A loss: the model's output(s) -> a scalar tensor (the default is a fixed random projection of the output).
LossFn: TypeAlias = "Callable[..., torch.Tensor]"


class ExitCode(IntEnum):
    """The exit status of ``check``, ``submit`` and ``ci``, the same in each."""

    PASSED = 0
    FAILED = 1  # a failed verdict, and an inconclusive one unless --allow-inconclusive
    BAD_INPUT = 2  # the model file, spec, options or configuration could not be used
    ERROR = 3  # the check could not run to a verdict (a service run that ended in an error, a crash)


def verdict_exit_code(verdict: str, allow_inconclusive: bool = False) -> ExitCode:
    """The exit code of a finished check: 0 passed, 1 failed, and 1 for inconclusive too (not passing: too little
    was compared) unless inconclusive is allowed."""
    accepted = ("passed", "inconclusive") if allow_inconclusive else ("passed",)
    return ExitCode.PASSED if verdict in accepted else ExitCode.FAILED
