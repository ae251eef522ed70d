"""A failing check at scale: the GPT-2-small shape (124M parameters) with one seeded wrong backward.

Block 5's MLP activation is replaced by a GELU whose backward forgets the ``x * pdf(x)`` term. Prints the verdict,
the module localization names, how many module calls the bisection checked, and where the time went. The report
is built from the local checks (see "Local strategy" in docs/how-the-check-works.md); a whole-model re-check
(``recheck``) would take hours at this size. ``benchmarks/failing_cost.py`` sets the same bug beside the passing
check, in training steps. ``--size tiny`` runs the 2-layer 32-wide model instead (a few seconds).

Run: ``python benchmarks/failing_large.py [--size tiny|small] [--block N]``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradcheck_service import check
from gradcheck_service.definitions import load_definition


class _GeluWithoutPdfTerm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.nn.functional.gelu(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        return grad * cdf  # the x * pdf(x) term is missing


class BuggyGelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GeluWithoutPdfTerm.apply(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="small")
    parser.add_argument("--block", type=int, default=5)
    args = parser.parse_args()
    os.environ["GRADCHECK_BENCH_GPT"] = args.size
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    definition = load_definition(str(Path(__file__).parent / "models" / "gpt.py"))
    blocks = definition.module.inner.transformer.h
    block = min(args.block, len(blocks) - 1)
    blocks[block].mlp.act = BuggyGelu()
    t0 = time.perf_counter()
    report = check(definition.module, definition.inputs, definition.loss_fn, health=False, memory=False)
    wall = time.perf_counter() - t0
    gc, loc = report.gradient_check, report.localization
    print(f"{report.model.trainable_parameters:,} parameters, seeded bug in block {block}: {report.verdict}")
    print(f"  named: {', '.join(loc.faulty_modules) or '(none)'}")
    print(f"  bisection checked {loc.calls_checked} of {loc.calls_recorded} module calls ({loc.evaluations} "
          f"evaluations of single calls)")
    print(f"  strategy {gc.strategy}, {gc.evaluations} evaluations, joint probes "
          f"{'passed' if gc.composition and gc.composition.passed else 'failed'}")
    print(f"  {wall:.1f} s in all: gradient check {report.timings.gradient_check_s:.1f} s, localization "
          f"{report.timings.localization_s:.1f} s")


if __name__ == "__main__":
    main()
