"""``gradcheck-service check PATH``: run a check locally and print the verdict (exit 0 pass, 1 fail, 2 bad input)."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import IO, Any

import click
from pydantic import ValidationError

from ..ci.config import ConfigError, import_roots
from ..options import CheckOptions, choices, click_option, help_text
from ..report import units
from ..types import ExitCode, verdict_exit_code


def parse_bytes(text: str) -> int:
    """'16GiB' -> 17179869184 (see :func:`gradcheck_service.report.units.parse_bytes`), as a click parameter."""
    try:
        return units.parse_bytes(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


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
@click_option("mode", default="default", show_default=True)
@click_option("order", default="1")
@click_option("device", default="cpu", show_default=True)
@click_option("seed", type=int, default=0, show_default=True)
@click_option("fail_on", type=str, help=f"{help_text('fail_on')} Comma list of: {', '.join(choices('fail_on'))}.")
@click.option("--memory-budget", help="Largest batch that fits in this much memory, e.g. 16GiB.")
@click_option("precision")
@click.option("--checkpoint", multiple=True, help="Measure gradient checkpointing for this block ('all': every "
              "top-level block). Repeatable.")
@click.option("--batch-scaling", is_flag=True, help="Fit activation memory against batch size.")
@click.option("--recheck", is_flag=True, help="When the default check fails, re-check every tensor coordinate by "
              "coordinate through the whole model (slow at scale; the failing report otherwise comes from the local "
              "checks and localization).")
@click.option("--no-health", is_flag=True, help="Skip gradient norms and the diagnosis.")
@click.option("--no-memory", is_flag=True, help="Skip the memory profile.")
@click_option("triton_interpreter", default="auto", show_default=True)
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
    from ..definitions import DefinitionError
    from ..definitions.checking import check_definition
    from ..definitions.output_capture import CapturedOutput

    # Whatever the model's code prints (while its file is imported and built, and in every forward) goes into
    # the report, never onto our stdout: --json must stay one JSON document.
    captured = CapturedOutput()
    show_progress = not as_json and sys.stderr.isatty()
    try:
        options = CheckOptions(**check_options(mode, int(order), device, seed, fail_on, memory_budget, precision,
                                               checkpoint, batch_scaling, not no_health, not no_memory, recheck,
                                               triton_interpreter))
        report = check_definition(path, import_roots(Path.cwd()), options, captured=captured,
                                  progress=lambda terminal: progress_display(enabled=show_progress, file=terminal))
    except (DefinitionError, CheckError, ConfigError, click.BadParameter, ValidationError, OSError) as exc:
        if debug:
            traceback.print_exc()
            if captured.text.strip():
                click.echo(f"output of the model before the error:\n{captured.text.rstrip()}", err=True)
        click.echo(f"error: {one_line(exc)}", err=True)
        sys.exit(ExitCode.BAD_INPUT)
    if as_json:
        click.echo(report.to_json())
    else:
        from .render import render_report

        click.echo(render_report(report))
    sys.exit(verdict_exit_code(report.verdict, allow_inconclusive))


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
