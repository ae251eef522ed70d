"""What the health and memory sections of a default report cost, counted in work rather than in seconds.

A wall-clock bound would be flaky on a shared machine; these guards count what makes the time instead: the passes
of the model the two sections run, and the import of ``torch._dynamo`` (1-6 s in a fresh process, many training
steps of a small model) that a ``TorchDispatchMode`` pulls in unless it opts out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from gradcheck_service.checks.engine import measure_health_and_memory
from gradcheck_service.options import CheckOptions
from gradcheck_service.report import Timings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

_FRESH_CLI = """
import atexit, json, sys
atexit.register(lambda: sys.stderr.write(json.dumps({"dynamo": "torch._dynamo" in sys.modules}) + "\\n"))
from gradcheck_service.cli import main
main()
"""


def test_a_default_cli_check_in_a_fresh_process_does_not_import_dynamo() -> None:
    proc = subprocess.run([sys.executable, "-c", _FRESH_CLI, "check", str(EXAMPLES / "mlp.json"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # the whole default report ran: gradient check, gradient health and the measured memory profile
    assert report["verdict"] == "passed"
    assert report["gradient_norms"]["parameters"] and report["memory"]["peak_increase_bytes"] > 0
    assert report["memory"]["peak_method"].startswith("allocation tracking")
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"dynamo": False}


class _Counted(nn.Module):
    """A small MLP that counts its forwards (a pre-hook) and backwards (a hook on its first weight).

    The counts live outside the module: a check puts the module's own attributes back as they were.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
        counts = self.counts = Counter[str]()
        self.register_forward_pre_hook(lambda *_: counts.update(["forwards"]))
        self.body[0].weight.register_hook(lambda grad: counts.update(["backwards"]))

    @property
    def forwards(self) -> int:
        return self.counts["forwards"]

    @property
    def backwards(self) -> int:
        return self.counts["backwards"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _sections(model: _Counted, options: CheckOptions) -> tuple[dict, Timings]:
    timings = Timings()
    sections = measure_health_and_memory(model, (torch.randn(5, 6),), lambda out, _x: out.square().sum(), options,
                                         timings, lambda *_: None)
    return sections, timings


def test_default_health_and_memory_run_two_passes_of_the_model() -> None:
    model = _Counted()
    sections, timings = _sections(model, CheckOptions())
    # one instrumented pass serves both sections, one plain pass gives forward_s and backward_s
    assert (model.forwards, model.backwards) == (2, 2)
    assert set(sections) == {"memory", "gradient_norms", "diagnosis"}
    assert sections["memory"].forward_s > 0 and sections["gradient_norms"].total_norm > 0
    assert timings.memory_s > 0 and timings.health_s == 0  # the shared pass is timed under memory


def test_health_alone_runs_one_pass_and_memory_alone_two() -> None:
    health_only, memory_only = _Counted(), _Counted()
    _sections(health_only, CheckOptions(memory=False))
    _sections(memory_only, CheckOptions(health=False))
    assert (health_only.forwards, health_only.backwards) == (1, 1)
    assert (memory_only.forwards, memory_only.backwards) == (2, 2)


def test_a_compiled_model_gets_the_same_memory_figures_as_the_plain_one() -> None:
    """With dynamo in use the tracker is the variant hidden from it; what it measures does not change."""
    from gradcheck_service.checks.memory.profile import profile_memory

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    x = torch.randn(4, 8)

    def loss(out: torch.Tensor, _x: torch.Tensor) -> torch.Tensor:
        return out.square().sum()

    plain = profile_memory(model, (x,), loss, CheckOptions())
    compiled = profile_memory(torch.compile(model, backend="eager"), (x,), loss, CheckOptions())
    assert "torch._dynamo" in sys.modules
    assert compiled.peak_increase_bytes == plain.peak_increase_bytes > 0
    assert compiled.activation_bytes == plain.activation_bytes > 0
