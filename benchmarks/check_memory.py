"""What a check costs in memory, beside what training the same model costs, side by side in one run.

For a model file (default: the GPT-2 shapes of ``benchmarks/models/gpt.py``), each figure in a fresh process,
as the peak resident set size of the whole process (Linux ``VmHWM``, interpreter and imports included):

* **build**: import, build the model, nothing else;
* **step**: build, then one training step in the model's own dtype (forward + loss + backward, gradients kept,
  no optimizer);
* **check**: ``gradcheck-service check FILE --json --no-health --no-memory`` (the gradient check), and
* **report**: ``gradcheck-service check FILE --json`` (the whole default report), both read from the report's
  ``timings.peak_rss_bytes``, with the check's time and its verdict.

The ratios check / step and report / step are what the engine issue bounds. ``--bug`` seeds a GELU whose backward
forgets the ``x * pdf(x)`` term in block 0 (a failing check's memory). Run:
``python benchmarks/check_memory.py [--size tiny|small|medium] [--bug]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MODELS = Path(__file__).parent / "models"

_STEP = r"""
import json, sys
from gradcheck_service.checks.engine import process_peak_rss
from gradcheck_service.definitions import load_definition
d = load_definition(sys.argv[1])
built = process_peak_rss()
if sys.argv[2] == "step":
    out = d.module(*d.inputs)
    value = d.loss_fn(out, *d.inputs) if d.loss_fn is not None else out
    value.backward()
print(json.dumps({"build": built, "peak": process_peak_rss()}))
"""

# A model file that wraps the benchmark GPT and seeds the GELU bug in its first block.
_BUGGY = '''
import math, sys, torch
sys.path.insert(0, {models!r})
import gpt

class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nn.functional.gelu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 0.5 * (1 + torch.erf(x / math.sqrt(2)))  # the x * pdf(x) term is missing

class BuggyGelu(torch.nn.Module):
    def forward(self, x):
        return _Gelu.apply(x)

def build():
    model, inputs = gpt.build()
    model.inner.transformer.h[0].mlp.act = BuggyGelu()
    return model, inputs
'''


def fresh(args: list[str], env: dict[str, str]) -> str:
    return subprocess.run(args, capture_output=True, text=True, env=env, check=False).stdout


def step(path: Path, env: dict[str, str], what: str) -> int:
    return int(json.loads(fresh([sys.executable, "-c", _STEP, str(path), what], env).strip().splitlines()[-1])["peak"])


def cli(path: Path, env: dict[str, str], *flags: str) -> dict:
    out = fresh([str(Path(sys.executable).parent / "gradcheck-service"), "check", str(path), "--json", *flags], env)
    report = json.loads(out)
    return {"peak": report["timings"]["peak_rss_bytes"], "total_s": report["timings"]["total_s"],
            "verdict": report["verdict"], "evaluations": report["gradient_check"]["evaluations"]}


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small", "medium"], default="small",
                        help="tiny: 2x32; small: GPT-2-small (124M); medium: 6 layers x 384 (30M)")
    parser.add_argument("--bug", action="store_true", help="seed a wrong GELU backward in block 0")
    parser.add_argument("--no-report", action="store_true", help="skip the whole default report")
    args = parser.parse_args()
    env = {**os.environ, "GRADCHECK_BENCH_GPT": args.size}
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}; GPT-2 {args.size}"
          f"{', seeded GELU bug' if args.bug else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        path = MODELS / "gpt.py"
        if args.bug:
            path = Path(tmp) / "gpt_buggy.py"
            path.write_text(_BUGGY.format(models=str(MODELS)))
        build, train = step(path, env, "build"), step(path, env, "step")
        print(f"build {gib(build)}   training step {gib(train)}")
        runs = [("check", cli(path, env, "--no-health", "--no-memory"))]
        if not args.no_report:
            runs.append(("report", cli(path, env)))
        for label, run in runs:
            print(f"{label:6s} {gib(run['peak'])} = {run['peak'] / train:.2f} x the training step "
                  f"({run['verdict']}, {run['evaluations']:,} evaluations, {run['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
