"""``gradcheck-service check PATH``: run a check locally and print the verdict (exit 0 pass, 1 fail, 2 bad input)."""

from __future__ import annotations

import re
import sys
import traceback
from pathlib import Path
from typing import IO, Any

import click
from pydantic import ValidationError

EXIT_PASSED, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'16GiB' -> 17179869184; plain numbers are bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size like 16GiB, 512MB or 1000000")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def check_options(
    mode: str, order: int, device: str, seed: int, fail_on: str | None, memory_budget: str | None,
    precision: str | None, checkpoint: tuple[str, ...], batch_scaling: bool, health: bool, memory: bool,
    recheck: bool = False, triton_interpreter: str = "auto",
) -> dict[str, Any]:
    """CLI flags -> CheckOptions fields (shared by `check` and `ci`)."""
    options: dict[str, Any] = {"mode": mode, "order": order, "device": device, "seed": seed,
                               "health": health, "memory": memory, "batch_scaling": batch_scaling,
                               "triton_interpreter": triton_interpreter}
    if recheck:
        options["recheck"] = True
    if fail_on:
        options["fail_on"] = [part.strip() for part in fail_on.split(",") if part.strip()]
    if memory_budget:
        options["memory_budget_bytes"] = parse_bytes(memory_budget)
        options["batch_scaling"] = True
    if precision:
        options["precision"] = precision
    if checkpoint:
        options["checkpointing"] = True if checkpoint == ("all",) else list(checkpoint)
    return options


@click.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(["full", "default", "fast"]), default="default", show_default=True,
              help="full: every coordinate through the whole model; default: each parameter through its own "
                   "module's call (tiny tensors fully, others by probes) + joint probes; fast: probes only.")
@click.option("--order", type=click.Choice(["1", "2"]), default="1", help="2 also checks the gradient of the gradient.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fail-on", help="Diagnosis findings that fail the check: vanishing,exploding,nonfinite,dead_relu,...")
@click.option("--memory-budget", help="Largest batch that fits in this much memory, e.g. 16GiB.")
@click.option("--precision", type=click.Choice(["bf16", "fp16"]), help="Compare autocast gradients with float64.")
@click.option("--checkpoint", multiple=True, help="Measure gradient checkpointing for this block ('all': every "
              "top-level block). Repeatable.")
@click.option("--batch-scaling", is_flag=True, help="Fit activation memory against batch size.")
@click.option("--recheck", is_flag=True, help="When the default check fails, re-check every tensor coordinate by "
              "coordinate through the whole model (slow at scale; the failing report otherwise comes from the local "
              "checks and localization).")
@click.option("--no-health", is_flag=True, help="Skip gradient norms and the diagnosis.")
@click.option("--no-memory", is_flag=True, help="Skip the memory profile.")
@click.option("--triton-interpreter", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Run Triton kernels in Triton's interpreter on CPU: auto when CUDA is absent.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of tables.")
@click.option("--allow-inconclusive", is_flag=True, help="Exit 0 when the verdict is inconclusive (nothing wrong "
              "found, but too little compared to call it passed); by default inconclusive exits 1.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def check_command(
    path: str, mode: str, order: str, device: str, seed: int, fail_on: str | None, memory_budget: str | None,
    precision: str | None, checkpoint: tuple[str, ...], batch_scaling: bool, recheck: bool, no_health: bool,
    no_memory: bool, triton_interpreter: str, as_json: bool, allow_inconclusive: bool, debug: bool,
) -> None:
    """Check the model in PATH (a .py model file or a .json spec) against finite differences."""
    from ..checks.working_copy import CheckError
    from ..ci.config import ConfigError
    from ..definitions import DefinitionError, load_definition
    from ..definitions.output_capture import CapturedOutput, output_or_none

    # Whatever the model's code prints (while its file is imported and built, and in every forward) goes into
    # the report, never onto our stdout: --json must stay one JSON document.
    captured = CapturedOutput()
    try:
        options = check_options(mode, int(order), device, seed, fail_on, memory_budget, precision, checkpoint,
                                batch_scaling, not no_health, not no_memory, recheck, triton_interpreter)
        from ..options import CheckOptions
        from ..triton_interpreter import use_interpreter

        opts = CheckOptions(**options)
        use_interpreter(opts.triton_interpreter)  # before the model's code imports Triton
        show_progress = not as_json and sys.stderr.isatty()
        with captured:
            definition = load_definition(path, import_roots())
            from ..checks.engine import check

            with progress_display(enabled=show_progress, file=captured.terminal) as progress:
                report = check(definition.module, definition.inputs, definition.loss_fn, progress=progress,
                               name=definition.name, options=opts)
    except (DefinitionError, CheckError, ConfigError, click.BadParameter, ValidationError, OSError) as exc:
        if debug:
            traceback.print_exc()
            if captured.text.strip():
                click.echo(f"output of the model before the error:\n{captured.text.rstrip()}", err=True)
        click.echo(f"error: {one_line(exc)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    finally:
        captured.close()
    report.output = output_or_none(captured.text)
    if as_json:
        click.echo(report.to_json())
    else:
        from .render import render_report

        click.echo(render_report(report))
    sys.exit(verdict_exit_code(report.verdict, allow_inconclusive))


def verdict_exit_code(verdict: str, allow_inconclusive: bool) -> int:
    """The exit code of a finished check, as ``check`` and ``submit`` give it: 0 passed, 1 failed, and 1 for
    inconclusive too (not passing: too little was compared) unless ``--allow-inconclusive``."""
    accepted = ("passed", "inconclusive") if allow_inconclusive else ("passed",)
    return EXIT_PASSED if verdict in accepted else EXIT_FAILED


def import_roots() -> list[Path]:
    """The current directory (the repository root) and the `pythonpath` of its gradcheck configuration, if any:
    a model file imports the repository's modules from there, as in ``ci``."""
    from ..ci.config import ConfigError, find_config

    root = Path.cwd().resolve()
    found = find_config(root)
    extra = found[1].get("pythonpath", []) if found else []
    if not isinstance(extra, list) or not all(isinstance(p, str) for p in extra):
        raise ConfigError(f"{found[0].name if found else 'configuration'}: pythonpath: expected a list of folders, "
                          'e.g. ["src"]')
    return [*(root / p for p in extra if (root / p).is_dir()), root]


def one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, click.BadParameter):
        return exc.format_message()
    return " ".join(str(exc).split()) or type(exc).__name__


class progress_display:  # noqa: N801 - used as a context manager like a function
    """A rich progress bar on stderr while a long check runs; nothing when disabled (pipes, --json)."""

    def __init__(self, enabled: bool, file: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.file = file  # the terminal's stderr, also while the model's own output is being captured
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        # Not rich's default console (stdout) and no redirection of sys.stdout/sys.stderr: those belong to the
        # output capture while the check runs.
        console = Console(file=self.file or sys.stderr)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True,
                             console=console, redirect_stdout=False, redirect_stderr=False)
        self._bar.start()
        self._task = self._bar.add_task("starting", total=1.0)
        return self.update

    def update(self, stage: str, fraction: float) -> None:
        self._bar.update(self._task, description=stage, completed=fraction)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


commands: list[click.Command] = [check_command]
