"""JUnit XML: one ``testsuite`` per model, one ``testcase`` per check of it.

The cases are ``gradient check``, ``localization``, ``diagnosis``, ``memory`` and ``baseline``; a failure's
``message`` attribute is one line naming the parameter and the faulty module, its text holds every number. The
layout (``testsuites > testsuite > testcase > failure|error|skipped``, ``system-out``) is the common subset that
GitHub, GitLab, Jenkins, CircleCI and Buildkite all read.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ..report import Report
from ..report.units import human_bytes
from .describe import (
    blamed_modules,
    comparison_label,
    failing_tensors,
    faulty_modules,
    findings_lines,
    gradient_failure,
    module_line,
    module_name,
    other_reasons,
    source_module,
)
from .results import CiResult, ModelResult

MEMORY_KINDS = ("checkpoint_mismatch", "precision", "underflow")


class _Suite:
    def __init__(self, result: ModelResult, allow_inconclusive: bool) -> None:
        self.result = result
        self.allow_inconclusive = allow_inconclusive
        self.element = ET.Element("testsuite", name=result.name)
        self.counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

    def case(self, name: str, seconds: float = 0.0) -> ET.Element:
        self.counts["tests"] += 1
        return ET.SubElement(self.element, "testcase", name=name, classname=f"gradcheck.{self.result.name}",
                             time=f"{seconds:.3f}", file=self.result.path)

    def fail(self, case: ET.Element, message: str, text: str, kind: str = "failure") -> None:
        self.counts["failures" if kind == "failure" else "errors"] += 1
        node = ET.SubElement(case, kind, message=message, type=kind)
        node.text = text

    def skip(self, case: ET.Element, message: str) -> None:
        self.counts["skipped"] += 1
        ET.SubElement(case, "skipped", message=message)

    def out(self, case: ET.Element, text: str) -> None:
        if text:
            ET.SubElement(case, "system-out").text = text


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _gradient_case(suite: _Suite, report: Report) -> None:
    case = suite.case("gradient check", report.timings.gradient_check_s)
    gc = report.gradient_check
    if failing_tensors(report):
        worst = failing_tensors(report)[0]
        message = (f"{comparison_label(worst, report)}: max abs error {worst.max_abs_error:.3g}, max rel error "
                   f"{worst.max_rel_error:.3g}")
        if report.localization.faulty_modules:
            message += f"; faulty module {faulty_modules(report)}"
        suite.fail(case, message, gradient_failure(report))
    elif report.verdict == "inconclusive":
        reasons = "; ".join(report.inconclusive_because)
        if suite.result.outcome == "inconclusive" and suite.allow_inconclusive:
            suite.skip(case, f"inconclusive (allowed): {reasons}")
        else:
            suite.fail(case, f"inconclusive: {reasons}", "\n".join(report.inconclusive_because))
    else:
        suite.out(case, f"{len(gc.parameters)} parameters and {len(gc.inputs)} inputs match finite differences "
                  f"({gc.mode} mode, {gc.dtype}, {gc.evaluations} evaluations)")


def _localization_case(suite: _Suite, report: Report) -> None:
    loc = report.localization
    case = suite.case("localization", report.timings.localization_s)
    if not loc.performed:
        suite.skip(case, "the gradient check passed: nothing to localize")
    elif loc.faulty_modules:
        lines = [module_line(m) for m in blamed_modules(report)] or [f"module {module_name(m)}"
                                                                      for m in loc.faulty_modules]
        sources = sorted({s for m in blamed_modules(report) if (s := source_module(m))})
        where = f" (defined in {', '.join(sources)})" if sources else ""
        suite.fail(case, f"faulty module: {faulty_modules(report)}{where}", "\n".join(lines))
    else:
        suite.out(case, loc.note or "no module's own backward is wrong (the fault is between modules)")


def _diagnosis_case(suite: _Suite, report: Report) -> None:
    case = suite.case("diagnosis", report.timings.health_s)
    if report.diagnosis is None:
        suite.skip(case, "gradient health was not measured (health = false)")
        return
    failing = [r for r in other_reasons(report) if not any(k in r for k in MEMORY_KINDS)]
    lines = findings_lines(report)
    if failing:
        suite.fail(case, "; ".join(failing), "\n".join(failing + lines))
    else:
        suite.out(case, "\n".join(lines) or "no vanishing, exploding, non-finite or dead-ReLU gradients")


def _memory_case(suite: _Suite, report: Report) -> None:
    case = suite.case("memory", report.timings.memory_s)
    memory = report.memory
    if memory is None:
        suite.skip(case, "memory was not profiled (memory = false)")
        return
    failing = [r for r in other_reasons(report) if any(k in r for k in MEMORY_KINDS)]
    figures = (f"activations {human_bytes(memory.activation_bytes)}, peak {human_bytes(memory.peak_bytes)}, "
               f"parameters {human_bytes(memory.parameter_bytes)}")
    scaling = memory.batch_scaling
    if scaling is not None and scaling.budget_bytes is not None:
        figures += f"; largest batch in {human_bytes(scaling.budget_bytes)}: {scaling.largest_batch}"
    if failing:
        suite.fail(case, "; ".join(failing), "\n".join([*failing, figures]))
    else:
        suite.out(case, figures)


def _baseline_case(suite: _Suite, result: ModelResult) -> None:
    case = suite.case("baseline")
    if result.baseline is None:
        suite.skip(case, "no baseline to compare with")
        return
    lines = [f"compared with {result.baseline.source}"] + [r.message for r in result.regressions]
    if result.regression_fails:
        suite.fail(case, f"{len(result.regressions)} regression(s): {result.regressions[0].message}", "\n".join(lines))
    else:
        suite.out(case, "\n".join(lines) if result.regressions else lines[0] + ": no regression")


def _suite(result: ModelResult, allow_inconclusive: bool) -> ET.Element:
    suite = _Suite(result, allow_inconclusive)
    report = result.report
    if report is None:
        case = suite.case("gradient check", result.duration_s)
        message = _first_line(result.error or "the check did not finish")
        rest = "\n".join((result.error or "").splitlines()[1:])  # the first line is the message: not repeated
        suite.fail(case, message, rest, kind="error")
    else:
        _gradient_case(suite, report)
        _localization_case(suite, report)
        _diagnosis_case(suite, report)
        _memory_case(suite, report)
        _baseline_case(suite, result)
    if result.run_url:
        props = ET.Element("properties")
        ET.SubElement(props, "property", name="run_url", value=result.run_url)
        suite.element.insert(0, props)
    for key, value in suite.counts.items():
        suite.element.set(key, str(value))
    suite.element.set("time", f"{result.duration_s:.3f}")
    return suite.element


def junit_xml(ci: CiResult) -> str:
    """The whole JUnit document for one ``ci`` run."""
    root = ET.Element("testsuites", name="gradcheck")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for result in ci.models:
        element = _suite(result, ci.allow_inconclusive)
        root.append(element)
        for key in totals:
            totals[key] += int(element.get(key, "0"))
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(ci: CiResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(ci), encoding="utf-8")
