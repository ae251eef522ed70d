"""What CI says about a verdict: a failure only the joint probes see, an inconclusive check, and strict JSON reports.

The reports are the real engine's for a small model, changed where a case needs a verdict the model does not
have (the engine's own tests produce those verdicts; here it is what JUnit, the summary and the test helper make
of them).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from gradcheck_service.ci.describe import failure_message
from gradcheck_service.ci.gitmeta import GitMeta
from gradcheck_service.ci.junit import junit_xml
from gradcheck_service.ci.results import CiResult, ModelResult
from gradcheck_service.ci.summary import markdown_summary
from gradcheck_service.report import Report, report_json_schema
from gradcheck_service.types import ExitCode
from tests.service_support import real_report

JOINT_REASON = "joint probes through the whole model failed: a wrong gradient arises between modules in 0"
NOT_REPRODUCIBLE = "the forward is not reproducible: the loss at the same point differed between two evaluations"


@pytest.fixture(scope="module")
def passing() -> Report:
    report = Report.model_validate(real_report())
    assert report.verdict == "passed" and report.gradient_check.composition is not None
    return report


def _changed(report: Report, **changes: Any) -> Report:
    data = report.model_dump()
    for path, value in changes.items():
        *parents, key = path.split(".")
        section = data
        for parent in parents:
            section = section[parent]
        section[key] = value
    return Report.model_validate(data)


def composition_only_failure(report: Report, faulty: str = "0") -> Report:
    """Every tensor passes; the joint probes through the whole model fail (a fault between modules)."""
    joint = report.gradient_check.composition.model_dump()  # type: ignore[union-attr]
    joint.update(passed=False, max_abs_error=0.031, max_rel_error=0.42, max_error_ratio=57.0)
    return _changed(report, **{"gradient_check.composition": joint, "gradient_check.passed": False,
                               "localization.performed": True, "localization.faulty_modules": [faulty],
                               "failed_because": [JOINT_REASON], "verdict": "failed", "passed": False})


def _ci(*results: ModelResult, allow_inconclusive: bool = False) -> CiResult:
    return CiResult(mode="local", git=GitMeta(), base_branch="main", models=list(results),
                    allow_inconclusive=allow_inconclusive)


def _cases(ci: CiResult, model: str = "net") -> dict[str, ET.Element]:
    root = ET.fromstring(junit_xml(ci).split("?>", 1)[1])
    suite = next(s for s in root.iter("testsuite") if s.get("name") == model)
    return {case.get("name", ""): case for case in suite.iter("testcase")}


def test_a_failure_only_the_joint_probes_see_fails_the_gradient_check_case(passing: Report) -> None:
    report = composition_only_failure(passing)
    assert all(t.passed for t in report.gradient_check.parameters + report.gradient_check.inputs)
    cases = _cases(_ci(ModelResult(name="net", path="net.py", status="failed", report=report)))
    failure = cases["gradient check"].find("failure")
    assert failure is not None
    assert failure.get("message") == ("joint probes over every parameter: max abs error 0.031, max rel error 0.42; "
                                      "faulty module 0")
    assert "joint probes through the whole model" in (failure.text or "")
    assert cases["diagnosis"].find("failure") is None  # not a diagnosis finding


def test_the_summary_shows_the_failing_comparisons_error_not_a_passing_tensors(passing: Report) -> None:
    report = composition_only_failure(passing)
    summary = markdown_summary(_ci(ModelResult(name="net", path="net.py", status="failed", report=report)))
    row = next(line for line in summary.splitlines() if line.startswith("| `net`"))
    assert "| 0.42 (`joint probes`) |" in row
    largest_passing = max(t.max_rel_error for t in report.gradient_check.parameters)
    assert f"{largest_passing:.2g}" not in row


def test_a_nan_error_is_the_worst_in_the_summary(passing: Report) -> None:
    parameters = [t.model_dump() for t in passing.gradient_check.parameters]
    parameters[0].update(passed=False, max_rel_error=math.nan, max_abs_error=math.nan)
    parameters[1].update(passed=False, max_rel_error=3.0)
    report = _changed(passing, **{"gradient_check.parameters": parameters, "verdict": "failed", "passed": False})
    summary = markdown_summary(_ci(ModelResult(name="net", path="net.py", status="failed", report=report)))
    assert f"| nan (`{parameters[0]['name']}`) |" in summary


def test_the_test_helpers_message_names_the_model_itself_rather_than_an_empty_module(passing: Report) -> None:
    message = failure_message(composition_only_failure(passing, faulty=""))  # '' is the model itself
    lines = message.splitlines()
    assert lines[0] == ("gradient check failed for the joint probes through the whole model; faulty module: "
                        "(root)")
    assert not [line for line in lines if line.rstrip().endswith(":")], message
    assert "joint probes over every parameter: max abs error 0.031, max rel error 0.42" in message


def _inconclusive(report: Report) -> Report:
    return _changed(report, verdict="inconclusive", passed=False, inconclusive_because=[NOT_REPRODUCIBLE])


def test_an_inconclusive_model_fails_the_job_unless_allowed_and_is_counted(passing: Report) -> None:
    result = ModelResult(name="net", path="net.py", status="inconclusive", report=_inconclusive(passing))
    ok = ModelResult(name="ok", path="ok.py", status="passed", report=passing)
    strict, allowed = _ci(result, ok), _ci(result, ok, allow_inconclusive=True)
    assert (strict.exit_code, allowed.exit_code) == (ExitCode.FAILED, ExitCode.PASSED)

    summary = markdown_summary(strict)
    assert summary.startswith("## ❔ gradcheck: 1 of 2 models inconclusive\n")
    assert "| `net` | ❔ inconclusive |" in summary and f"- inconclusive: {NOT_REPRODUCIBLE}" in summary
    assert summary.rstrip().endswith("1 passed, 0 failed, 1 inconclusive, 0 errors.")
    assert "models inconclusive (allowed)" in markdown_summary(allowed)

    failure = _cases(strict)["gradient check"].find("failure")
    assert failure is not None and failure.get("message") == f"inconclusive: {NOT_REPRODUCIBLE}"
    skipped = _cases(allowed)["gradient check"].find("skipped")
    assert skipped is not None and "inconclusive (allowed)" in (skipped.get("message") or "")


def _bare_token(constant: str) -> None:
    raise AssertionError(f"bare {constant} token")


def test_a_report_with_non_finite_figures_is_strict_json_and_reads_back(passing: Report) -> None:
    parameters = [t.model_dump() for t in passing.gradient_check.parameters]
    parameters[0].update(max_abs_error=math.nan, max_rel_error=math.inf, max_error_ratio=-math.inf)
    report = _changed(passing, **{"gradient_check.parameters": parameters})
    assert report.gradient_norms is not None
    report.gradient_norms.total_norm = math.inf
    text = report.to_json()
    data = json.loads(text, parse_constant=_bare_token)
    first = data["gradient_check"]["parameters"][0]
    assert (first["max_abs_error"], first["max_rel_error"], first["max_error_ratio"]) == ("NaN", "Infinity",
                                                                                          "-Infinity")
    assert data["gradient_norms"]["total_norm"] == "Infinity"
    assert report.to_jsonable() == data  # what the service stores
    back = Report.model_validate_json(text).gradient_check.parameters[0]
    assert math.isnan(back.max_abs_error) and back.max_rel_error == math.inf and back.max_error_ratio == -math.inf
    # The committed JSON Schema says so: every float may be one of the three strings.
    tensor = report_json_schema()["$defs"]["TensorCheck"]["properties"]["max_abs_error"]
    assert {"enum": ["NaN", "Infinity", "-Infinity"]} in tensor["anyOf"]
