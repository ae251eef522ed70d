"""What a failing check costs next to the passing one, in training steps of the same model, side by side in one run.

Each model is checked twice in fresh CLI processes (``gradcheck-service check FILE --json --no-health
--no-memory``, as CI runs it): as written (the passing twin) and with one seeded wrong backward. Beside each, its
``timings.total_s`` (gradient check + localization, first calls included, imports and model build not) divided
by one training step of the model (forward + loss + backward, the fastest of 20 in a fresh process of its own),
the evaluations spent (the check's and localization's), and whether the report names the seeded module.

Models: the 1.06M-parameter MLP (one GELU with a backward missing its pdf term), the tiny LSTM (its embedding
wrapped in a backward 1.5x too large), the 2-layer GPT-2 (block 1's GELU), the seeded cases of the transformers
corpus of the tests (``tests/fixtures/hf_seeded.py``), and with ``--gpt2-small`` the 124M GPT-2 shape (block 5's
GELU). Run: ``python benchmarks/failing_cost.py [--cases ...] [--gpt2-small] [--timeout S]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path[0:0] = [str(ROOT), str(ROOT / "benchmarks")]

from check_cost import cold_check, training_step  # noqa: E402

from tests.fixtures.hf_seeded import SEEDED, BuggyGelu, WrongBackward  # noqa: E402

Case = tuple[nn.Module, Any, Callable[..., torch.Tensor] | None, str]


def _definition(name: str) -> tuple[nn.Module, Any, Callable[..., torch.Tensor] | None]:
    from gradcheck_service.definitions import load_definition

    d = load_definition(str(ROOT / "benchmarks" / "models" / f"{name}.py"))
    return d.module, d.inputs, d.loss_fn


def mlp(seeded: bool) -> Case:
    model, inputs, loss = _definition("mlp_1m")
    if seeded:
        model[1] = BuggyGelu()
    return model, inputs, loss, "1"


def lstm(seeded: bool) -> Case:
    model, inputs, loss = _definition("lstm_tiny")
    if seeded:
        model.embed = WrongBackward(model.embed)
    return model, inputs, loss, "embed"


def gpt(seeded: bool, block: int = 1) -> Case:
    model, inputs, loss = _definition("gpt")
    if seeded:
        model.inner.transformer.h[block].mlp.act = BuggyGelu()
    return model, inputs, loss, f"inner.transformer.h.{block}.mlp.act"


CASES: dict[str, Callable[[bool], Case]] = {
    "mlp_1m": mlp, "lstm_tiny": lstm, "gpt_2layer": gpt,
    **{f"hf_{name}": builder for name, builder in SEEDED.items()},
    "gpt2_124m": lambda seeded: gpt(seeded, block=5),
}
ENV = {"gpt2_124m": {"GRADCHECK_BENCH_GPT": "small"}}


def build_case(name: str, seeded: bool) -> Case:
    """The case's model, inputs, loss and the module its seeded bug lives in (for the generated model files)."""
    return CASES[name](seeded)


_MODEL_FILE = """import sys
sys.path[0:0] = [{root!r}, {bench!r}]
import failing_cost

loss_fn = None


def build():
    global loss_fn
    model, inputs, loss_fn, _faulty = failing_cost.build_case({name!r}, {seeded!r})
    return model, inputs
"""


def model_file(directory: Path, name: str, seeded: bool) -> Path:
    path = directory / f"{name}_{'seeded' if seeded else 'correct'}.py"
    path.write_text(_MODEL_FILE.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), name=name, seeded=seeded))
    return path


def run_case(directory: Path, name: str, timeout: float) -> str:
    env = {**os.environ, **ENV.get(name, {})}
    step = training_step(model_file(directory, name, False), env)["step_s"]
    faulty = build_case(name, True)[3] if name != "gpt2_124m" else "inner.transformer.h.5.mlp.act"
    cells = [f"{name:18s} step {step * 1e3:8.2f} ms"]
    for seeded in (False, True):
        r = cold_check(model_file(directory, name, seeded), timeout, env)
        if r.get("cold_s") is None:
            cells.append(f"{'failing' if seeded else 'passing'} over the {timeout:.0f} s cap")
            continue
        report = r["report"]
        total = report["timings"]["total_s"]
        loc = report["localization"]
        evaluations = report["gradient_check"]["evaluations"] + loc.get("evaluations", 0)
        named = "named" if loc["faulty_modules"] == [faulty] else f"named {loc['faulty_modules']}"
        cells.append(f"{report['verdict']:6s} {total:7.2f} s = {total / step:7,.0f} steps, {evaluations:5d} "
                     f"evaluations" + (f", localization {report['timings']['localization_s']:.2f} s, {named}"
                                       if seeded else ""))
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=[c for c in CASES if c != "gpt2_124m"], choices=list(CASES))
    parser.add_argument("--gpt2-small", action="store_true", help="also the 124M GPT-2 shape")
    parser.add_argument("--timeout", type=float, default=900.0, help="cap per check, seconds")
    args = parser.parse_args()
    cases = [*args.cases, *(["gpt2_124m"] if args.gpt2_small else [])]
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in cases:
            print(run_case(Path(tmp), name, args.timeout), flush=True)


if __name__ == "__main__":
    main()
