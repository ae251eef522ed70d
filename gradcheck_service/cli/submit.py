"""``gradcheck-service submit``: send a model to a server, optionally wait, print the run.

Exit codes as ``check``: 0 passed, 1 a check failed or was inconclusive (0 with ``--allow-inconclusive``), 2 bad
input (file, options, token, server unreachable), plus 3 when the run ended as ``error``. Without ``--wait`` it
prints the run id and exits 0.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..ci.bundle import Bundle, bundle
from ..ci.client import ServiceClient, ServiceError
from ..options import click_option
from ..types import VERDICTS, ExitCode, verdict_exit_code


def _describe(run: dict[str, Any]) -> str:
    lines = [f"run {run['id']}: {run['status']} (model {run['model']['name']}, attempts {run['attempts']}, "
             f"check {run['timings'].get('check_s') or 0:.2f} s)"]
    if run.get("error"):
        lines.append(f"error [{run['error']['code']}]: {run['error']['message']}")
    summary = run.get("summary") or {}
    if summary.get("faulty_modules"):
        lines.append("faulty modules: " + ", ".join(summary["faulty_modules"]))
    report = run.get("report") or {}
    for item in (report.get("gradient_check") or {}).get("parameters", []) + \
            (report.get("gradient_check") or {}).get("inputs", []):
        if not item.get("passed"):
            lines.append(f"  FAILED {item['name']}: max abs error {_number(item['max_abs_error'])}, "
                         f"max rel error {_number(item['max_rel_error'])}")
    if summary.get("failed_because"):
        lines.append("failed because: " + "; ".join(summary["failed_because"]))
    if summary.get("inconclusive_because"):
        lines.append("inconclusive because: " + "; ".join(summary["inconclusive_because"]))
    return "\n".join(lines)


def _number(value: float | str) -> str:
    """A figure of the report's JSON: a float, or a non-finite one written as "NaN"/"Infinity"/"-Infinity"."""
    return value if isinstance(value, str) else f"{value:.3g}"


@click.command("submit")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--server", envvar="GRADCHECK_SERVER", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", envvar="GRADCHECK_TOKEN", help="Project token (or GRADCHECK_TOKEN).")
@click.option("--wait", is_flag=True, help="Wait for the run to finish, showing progress.")
@click.option("--json", "as_json", is_flag=True, help="Print the run (with its report) as JSON.")
@click_option("mode", default=None)
@click_option("device", default=None)
@click_option("order", default=None)
@click.option("--seed", type=int, default=None)
@click.option("--options", "options_json", default=None, help="More options as JSON, e.g. '{\"fail_on\":[...]}'.")
@click.option("--name", default=None, help="Model name (default: the spec's name or the file name).")
@click.option("--repo", default=None)
@click.option("--branch", default=None)
@click.option("--commit", default=None)
@click.option("--label", "labels", multiple=True, help="Repeatable.")
@click.option("--timeout", type=float, default=None, help="Wall-time limit of the check, seconds.")
@click.option("--allow-inconclusive", is_flag=True, help="With --wait: exit 0 when the run is inconclusive (nothing "
              "wrong found, but too little compared to call it passed); by default inconclusive exits 1, as in check.")
@click.option("--poll", type=float, default=0.5, show_default=True, help="Seconds between status polls.")
@click.option("--include", "include", multiple=True, help="A repository file or glob to send with a .py model "
              "file besides the ones it imports (repeatable).")
def submit(path: Path, server: str, token: str | None, wait: bool, as_json: bool, mode: str | None,
           device: str | None, order: str | None, seed: int | None, options_json: str | None, name: str | None,
           repo: str | None, branch: str | None, commit: str | None, labels: tuple[str, ...],
           timeout: float | None, allow_inconclusive: bool, poll: float, include: tuple[str, ...]) -> None:
    """Submit PATH (a .py model file or a .json spec) to a gradcheck-service server.

    A .py file is sent with the repository files it imports, as an archive rooted at the repository: the folder
    of gradcheck.toml / pyproject.toml's [tool.gradcheck] in the current directory (whose `pythonpath` applies),
    else the current directory.
    """

    def bad(message: str) -> None:
        click.echo(f"error: {message}", err=True)
        sys.exit(ExitCode.BAD_INPUT)

    if not token:
        bad("no token: pass --token or set GRADCHECK_TOKEN (gradcheck-service token create --project NAME)")
    if not path.is_file():
        bad(f"{path}: no such file")
    try:
        options: dict[str, Any] = json.loads(options_json) if options_json else {}
    except ValueError as exc:
        bad(f"--options is not valid JSON: {exc}")
    for key, value in (("mode", mode), ("device", device), ("order", int(order) if order else None),
                       ("seed", seed)):
        if value is not None:
            options[key] = value
    metadata: dict[str, Any] = {"labels": list(labels),
                                "git": {k: v for k, v in (("repo", repo), ("branch", branch), ("commit", commit))
                                        if v}}
    if name:
        metadata["name"] = name
    if timeout:
        metadata["timeout_s"] = timeout
    client = ServiceClient(server, str(token))
    files = None
    if path.suffix.lower() == ".py":
        try:
            files = _bundle(path, include)
        except (ValueError, OSError) as exc:
            bad(str(exc))
    try:
        created = client.create(path, options, metadata, files)
        if not wait:
            click.echo(json.dumps(created) if as_json else created["id"])
            return
        run = _wait(client, created["id"], poll, show=not as_json and sys.stderr.isatty())
    except ServiceError as exc:
        bad(str(exc))
        return
    click.echo(json.dumps(run, indent=2) if as_json else _describe(run))
    sys.exit(verdict_exit_code(run["status"], allow_inconclusive) if run["status"] in VERDICTS else ExitCode.ERROR)


def _bundle(path: Path, include: tuple[str, ...]) -> Bundle:
    """The archive of ``path`` and its repository imports (``ValueError`` naming the problem)."""
    from ..ci.config import ConfigError, find_config, load_config

    root, pythonpath = Path.cwd().resolve(), []
    if find_config(root) is not None:
        try:  # for its `pythonpath`; a broken configuration is reported rather than silently ignored
            pythonpath = load_config(directory=root).pythonpath
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    files: list[Path] = []
    for pattern in include:
        matched = sorted(p for p in root.glob(pattern) if p.is_file()) if not Path(pattern).is_absolute() else []
        if not matched:
            raise ValueError(f"--include {pattern}: matches no file under {root}")
        files += matched
    return bundle(path, root, pythonpath, files)


def _wait(client: ServiceClient, run_id: str, poll: float, show: bool) -> dict[str, Any]:
    last = ""
    while True:
        run = client.run(run_id)
        if run["status"] in (*VERDICTS, "error"):
            if show:
                click.echo("\r" + " " * len(last) + "\r", nl=False, err=True)
            return dict(run)
        if show:
            fraction = run["progress"].get("fraction")
            line = f"{run['status']}" + (f" {run['progress'].get('stage') or ''} {fraction:.0%}"
                                         if fraction is not None else "")
            click.echo("\r" + line.ljust(len(last)), nl=False, err=True)
            last = line
        time.sleep(poll)




commands: list[click.Command] = [submit]
