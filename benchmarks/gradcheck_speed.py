"""Speed of the gradient check against torch.autograd.gradcheck, side by side in one run.

1. ``full`` mode versus ``torch.autograd.gradcheck`` (slow mode: every coordinate) on the same scalar loss and the
   same coverage (every parameter coordinate and every input coordinate) for a 16-128-128-4 tanh MLP, batch 8.
2. The cost of ``default`` mode on a ~1M-parameter model, in forward-pass equivalents.

Run: ``python benchmarks/gradcheck_speed.py`` (add ``--repeats N``). Prints the times, the ratio and the figures
the README quotes. Each timing is the best of the repeats, so background noise inflates neither side.

``--cold`` also measures (1) as a user runs it: ``gradcheck-service check FILE --mode full`` in a fresh process
against ``torch.autograd.gradcheck``'s first call in a fresh process of its own, the check's own time
(``timings.gradient_check_s``) against the gradcheck call's, and both processes' wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from gradcheck_service import check
from gradcheck_service.checks.loss import RandomProjection

OFF = {"health": False, "memory": False, "localize": False}


def mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 4))
    return model, torch.randn(8, 16)


def best_of(repeats: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def torch_gradcheck_run(model: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    model64 = model.double()
    names = [n for n, _ in model64.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model64.parameters())
    x64 = x.double().requires_grad_()
    loss = RandomProjection(0)

    def scalar(x_in: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return loss(torch.func.functional_call(model64, dict(zip(names, ps, strict=True)), (x_in,)))

    def run() -> None:
        assert torch.autograd.gradcheck(scalar, (x64, *params))

    return run


_MODEL_FILE = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 4))
    return model, (torch.randn(8, 16),)
"""

_THEIRS_COLD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import torch
from model import build
from gradcheck_service.checks.loss import RandomProjection
model, (x,) = build()
model64 = model.double()
names = [n for n, _ in model64.named_parameters()]
params = tuple(p.detach().clone().requires_grad_() for p in model64.parameters())
loss = RandomProjection(0)
def scalar(x_in, *ps):
    return loss(torch.func.functional_call(model64, dict(zip(names, ps)), (x_in,)))
t0 = time.perf_counter()
assert torch.autograd.gradcheck(scalar, (x.double().requires_grad_(), *params))
print(time.perf_counter() - t0)
"""


def cold(repeats: int) -> None:
    """Full mode through the CLI in a fresh process vs torch.autograd.gradcheck in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.py"
        path.write_text(_MODEL_FILE)
        cli = str(Path(sys.executable).parent / "gradcheck-service")
        ours, theirs = [], []
        for _ in range(repeats):  # interleaved
            t0 = time.perf_counter()
            out = subprocess.run([cli, "check", str(path), "--mode", "full", "--json", "--no-health",
                                  "--no-memory"], capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            ours.append((json.loads(out.stdout)["timings"]["gradient_check_s"], wall))
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _THEIRS_COLD, tmp], capture_output=True, text=True,
                                 check=True)
            theirs.append((float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0))
    o, t = min(ours), min(theirs)
    print("as a user runs it (each in a fresh process, best of the repeats):")
    print(f"  the check itself:  ours {o[0]:.3f} s vs torch.autograd.gradcheck {t[0]:.3f} s: {t[0] / o[0]:.1f}x")
    print(f"  whole process:     ours {o[1]:.2f} s vs {t[1]:.2f} s (interpreter, imports and model build included)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="also the fresh-process comparison")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")

    model, x = mlp()
    n = sum(p.numel() for p in model.parameters())
    report = check(model, x, mode="full", **OFF)
    assert report.passed
    covered = sum(t.coordinates_checked for t in report.gradient_check.parameters + report.gradient_check.inputs)
    # Interleaved (ours, theirs, ours, theirs, ...) so a burst of background load hits both sides alike.
    theirs_run = torch_gradcheck_run(model, x)
    ours_times, theirs_times = [], []
    for _ in range(args.repeats):
        ours_times.append(best_of(1, lambda: check(model, x, mode="full", **OFF)))
        theirs_times.append(best_of(1, theirs_run))
    ours, theirs = min(ours_times), min(theirs_times)
    print(f"MLP 16-128-128-4 tanh, batch 8: {n} parameters + {x.numel()} input coordinates, {covered} compared")
    print(f"  torch.autograd.gradcheck (slow mode): {theirs:8.3f} s")
    print(f"  gradcheck-service check, full mode:   {ours:8.3f} s  ({report.gradient_check.evaluations} evaluations)")
    print(f"  speed-up: {theirs / ours:.1f}x")
    if args.cold:
        cold(args.repeats)

    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.Linear(1024, 512), nn.GELU(), nn.Linear(512, 10))
    xb = torch.randn(32, 512)
    nb = sum(p.numel() for p in big.parameters())
    big64, xb64 = big.double(), xb.double()
    with torch.no_grad():
        forward = best_of(5, lambda: big64(xb64))
    t_default = best_of(args.repeats, lambda: check(big, xb, mode="default", **OFF))
    rep = check(big, xb, mode="default", **OFF)
    print(f"~1M-parameter MLP ({nb:,} parameters, batch 32), default mode:")
    print(f"  {t_default:.3f} s = {t_default / forward:.0f} float64 forward passes "
          f"({rep.gradient_check.evaluations} perturbed evaluations, one forward = {forward * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
