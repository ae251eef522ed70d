"""Running the configured models: in this process (local mode) or through a service (``--server``).

Local mode executes the repository's model files here, as ``check`` does: it is the repository's own code in its
own CI job. Server mode submits every model first, then waits for all of them, so the server's workers check them in
parallel; the model files are only read and uploaded here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..report import Report
from .baseline import Baseline, BaselineError, compare
from .bundle import BundleError, bundle
from .client import ServiceClient, ServiceError
from .config import CiConfig, ModelEntry, import_roots
from .gitmeta import GitMeta
from .results import ModelResult, Status

Echo = Callable[[str], None]
_DONE = ("passed", "failed", "inconclusive", "error")


class ServerUnusable(Exception):
    """The server refused us (token, URL) or could not be reached: a configuration problem, exit 2."""


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _status(report: Report) -> Status:
    return report.verdict


def run_local(config: CiConfig, echo: Echo) -> list[ModelResult]:
    """Check every model in this process, one after the other."""
    from ..checks.working_copy import CheckError
    from ..definitions import DefinitionError
    from ..definitions.checking import check_definition
    from ..definitions.pyfile import MissingModuleError

    root = config.source.parent
    roots = import_roots(root, config.pythonpath)
    results = []
    for entry in config.models:
        started = time.perf_counter()
        result = ModelResult(name=entry.name, path=_relative(entry.path, root), status="error",
                             fail_on_regression=entry.fail_on_regression)
        # What the repository's code prints goes into the model's report, as with `check`: the job's stdout is
        # the Markdown summary alone.
        try:
            report = check_definition(entry.path, roots, entry.options, name=entry.name)
        except MissingModuleError as exc:
            where = ", ".join(_relative(p, root) if p != root.resolve() else ". (the repository root)"
                              for p in roots)
            result.error = (f"{' '.join(str(exc).split())}; the repository's modules are imported from {where}: "
                            "add a folder with `pythonpath` in the configuration, or install the package")
        except (DefinitionError, CheckError) as exc:
            result.error = " ".join(str(exc).split())
        except Exception as exc:  # the repository's own code raised: that model errors, the others still run
            result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        else:
            result.report, result.status = report, _status(report)
        result.duration_s = time.perf_counter() - started
        echo(_progress_line(result))
        results.append(result)
    return results


def _progress_line(result: ModelResult) -> str:
    # The error itself is told once, in the summary printed at the end (and in the JUnit file), not here too.
    detail = " (the summary below says why)" if result.error else ""
    return f"{result.name}: {result.status} ({result.duration_s:.1f} s){detail}"


def _metadata(entry: ModelEntry, git: GitMeta) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": entry.name, "labels": entry.labels,
                            "git": {k: v for k, v in (("repo", git.repo), ("branch", git.branch),
                                                      ("commit", git.commit)) if v}}
    if entry.timeout_s:
        meta["timeout_s"] = entry.timeout_s
    return meta


def _report_of(run: dict[str, Any]) -> Report | None:
    raw = run.get("report")
    if not isinstance(raw, dict):
        return None
    try:
        return Report.model_validate(raw)
    except ValidationError:
        return None  # a report from a server of another schema version: shown as missing, not a crash


def server_baselines(client: ServiceClient, config: CiConfig, branch: str) -> dict[str, Baseline]:
    """The latest finished run of each model on ``branch``, fetched before this build submits anything."""
    out: dict[str, Baseline] = {}
    for entry in config.models:
        try:
            run = client.latest_finished(entry.name, branch)
        except ServiceError as exc:
            raise ServerUnusable(str(exc)) from None
        report = _report_of(run) if run else None
        if run and report:
            out[entry.name] = Baseline(source=f"run {run['id']} on {branch}", run_id=run["id"],
                                       url=client.run_page(run["id"]), report=report)
    return out


def run_remote(client: ServiceClient, config: CiConfig, git: GitMeta, echo: Echo, wait_s: float,
               poll_s: float = 1.0) -> list[ModelResult]:
    """Submit every model, then wait (up to ``wait_s`` seconds in all) until each run has finished."""
    root = config.source.parent
    results: list[ModelResult] = []
    pending: dict[str, ModelResult] = {}
    for entry in config.models:
        result = ModelResult(name=entry.name, path=_relative(entry.path, root), status="error",
                             fail_on_regression=entry.fail_on_regression)
        results.append(result)
        try:
            files = bundle(entry.path, root, config.pythonpath, entry.include) if entry.path.suffix == ".py" else None
            run_id = client.submit(entry.path, entry.options.model_dump(mode="json"), _metadata(entry, git), files)
        except (BundleError, OSError) as exc:
            result.error = f"cannot be sent: {exc}"
            echo(_progress_line(result))
            continue
        except ServiceError as exc:
            if not exc.rejects_submission:
                raise ServerUnusable(str(exc)) from None
            result.error = f"rejected by the server: {exc}"
            echo(_progress_line(result))
            continue
        result.run_id, result.run_url = run_id, client.run_page(run_id)
        pending[run_id] = result
        echo(f"{entry.name}: submitted as run {run_id} ({result.run_url})")
    deadline = time.monotonic() + wait_s
    while pending:
        for run_id, result in list(pending.items()):
            try:
                run = client.run(run_id)
            except ServiceError as exc:
                raise ServerUnusable(str(exc)) from None
            if run["status"] not in _DONE:
                continue
            del pending[run_id]
            _fill(result, run)
            echo(_progress_line(result))
        if pending and time.monotonic() > deadline:
            for result in pending.values():
                result.error = f"still not finished after {wait_s:g} s (run {result.run_id})"
                echo(_progress_line(result))
            break
        if pending:
            time.sleep(poll_s)
    return results


def _fill(result: ModelResult, run: dict[str, Any]) -> None:
    result.duration_s = float((run.get("timings") or {}).get("check_s") or 0.0)
    if run["status"] == "error":
        error = run.get("error") or {}
        result.error = f"[{error.get('code', 'error')}] {error.get('message', '')}".strip()
        return
    report = _report_of(run)
    if report is None:
        why = ""
        try:
            Report.model_validate(run.get("report"))
        except ValidationError as exc:
            first = exc.errors()[0]
            why = f" ({'.'.join(str(p) for p in first['loc'])}: {first['msg']}; server and client versions differ?)"
        result.error = f"run {run['id']} finished as {run['status']} but its report could not be read{why}"
        return
    result.report, result.status = report, _status(report)


def apply_baselines(results: list[ModelResult], baselines: dict[str, Baseline], config: CiConfig) -> None:
    """Attach each model's baseline and the regressions found against it."""
    for result in results:
        baseline = baselines.get(result.name)
        if baseline is None:
            continue
        result.baseline = baseline
        if result.report is not None:
            result.regressions = compare(baseline.report, result.report, config.regression)


__all__ = ["BaselineError", "ServerUnusable", "apply_baselines", "run_local", "run_remote", "server_baselines"]
