"""What a default-mode check costs, counted in training steps of the same model, side by side in one run.

For each model file under ``benchmarks/models/``:

* **cold**: ``gradcheck-service check FILE --json --no-health --no-memory`` in a fresh process, as CI runs it
  (interpreter start, imports, model build, first calls included), wall time; beside it the check's own time in
  that fresh process (``timings.gradient_check_s``: first calls included, imports and model build not) and the
  floor of any fresh process (``python -c "import torch, gradcheck_service.cli"``);
* **warm**: the same check again inside one process, after a first one (``report.timings.gradient_check_s``);
* **step**: one training step in the model's own dtype (forward + loss + backward), the fastest of 20 after 3
  warm-up steps, in a fresh process of its own;
* the check's cost in steps (cold / step and warm / step) and the evaluations it spent;
* **report**: the whole default report, ``gradcheck-service check FILE --json`` (gradient check, gradient health
  and memory profile) in a fresh process: ``timings.total_s`` (everything ``check()`` does, first calls included)
  and each section (``gradient_check_s``, ``health_s``, ``memory_s``), in steps. Health and memory share one
  instrumented pass, so their time is reported under ``memory_s`` and ``health_s`` stays 0. ``--repeats N`` runs
  it in N fresh processes and keeps the one with the smallest ``total_s`` (a busy machine only adds time).

``--beside-load`` repeats everything with a CPU-bound process spinning beside it, to show how the check degrades
on a shared CI runner. ``--timeout`` caps each cold check (a model that would take hours is reported as over the
cap, not waited for). Run: ``python benchmarks/check_cost.py [--models mlp_1m lstm_tiny gpt] [--gpt2-small]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MODELS = Path(__file__).parent / "models"

_STEP_AND_WARM = r"""
import json, sys, time, torch
from gradcheck_service import check
from gradcheck_service.definitions import load_definition
d = load_definition(sys.argv[1])
loss = d.loss_fn
def step():
    out = d.module(*d.inputs)
    value = loss(out, *d.inputs) if loss is not None else out.float().sum() if out.dim() else out
    value.backward()
for _ in range(3):
    step()
times = []
for _ in range(20):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
result = {"step_s": min(times)}
if sys.argv[2] == "warm":
    check(d.module, d.inputs, d.loss_fn, health=False, memory=False)
    r = check(d.module, d.inputs, d.loss_fn, health=False, memory=False)
    result["warm_s"] = r.timings.gradient_check_s
print(json.dumps(result))
"""


SECTIONS = ("total_s", "gradient_check_s", "health_s", "memory_s")


def run_cli(path: Path, timeout: float, env: dict[str, str], *flags: str) -> tuple[float, dict] | None:
    """(wall seconds, JSON report) of ``gradcheck-service check PATH --json FLAGS`` in a fresh process."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "gradcheck-service"), "check", str(path), "--json", *flags],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired:
        return None
    return time.perf_counter() - t0, json.loads(proc.stdout)


def cold_check(path: Path, timeout: float, env: dict[str, str]) -> dict:
    """The gradient check alone in a fresh CLI process: wall time, and the JSON report under "report"."""
    run = run_cli(path, timeout, env, "--no-health", "--no-memory")
    if run is None:
        return {"cold_s": None, "over_cap_s": timeout}
    wall, report = run
    gc = report["gradient_check"]
    return {"cold_s": wall, "verdict": report["verdict"], "evaluations": gc["evaluations"],
            "gradient_check_s": report["timings"]["gradient_check_s"], "report": report}


def cold_report(path: Path, timeout: float, env: dict[str, str], repeats: int) -> dict:
    """The whole default report's timings in fresh processes: the run with the smallest ``total_s``."""
    best: dict | None = None
    for _ in range(repeats):
        run = run_cli(path, timeout, env)
        if run is None:
            return {"report_over_cap_s": timeout}
        timings = run[1]["timings"]
        if best is None or timings["total_s"] < best["total_s"]:
            best = {key: timings[key] for key in SECTIONS}
    assert best is not None
    return {f"report_{key}": value for key, value in best.items()}


