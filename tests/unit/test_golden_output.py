"""Golden files for the text people read: the terminal report (cli/render.py), the Markdown CI summary
(ci/summary.py) and the JUnit XML (ci/junit.py), for a passing and a failing run.

The reports behind them are stored JSON (tests/golden/reports/), made by the real engine on two fixed models (the
tiny spec of tests/service_support.py, seed 0, and examples/buggy_custom_function.py) and normalised: every time
and the process's peak memory fixed, the versions and platform replaced, the model file's folder named
``<models>``. The golden text therefore changes only when the rendering, or a stored report, does.

After an intended change to the rendering or to the report, regenerate everything (the engine runs again for the
reports) and review the diff of tests/golden/ before committing it:

    GRADCHECK_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_golden_output.py
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from gradcheck_service.ci.baseline import Baseline, compare
from gradcheck_service.ci.config import RegressionThresholds
from gradcheck_service.ci.gitmeta import GitMeta
from gradcheck_service.ci.junit import junit_xml
from gradcheck_service.ci.results import CiResult, ModelResult
from gradcheck_service.ci.summary import markdown_summary
from gradcheck_service.cli.render import render_report
from gradcheck_service.report import Report
from tests.service_support import ROOT, TINY_SPEC

GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("GRADCHECK_UPDATE_GOLDEN", "") not in ("", "0")
RUN_URL = "https://gradcheck.example.com/runs/"
FIXED_SECONDS = 0.125
FIXED_PEAK_RSS = 300 * 2**20  # bytes
ENVIRONMENT = {"torch": "<torch>", "python": "<python>", "platform": "<platform>"}


def _normalised(data: Any) -> Any:
    """``data`` with every duration (a key ending in ``_s``) and the process's peak memory fixed."""
    if isinstance(data, dict):
        fixed: dict[str, Any] = {}
        for key, value in data.items():
            if key.endswith("_s") and isinstance(value, float):
                fixed[key] = FIXED_SECONDS
            elif key == "peak_rss_bytes" and value is not None:
                fixed[key] = FIXED_PEAK_RSS
            else:
                fixed[key] = _normalised(value)
        return fixed
    if isinstance(data, list):
        return [_normalised(item) for item in data]
    return data


def _engine_report(name: str) -> dict[str, Any]:
    """The real engine's report on one of the two fixed models, normalised."""
    from gradcheck_service.checks.engine import check
    from gradcheck_service.definitions.build import build_from_spec
    from gradcheck_service.definitions.pyfile import load_python_file

    with tempfile.TemporaryDirectory() as tmp:
        if name == "passing":
            definition = build_from_spec(TINY_SPEC)
        else:
            path = Path(tmp) / "swish.py"
            path.write_text((ROOT / "examples" / "buggy_custom_function.py").read_text())
            definition = load_python_file(path)
        report = check(definition.module, definition.inputs, definition.loss_fn, name=definition.name, seed=0)
        text = json.dumps(report.to_jsonable()).replace(tmp, "<models>")
    data = _normalised(json.loads(text))
    data["environment"] = ENVIRONMENT
    return dict(data)


@functools.cache
def stored_report(name: str) -> Report:
    """tests/golden/reports/<name>.json as a Report (made again by the engine when regenerating)."""
    path = GOLDEN / "reports" / f"{name}.json"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_engine_report(name), indent=2, sort_keys=True) + "\n")
    return Report.model_validate_json(path.read_text())


def _grown(report: Report) -> Report:
    """``report`` with its activation memory 30 % larger: a memory regression against ``report``."""
    data = report.model_dump()
    data["memory"]["activation_bytes"] = int(data["memory"]["activation_bytes"] * 1.3)
    return Report.model_validate(data)


def ci_result(kind: str) -> CiResult:
    """A local run where every model passed, or a server run with a pass, a failure, a regression and an error."""
    passing, failing = stored_report("passing"), stored_report("failing")
    git = GitMeta(repo="ml/models", branch="feature/swish", commit="0123456789abcdef0123", pull_request="42",
                  ci="github")
    if kind == "passing":
        model = ModelResult(name="tiny", path="models/tiny.json", status="passed", report=passing, duration_s=1.25)
        return CiResult(mode="local", git=git, base_branch="main", models=[model])
    baseline = Baseline(source="main @ 89abcdef", run_id="b" * 32, url=RUN_URL + "b" * 32, report=passing)
    models = [
        ModelResult(name="tiny", path="models/tiny.json", status="passed", report=passing, run_id="1" * 32,
                    run_url=RUN_URL + "1" * 32, duration_s=1.25, baseline=baseline),
        ModelResult(name="swish-net", path="models/swish.py", status="failed", report=failing, run_id="2" * 32,
                    run_url=RUN_URL + "2" * 32, duration_s=2.5),
        ModelResult(name="tiny-grown", path="models/tiny_grown.json", status="passed", report=_grown(passing),
                    run_id="3" * 32, run_url=RUN_URL + "3" * 32, duration_s=1.5, baseline=baseline,
                    regressions=compare(passing, _grown(passing), RegressionThresholds()), fail_on_regression=True),
        ModelResult(name="broken", path="models/broken.py", status="error", duration_s=0.5,
                    error="ValueError: no weights here\n  File \"models/broken.py\", line 2, in build"),
    ]
    return CiResult(mode="server", server="https://gradcheck.example.com", git=git, base_branch="main",
                    models=models)


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} is missing: regenerate with GRADCHECK_UPDATE_GOLDEN=1 (see the module docstring)"
    assert text == path.read_text(), f"{name} differs from the golden file (GRADCHECK_UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("kind", ["passing", "failing"])
def test_stored_reports_hold_the_verdicts_they_are_named_for(kind: str) -> None:
    report = stored_report(kind)
    assert report.passed is (kind == "passing")
    if kind == "failing":
        assert report.localization.faulty_modules == ["blocks.1.activation"]


@pytest.mark.parametrize("kind", ["passing", "failing"])
def test_terminal_report_matches_its_golden_file(kind: str) -> None:
    assert_golden(f"cli_{kind}.txt", render_report(stored_report(kind)) + "\n")


@pytest.mark.parametrize("kind", ["passing", "failing"])
def test_markdown_summary_matches_its_golden_file(kind: str) -> None:
    assert_golden(f"summary_{kind}.md", markdown_summary(ci_result(kind)))


@pytest.mark.parametrize("kind", ["passing", "failing"])
def test_junit_xml_matches_its_golden_file(kind: str) -> None:
    assert_golden(f"junit_{kind}.xml", junit_xml(ci_result(kind)))
