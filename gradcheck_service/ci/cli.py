"""``gradcheck-service ci``: check every model a repository configures; JUnit, Markdown summary, baselines.

Exit codes: 0 all passed, 1 a check failed (or regressed, with ``--fail-on regression``), 2 bad configuration
(config file, a missing model file, token, unreachable server, unreadable baseline), 3 a run ended in error.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import get_args

import click

from ..options import FailOn, click_option, help_text
from ..types import ExitCode


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(ExitCode.BAD_INPUT)


def _apply_overrides(config: object, mode: str | None, fail_on: str | None, only: tuple[str, ...],
                     triton_interpreter: str | None = None) -> None:
    from .config import CiConfig

    assert isinstance(config, CiConfig)
    kinds = [k.strip() for k in (fail_on or "").split(",") if k.strip()]
    allowed = {"regression", *get_args(FailOn)}
    unknown = [k for k in kinds if k not in allowed]
    if unknown:
        _fail(f"--fail-on: unknown {unknown[0]!r} (use {', '.join(sorted(allowed))})")
    if only:
        names = {m.name for m in config.models}
        missing = [n for n in only if n not in names]
        if missing:
            _fail(f"--model: no configured model named {missing[0]!r} (configured: {', '.join(sorted(names))})")
        config.models = [m for m in config.models if m.name in only]
    config.fail_on_regression |= "regression" in kinds
    for entry in config.models:
        entry.fail_on_regression |= config.fail_on_regression
        updates: dict[str, object] = {}
        if mode:
            updates["mode"] = mode
        if triton_interpreter:
            updates["triton_interpreter"] = triton_interpreter
        extra = [k for k in kinds if k != "regression" and k not in entry.options.fail_on]
        if extra:
            updates["fail_on"] = [*entry.options.fail_on, *extra]
        if updates:
            entry.options = entry.options.model_copy(update=updates)


def _config_path(value: str | None, root: Path, configured: str | None) -> Path | None:
    """A CLI path is relative to the working directory; a configured one to the configuration file."""
    if value:
        return Path(value)
    return root / configured if configured else None


@click.command("ci")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file (default: gradcheck.toml, else [tool.gradcheck] in pyproject.toml).")
@click.option("--server", envvar="GRADCHECK_SERVER", help="Check through this service instead of locally.")
@click.option("--token", envvar="GRADCHECK_TOKEN", help="Project token for --server (or GRADCHECK_TOKEN).")
@click.option("--junit", "junit_file", help="Write JUnit XML here.")
@click.option("--summary", "summary_file", help="Write the Markdown summary here (also appended to "
              "$GITHUB_STEP_SUMMARY when set).")
@click.option("--output", "output_file", help="Write all results, reports included, as JSON (usable as --baseline).")
@click.option("--save-report", "report_dir", help="Write each model's report to DIR/<model>.json.")
@click.option("--baseline", "baseline_path", type=click.Path(path_type=Path),
              help="Compare with saved reports: a report, a --output file or a --save-report folder.")
@click.option("--base-branch", help="Branch whose latest runs are the baseline with --server (default: the PR's "
              "target, else the default branch, else main).")
@click.option("--fail-on", help="Comma list: 'regression' fails the job on regressions; diagnosis kinds "
              "(exploding, vanishing, ...) are added to every model's fail-on.")
@click_option("mode", help=f"Override every model's mode. {help_text('mode')}")
@click_option("triton_interpreter", help=f"Override every model's triton_interpreter. {help_text('triton_interpreter')}")
@click.option("--model", "only", multiple=True, help="Check only this configured model (repeatable).")
@click.option("--repo", help="Override the detected repository.")
@click.option("--branch", help="Override the detected branch.")
@click.option("--commit", help="Override the detected commit.")
@click.option("--timeout", "wait_s", type=click.FloatRange(min=1), default=1800.0, show_default=True,
              help="With --server: seconds to wait for all runs.")
@click.option("--allow-inconclusive", is_flag=True, help="Do not fail the job for a model whose verdict is "
              "inconclusive (nothing wrong found, too little compared); by default it exits 1, as check does.")
@click.option("--debug", is_flag=True, help="Show tracebacks for configuration errors.")
def ci(config_file: Path | None, server: str | None, token: str | None, junit_file: str | None,
       summary_file: str | None, output_file: str | None, report_dir: str | None, baseline_path: Path | None,
       base_branch: str | None, fail_on: str | None, mode: str | None, triton_interpreter: str | None,
       only: tuple[str, ...], repo: str | None,
       branch: str | None, commit: str | None, wait_s: float, allow_inconclusive: bool, debug: bool) -> None:
    """Check every model configured in this repository (locally, or through --server) and gate the build."""
    from .baseline import BaselineError, load_baselines
    from .client import ServiceClient
    from .config import ConfigError, load_config
    from .gitmeta import base_branch as pick_base_branch
    from .gitmeta import detect
    from .junit import write_junit
    from .results import CiResult
    from .runner import ServerUnusable, apply_baselines, run_local, run_remote, server_baselines
    from .summary import markdown_summary, write_summary

    try:
        config = load_config(config_file)
    except ConfigError as exc:
        if debug:
            traceback.print_exc()
        _fail(str(exc))
        return
    _apply_overrides(config, mode, fail_on, only, triton_interpreter)
    root = config.source.parent
    server = server or config.server
    git = detect(root)
    for field, value in (("repo", repo), ("branch", branch), ("commit", commit)):
        if value:
            setattr(git, field, value)
    base = pick_base_branch(git, base_branch or config.base_branch)

    def echo(line: str) -> None:
        click.echo(line, err=True)

    try:
        baselines = load_baselines(baseline_path) if baseline_path else {}
        if server:
            if not token:
                _fail("--server needs a token: set GRADCHECK_TOKEN or pass --token "
                      "(gradcheck-service token create --project NAME)")
            client = ServiceClient(server, str(token))
            if not baseline_path:
                baselines = server_baselines(client, config, base)
            results = run_remote(client, config, git, echo, wait_s)
        else:
            results = run_local(config, echo)
    except (BaselineError, ServerUnusable) as exc:
        _fail(str(exc))
        return
    apply_baselines(results, baselines, config)
    outcome = CiResult(mode="server" if server else "local", server=server, git=git, base_branch=base,
                       models=results, allow_inconclusive=allow_inconclusive)

    junit_path = _config_path(junit_file, root, config.junit)
    if junit_path:
        write_junit(outcome, junit_path)
    summary_path = _config_path(summary_file, root, config.summary)
    if summary_path:
        write_summary(outcome, summary_path)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        write_summary(outcome, Path(os.environ["GITHUB_STEP_SUMMARY"]), append=True)
    if output_file:
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(output_file).write_text(outcome.to_json(), encoding="utf-8")
    saved = _config_path(report_dir, root, config.report_dir)
    if saved:
        saved.mkdir(parents=True, exist_ok=True)
        for result in results:
            if result.report is not None:
                (saved / f"{_safe_name(result.name)}.json").write_text(result.report.to_json(), encoding="utf-8")
    click.echo(markdown_summary(outcome), nl=False)  # it ends with its own newline
    sys.exit(outcome.exit_code)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


commands: list[click.Command] = [ci]