def import_floor(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, gradcheck_service.cli"], check=True, env=env)
    return time.perf_counter() - t0


def training_step(path: Path, env: dict[str, str], warm: bool = False) -> dict:
    """One forward + loss + backward of the model file, the fastest of 20 in a fresh process ("step_s"); with
    ``warm``, also a second check in that process ("warm_s")."""
    out = subprocess.run([sys.executable, "-c", _STEP_AND_WARM, str(path), "warm" if warm else "step"],
                         capture_output=True, text=True, timeout=None, env=env)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(name: str, timeout: float, warm: bool, env: dict[str, str], repeats: int) -> dict:
    path = MODELS / f"{name.split(':')[0]}.py"
    checked = cold_check(path, timeout, env)
    checked.pop("report", None)
    result = {"model": name, **checked, **cold_report(path, timeout, env, repeats)}
    result.update(training_step(path, env, warm))
    step = result["step_s"]
    if result.get("cold_s"):
        result["cold_steps"] = result["cold_s"] / step
        result["cold_check_steps"] = result["gradient_check_s"] / step
    if result.get("warm_s"):
        result["warm_steps"] = result["warm_s"] / step
    for key in SECTIONS:
        if f"report_{key}" in result:
            result[f"report_{key.removesuffix('_s')}_steps"] = result[f"report_{key}"] / step
    return result


def report_line(r: dict) -> str:
    """The whole default report of one model: total and each section, seconds and steps."""
    if "report_total_s" not in r:
        return f"{'':17s} report > {r['report_over_cap_s']:.0f} s (cap)"
    labels = [key.removesuffix("_s") for key in SECTIONS[1:]]
    parts = [f"{label} {r[f'report_{label}_s']:.3f} s = {r[f'report_{label}_steps']:,.0f}" for label in labels]
    return (f"{'':17s} report total {r['report_total_s']:.3f} s = {r['report_total_steps']:,.0f} steps "
            f"({', '.join(parts)})")


def spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["mlp_1m", "lstm_tiny", "gpt"])
    parser.add_argument("--gpt2-small", action="store_true", help="also the 124M GPT-2-small shape (cold only)")
    parser.add_argument("--timeout", type=float, default=600.0, help="cap per cold check, seconds")
    parser.add_argument("--beside-load", action="store_true", help="repeat with a CPU-bound process beside it")
    parser.add_argument("--repeats", type=int, default=1,
                        help="fresh processes per whole-report measurement (the smallest total_s is kept)")
    args = parser.parse_args()
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    runs = [(m, {}) for m in args.models]
    if args.gpt2_small:
        runs.append(("gpt:small", {"GRADCHECK_BENCH_GPT": "small"}))
    loads = [False, True] if args.beside_load else [False]
    for loaded in loads:
        busy = spinner() if loaded else None
        try:
            print(f"{'loaded' if loaded else 'quiet'}: a fresh process importing torch and the CLI takes "
                  f"{import_floor(dict(os.environ)):.2f} s", flush=True)
            for name, extra in runs:
                env = {**os.environ, **extra}
                r = measure(name, args.timeout, warm=not name.endswith(":small"), env=env, repeats=args.repeats)
                cold = f"{r['cold_s']:.2f} s" if r.get("cold_s") else f"> {r['over_cap_s']:.0f} s (cap)"
                nan = float("nan")
                print(f"{name:10s} {'loaded' if loaded else 'quiet ':6s} step {r['step_s'] * 1e3:8.2f} ms | "
                      f"CLI {cold} = {r.get('cold_steps', nan):,.0f} steps, of which the check "
                      f"{r.get('gradient_check_s', nan):.2f} s = {r.get('cold_check_steps', nan):,.0f} steps | warm "
                      f"{r.get('warm_s', nan):.3f} s = {r.get('warm_steps', nan):,.0f} steps | "
                      f"{r.get('evaluations', '?')} evaluations, {r.get('verdict', '?')}", flush=True)
                print(report_line(r), flush=True)
        finally:
            if busy is not None:
                busy.kill()


if __name__ == "__main__":
    main()
