"""Run-page details a new user tripped over: a probe-only tensor's worst coordinate, the definition header of an
archive with one file at its root, a history chart with a single run, and non-finite figures read back."""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from gradcheck_service.definitions.archive import pack
from gradcheck_service.report import Report
from gradcheck_service.service.dashboard import charts
from gradcheck_service.service.dashboard.report_view import check_rows, readable_report
from tests.dashboard_support import real_report
from tests.service_support import TINY_SPEC
from tests.unit.service_api import Project, finish_with_report
from tests.unit.test_api_archive import _post
from tests.unit.test_dashboard_auth import sign_in

ONE_FILE = {"net_check.py": b"import torch\n\ndef build():\n    return torch.nn.Linear(2, 1), torch.randn(3, 2)\n"}


def _probe_only(report: dict[str, Any]) -> dict[str, Any]:
    """The report with its first parameter checked by random-direction probes alone (its worst has no index)."""
    first = report["gradient_check"]["parameters"][0]
    first.update(coverage="probes", coordinates_checked=0, probes=4)
    first["worst"] = {"index": [], "analytic": 0.5, "numeric": 0.5, "abs_error": 0.0, "tolerance": 1e-6}
    return report


def test_an_archive_of_one_file_at_its_root_and_a_probe_only_tensor(api_app: Flask, client: FlaskClient,
                                                                    project: Project) -> None:
    response = _post(client, project, pack(ONE_FILE), entry="net_check.py")
    assert response.status_code == 202, response.get_json()
    run_id = response.get_json()["id"]
    report = _probe_only(json.loads(json.dumps(real_report("spec", json.dumps(TINY_SPEC), {}))))
    finish_with_report(api_app, run_id, report)
    sign_in(client, project.token)
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "repository archive, 1 file, read-only" in html
    assert "imported from the repository root</p>" in html and "<code>.</code>" not in html
    probed = report["gradient_check"]["parameters"][0]["name"]
    row = html.split(f'data-tensor="{probed}"', 1)[1].split("</tr>", 1)[0]
    assert "<code>probe</code>" in row and "<code>[]</code>" not in row


def test_a_single_run_is_drawn_away_from_the_axes() -> None:
    class Run:
        status, git_commit, id, check_s = "passed", "abc123", "r" * 32, 1.5

    class Headline:
        total_gradient_norm, peak_bytes, activation_bytes = 0.25, 1000, 400

    history = charts.model_history([(Run(), Headline())])
    norm = history["norm"]["config"]["options"]["scales"]
    assert norm["x"]["offset"] is True  # half a category of room on each side of the one commit
    assert norm["y"]["suggestedMin"] < 0.25 < norm["y"]["suggestedMax"]


def test_stored_non_finite_figures_are_numbers_on_the_page() -> None:
    report = Report.model_validate(real_report("spec", json.dumps(TINY_SPEC), {}))
    report.gradient_check.parameters[0].max_abs_error = math.nan
    report.gradient_check.parameters[0].passed = False
    stored = report.to_jsonable()  # as the service stores it: "NaN"
    assert stored["gradient_check"]["parameters"][0]["max_abs_error"] == "NaN"
    rows = check_rows(readable_report(stored))
    assert math.isnan(rows[0].max_abs_error)  # type: ignore[arg-type]
