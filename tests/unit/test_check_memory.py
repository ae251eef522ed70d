"""The check's own peak memory, against one training step of the same model, each in a fresh process.

The model is wide (16.8M parameters, 67 MB in float32) and its batch tiny, so its parameters are what memory
holds: a check that copies them once per probe, or per evaluation, shows at once. Each figure is the peak
resident set size of a fresh interpreter (imports included), as a user's CI job pays it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_RUN = r"""
import json, sys, torch
from torch import nn
from gradcheck_service.checks.engine import process_peak_rss
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(2048, 4096), nn.Tanh(), nn.Linear(4096, 2048))
x = torch.randn(2, 2048)
loss = lambda out, *_: out.square().sum()
built = process_peak_rss()
verdict = None
if sys.argv[1] == "step":
    loss(model(x)).backward()
else:
    from gradcheck_service import check
    report = check(model, x, loss, health=False, memory=False)
    verdict = report.verdict
    assert report.timings.peak_rss_bytes == process_peak_rss()
print(json.dumps({"built": built, "peak": process_peak_rss(), "verdict": verdict}))
"""


def _fresh(what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _RUN, what], capture_output=True, text=True, timeout=600, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak resident memory is read from /proc")
def test_a_check_needs_at_most_three_training_steps_of_memory() -> None:
    step, checked = _fresh("step"), _fresh("check")
    assert checked["verdict"] == "passed"
    # A training step of this model: the interpreter, torch, the parameters and their gradients (~370 MB).
    # The check holds the float64 working parameters and autograd's float64 gradients beside the model's own,
    # and each probe a chunk at a time (~870 MB); one dense copy per probe was 1.6 GB.
    assert checked["peak"] <= 3.0 * step["peak"], (checked, step)


def test_a_memory_budget_bounds_batched_evaluations_and_says_when_the_process_went_over() -> None:
    import torch
    from torch import nn

    from gradcheck_service import check
    from gradcheck_service.checks.gradients.evaluator import LossEvaluator, Target

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)).double()
    x = torch.randn(8, 64, dtype=torch.float64)
    weight = Target("parameter", "0.weight", model[0].weight.detach())
    roomy = LossEvaluator(model, (x,), lambda out, *_: out.sum(), 0)
    tight = LossEvaluator(model, (x,), lambda out, *_: out.sum(), 0, memory_budget_bytes=100_000)
    assert roomy._chunk(weight) == 256 and tight._chunk(weight) == 1  # a perturbed 32 KiB weight + its delta each

    report = check(model, x, health=False, memory=False, memory_budget_bytes=2**20)
    assert report.verdict == "passed"
    assert any("went over the memory budget" in note for note in report.warnings)
