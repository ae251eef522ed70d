"""Each tensor's error in units of its own calibrated tolerance: the report field, the CLI column and the run page
agree with the verdict (at most 1 passes), where the relative error alone can look alarming on a passing row."""

from __future__ import annotations

import re

import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient
from torch import nn

from gradcheck_service import check
from gradcheck_service.cli.render import render_gradient_check
from gradcheck_service.report import TensorCheck
from tests.fixtures.buggy_models import BUGGY
from tests.unit.service_api import Project
from tests.unit.test_dashboard_auth import sign_in
from tests.unit.test_dashboard_pages import failed_run


class KeyBiasAttention(nn.Module):
    """Self-attention whose key projection has a bias: softmax ignores the constant shift it adds to every score
    of a query, so that bias's true gradient is exactly 0 and autograd and finite differences give roundoff."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.query = nn.Linear(width, width, bias=False)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.query(x) @ self.key(x).transpose(-1, -2) / x.shape[-1] ** 0.5
        return scores.softmax(-1) @ self.value(x)


def _tensors(report_tensors: list[TensorCheck]) -> dict[str, TensorCheck]:
    return {t.name: t for t in report_tensors}


def test_a_zero_gradient_row_reads_ok_in_units_of_its_tolerance() -> None:
    torch.manual_seed(0)
    report = check(KeyBiasAttention(), (torch.randn(2, 5, 8),), mode="full", health=False, memory=False)
    key_bias = _tensors(report.gradient_check.parameters)["key.bias"]
    assert key_bias.passed
    assert key_bias.max_rel_error > 0.1  # analytic ~1e-17 against numeric ~1e-9: "relative" error of order 1
    assert key_bias.max_error_ratio is not None and key_bias.max_error_ratio < 1
    table = render_gradient_check(report)
    header, *rows = table.splitlines()
    column = header.split().index("err/tol")
    row = next(line for line in rows if line.startswith("key.bias"))
    assert row.split()[2] == "ok" and float(row.split()[column]) == pytest.approx(key_bias.max_error_ratio, rel=1e-2)


@pytest.mark.parametrize("case", ["missing_factor", "wrong_boundary_coordinate", "off_by_a_tenth_of_a_percent",
                                  "detached_parameter", "wrong_embedding_row"])
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_every_tensor_passes_exactly_when_its_ratio_is_at_most_one(case: str, mode: str) -> None:
    model, inputs, _ = BUGGY[case]()
    report = check(model, inputs, mode=mode, health=False, memory=False)
    tensors = report.gradient_check.parameters + report.gradient_check.inputs
    assert not report.gradient_check.passed
    for t in tensors:
        assert t.max_error_ratio is not None
        assert t.passed == (t.max_error_ratio <= 1), (t.name, t.max_error_ratio, t.note)
    # Localization rows carry the same measure: a checked call passes exactly when its ratio is at most 1.
    checked = [m for m in report.localization.modules if m.max_error_ratio is not None]
    assert checked and any(m.blamed for m in checked)
    for m in checked:
        assert m.passed == (m.max_error_ratio <= 1), (m.module, m.max_error_ratio, m.detail)


def test_run_page_shows_the_ratio_column_in_agreement_with_the_verdicts(api_app: Flask, client: FlaskClient,
                                                                        project: Project) -> None:
    run_id = failed_run(api_app, client, project)
    sign_in(client, project.token)
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    table = html[html.index('id="check-table"'):html.index("</table>", html.index('id="check-table"'))]
    assert "Error / tolerance" in table
    rows = re.findall(r'<tr class="(fail|)" data-tensor="([^"]+)">.*?<td class="num ratio" data-value="([^"]+)">',
                      table, re.S)
    assert rows and {verdict for verdict, _, _ in rows} == {"fail", ""}
    for verdict, name, value in rows:
        assert (float(value) > 1) == (verdict == "fail"), (name, value)
    ratios = [float(value) for verdict, _, value in rows if verdict == "fail"]
    assert ratios == sorted(ratios, reverse=True)  # failures furthest beyond their tolerance come first


def test_the_ratio_is_stored_with_each_tensor_row(api_app: Flask, client: FlaskClient, project: Project) -> None:
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.models import TensorResult

    run_id = failed_run(api_app, client, project)
    sign_in(client, project.token)
    report = client.get(f"/runs/{run_id}.json").get_json()["report"]
    gc = report["gradient_check"]
    expected = {t["name"]: t["max_error_ratio"] for t in gc["parameters"] + gc["inputs"]}
    with api_app.app_context():
        rows = store.session().query(TensorResult).filter_by(run_id=run_id).all()
        assert {row.name: row.max_error_ratio for row in rows} == pytest.approx(expected)
        assert all(row.passed == (row.max_error_ratio <= 1) for row in rows)
        assert {row.passed for row in rows} == {True, False}
