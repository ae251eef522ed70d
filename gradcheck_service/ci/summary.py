"""The Markdown summary of a ``ci`` run, for ``$GITHUB_STEP_SUMMARY`` or a pull-request comment.

A headline, one table row per model (verdict, worst error, faulty modules, memory, time, baseline, run page), then
for each model that failed, errored or regressed the details a reviewer needs without opening a log.
"""

from __future__ import annotations

from pathlib import Path

from ..report import Report
from ..report.units import human_bytes
from .describe import (
    blamed_modules,
    failing_tensors,
    findings_lines,
    gradient_failure,
    module_name,
    other_reasons,
    severity,
    source_module,
)
from .results import CiResult, ModelResult

_ICON = {"passed": "✅ passed", "failed": "❌ failed", "inconclusive": "❔ inconclusive", "error": "⚠️ error"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _worst(result: ModelResult) -> str:
    """The error that decided the verdict: the worst failing comparison (the joint probes when only they failed),
    else a faulty module's own, else the largest of the passing tensors."""
    report = result.report
    if report is None:
        return "-"
    failing = failing_tensors(report)
    if failing:
        worst = failing[0]
        label = "joint probes" if worst is report.gradient_check.composition else worst.name
        return f"{worst.max_rel_error:.2g} (`{label}`)"
    blamed = sorted(blamed_modules(report), key=lambda m: severity(m.max_rel_error), reverse=True)
    if blamed:
        return f"{blamed[0].max_rel_error:.2g} (`{module_name(blamed[0].module)}`)"
    tensors = report.gradient_check.parameters + report.gradient_check.inputs
    if not tensors:
        return "-"
    largest = max(tensors, key=lambda t: severity(t.max_rel_error))
    return f"{largest.max_rel_error:.2g} (`{largest.name}`)"


def _baseline_cell(result: ModelResult) -> str:
    if result.baseline is None:
        return "none"
    if not result.regressions:
        return "no regression"
    kinds = sorted({r.kind.replace("_", " ") for r in result.regressions})
    mark = "❌" if result.regression_fails else "⚠️"
    return f"{mark} {len(result.regressions)}: {', '.join(kinds)}"


def _faulty(report: Report, name: str) -> str:
    """'`act` (mylib.layers)': the faulty module and the repository module its class comes from."""
    sources = sorted({s for m in blamed_modules(report) if m.module == name and (s := source_module(m))})
    return f"`{module_name(name)}`" + (f" ({', '.join(sources)})" if sources else "")


def _row(result: ModelResult) -> str:
    report = result.report
    faulty = ", ".join(_faulty(report, name) for name in report.localization.faulty_modules) if report else ""
    memory = report.memory if report else None
    peak = human_bytes(memory.peak_bytes) if memory else "-"
    verdict = _ICON[result.outcome]
    if result.outcome == "failed" and result.status == "passed":
        verdict += " (regression)"
    link = f"[run]({result.run_url})" if result.run_url else ""
    cells = [f"`{result.name}`", verdict, _worst(result), faulty or "-", peak, f"{result.duration_s:.1f} s",
             _baseline_cell(result), link]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _details(result: ModelResult) -> list[str]:
    report = result.report
    lines: list[str] = []
    if result.error:
        lines += [f"**Error:** {result.error}"]
    if report is not None and failing_tensors(report):
        lines += ["```", gradient_failure(report), "```"]
    if report is not None:
        lines += [f"- inconclusive: {reason}" for reason in report.inconclusive_because]
        lines += [f"- {reason}" for reason in other_reasons(report)]
        if other_reasons(report):
            lines += [f"  - {text}" for text in findings_lines(report)]
    if result.regressions:
        source = result.baseline.source if result.baseline else "the baseline"
        if result.baseline and result.baseline.url:
            source = f"[{source}]({result.baseline.url})"
        lines += [f"Regressions against {source}:"] + [f"- {r.message}" for r in result.regressions]
    if not lines:
        return []
    title = f"### `{result.name}` ({result.path})"
    if result.run_url:
        title += f" · [run page]({result.run_url})"
    return [title, "", *lines, ""]


def markdown_summary(ci: CiResult) -> str:
    passed, failed, errors = ci.count("passed"), ci.count("failed"), ci.count("error")
    inconclusive = ci.count("inconclusive")
    total = len(ci.models)
    if errors:
        headline = f"⚠️ gradcheck: {errors} of {total} models ended in error"
    elif failed:
        headline = f"❌ gradcheck: {failed} of {total} models failed"
    elif inconclusive:
        allowed = " (allowed)" if ci.allow_inconclusive else ""
        headline = f"❔ gradcheck: {inconclusive} of {total} models inconclusive{allowed}"
    else:
        headline = f"✅ gradcheck: all {total} models passed"
    git = ci.git
    where = []
    if git.repo:
        where.append(f"`{git.repo}`")
    if git.branch:
        where.append(f"branch `{git.branch}`")
    if git.commit:
        where.append(f"commit `{git.commit[:12]}`")
    if git.pull_request:
        where.append(f"PR #{git.pull_request}")
    where.append(f"baseline: `{ci.base_branch}`" if ci.mode == "server" else "local checks")
    lines = [f"## {headline}", "", " · ".join(where), "",
             "| Model | Verdict | Worst rel. error | Faulty modules | Peak memory | Time | Baseline | |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [_row(result) for result in ci.models]
    lines.append("")
    for result in ci.models:
        lines += _details(result)
    lines.append(f"{passed} passed, {failed} failed, {inconclusive} inconclusive, {errors} errors.")
    return "\n".join(lines) + "\n"


def write_summary(ci: CiResult, path: Path, append: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        handle.write(markdown_summary(ci))
