"""The dashboard in a real headless Chromium against the app served on loopback, with real seeded reports.

Needs Debian's ``chromium`` (/usr/bin/chromium) and Playwright for Python. Without Chromium these tests skip on a
developer machine and FAIL when ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.dashboard_support import (
    CHROMIUM,
    FAULTY_MODULE,
    Seeded,
    finish_queued,
    launch_chromium,
    make_app,
    seed,
    serve,
    sign_in,
)

pytestmark = pytest.mark.integration

# Pixels of a canvas that are not fully transparent: a drawn chart has thousands, an empty canvas none.
DRAWN_PIXELS_JS = """canvas => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let i = 3; i < data.length; i += 4) { if (data[i] !== 0) drawn++; }
  return drawn;
}"""
CHART_POINTS_JS = """canvas => {
  const chart = Chart.getChart(canvas);
  return chart ? chart.data.datasets.map(d => d.data.filter(v => v !== null).length) : null;
}"""


def _require_browser() -> Any:
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "Playwright for Python is not installed (pip install playwright)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, Seeded, str]]:
    sync_playwright = _require_browser()
    del sync_playwright
    app = make_app(Path(tmp_path_factory.mktemp("dashboard")))
    seeded = seed(app)
    with serve(app) as base:
        yield app, seeded, base
    from gradcheck_service.service.extensions import store

    store.session.remove()


@pytest.fixture(scope="module")
def browser(site: tuple[Flask, Seeded, str]) -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


class Page:
    """A signed-in page that records console errors and every URL the browser requested."""

    def __init__(self, browser: Any, base: str, token: str, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.base = base
        sign_in(self.page, base, token)

    def goto(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        self.page.wait_for_load_state("networkidle")
        return response

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, site: tuple[Flask, Seeded, str]) -> Iterator[Page]:
    _, seeded, base = site
    signed_in = Page(browser, base, seeded.token, viewport={"width": 1280, "height": 800})
    yield signed_in
    # No script errors and no CSP violations (they are console errors), and nothing fetched from elsewhere.
    assert signed_in.errors == []
    assert all(url.startswith(base) for url in signed_in.requests), signed_in.requests
    signed_in.close()


def _assert_charts_drawn(page: Any, minimum: int) -> int:
    canvases = page.locator("canvas[data-chart]")
    count = canvases.count()
    assert count >= minimum
    for i in range(count):
        canvas = canvases.nth(i)
        points = canvas.evaluate(CHART_POINTS_JS)
        assert points and max(points) > 0, f"chart {canvas.get_attribute('id')} has no data"
        assert canvas.evaluate(DRAWN_PIXELS_JS) > 500, f"chart {canvas.get_attribute('id')} is blank"
    return count


def test_sign_in_shows_the_projects_runs_only(browser: Any, site: tuple[Flask, Seeded, str]) -> None:
    _, seeded, base = site
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base}/runs/{seeded.run('swish-bug').id}")
    assert page.url.startswith(f"{base}/login")
    page.fill("input[name=token]", "gcs_wrong")
    page.click("button[type=submit]")
    assert "unknown or revoked" in page.locator(".alert-error").inner_text()
    page.fill("input[name=token]", seeded.token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/runs/{seeded.run('swish-bug').id}")  # back where the user was going
    page.goto(base + "/")
    rows = page.locator("table#runs tbody tr")
    ids = {rows.nth(i).get_attribute("data-run-id") for i in range(rows.count())}
    expected = {run.id for key, run in seeded.runs.items() if key != "other"}
    assert ids == expected
    assert "speech-mlp" not in page.content()
    assert page.locator(".project").inner_text() == "vision"
    page.click("text=Sign out")
    page.wait_for_url(f"{base}/login")
    page.goto(base + "/")
    assert page.url.startswith(f"{base}/login")
    context.close()


def test_failed_run_names_the_faulty_module_and_draws_its_charts(page: Page, site: tuple[Flask, Seeded, str]) -> None:
    _, seeded, _ = site
    page.goto("/?status=failed")
    page.page.click(f"tr[data-run-id='{seeded.run('swish-bug').id}'] a.rowlink")
    page.page.wait_for_load_state("networkidle")
    banner = page.page.locator("#verdict")
    assert "failed" in banner.get_attribute("class")
    assert page.page.locator("#verdict code.faulty").inner_text() == FAULTY_MODULE
    first_row = page.page.locator("#check-table tbody tr").first
    assert "fail" in first_row.inner_text()
    _assert_charts_drawn(page.page, minimum=3)
    # The gradient-flow chart draws the per-layer signal and both thresholds.
    flow = page.page.locator("#chart-flow").evaluate(
        "c => Chart.getChart(c).data.datasets.map(d => d.label)")
    assert any("vanishing threshold" in label for label in flow)
    assert any("exploding threshold" in label for label in flow)
    raw = page.page.locator("#raw-json").get_attribute("href")
    assert raw and raw.endswith(".json")


def test_check_table_sorts_by_a_clicked_column(page: Page, site: tuple[Flask, Seeded, str]) -> None:
    _, seeded, _ = site
    page.goto(f"/runs/{seeded.run('swish-bug').id}")
    header = page.page.locator("#check-table th", has_text="Error / tolerance")
    values_js = """t => Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[3].dataset.value))"""
    header.click()
    ascending = page.page.locator("#check-table").evaluate(values_js)
    assert ascending == sorted(ascending) and header.get_attribute("aria-sort") == "ascending"
    header.click()
    descending = page.page.locator("#check-table").evaluate(values_js)
    assert descending == sorted(descending, reverse=True)


def test_vanishing_run_shows_the_finding_with_its_suggestion(page: Page, site: tuple[Flask, Seeded, str]) -> None:
    _, seeded, _ = site
    page.goto(f"/runs/{seeded.run('sigmoid').id}")
    finding = page.page.locator("#findings .finding-vanishing")
    assert "Suggestion" in finding.inner_text()
    # Points under the vanishing line are drawn red: the first layers' signal is below the threshold.
    colors = page.page.locator("#chart-flow").evaluate(
        "c => Chart.getChart(c).data.datasets[0].pointBackgroundColor")
    assert colors[0] != colors[-1]


def test_memory_checkpointing_and_batch_scaling_sections(page: Page, site: tuple[Flask, Seeded, str]) -> None:
    _, seeded, _ = site
    page.goto(f"/runs/{seeded.run('mlp-3').id}")
    assert page.page.locator("#largest-batch").inner_text().replace(",", "").isdigit()
    _assert_charts_drawn(page.page, minimum=5)  # flow, norms, memory, activations, batch scaling
    page.goto(f"/runs/{seeded.run('cnn-1').id}")
    assert page.page.locator("#checkpoint-table tbody tr").count() >= 2
    assert page.page.locator("#definition pre").inner_text().lstrip().startswith("{")


def test_filters_narrow_the_list(page: Page, site: tuple[Flask, Seeded, str]) -> None:
    _, seeded, base = site
    page.goto("/")
    page.page.select_option("#f-model", "mlp")  # applies at once
    page.page.wait_for_url("**model=mlp**")
    models = page.page.locator("table#runs tbody tr td:nth-child(3) a").all_inner_texts()
    assert models and set(models) == {"mlp"}
    page.page.select_option("#f-label", "nightly")
    page.page.wait_for_url("**label=nightly**")
    assert page.page.locator("table#runs tbody tr").count() == 3
    page.page.fill("#f-q", "e3e3e3")
    page.page.click("#filters button[type=submit]")
    page.page.wait_for_url("**q=e3e3e3**")
    assert page.page.locator("table#runs tbody tr").get_attribute("data-run-id") == seeded.run("mlp-3").id
    page.page.click("text=Clear")
    page.page.wait_for_url(f"{base}/")


def test_comparison_highlights_what_changed(page: Page, site: tuple[Flask, Seeded, str]) -> None:
    _, seeded, _ = site
    page.goto(f"/runs/{seeded.run('swish-bug').id}")
    page.page.click("#compare-previous")
    page.page.wait_for_load_state("networkidle")
    assert f"a={seeded.run('swish-ok').id}" in page.page.url
    change = page.page.locator("#verdict-change")
    assert "changed" in change.get_attribute("class") and "passed → failed" in change.inner_text()
    assert FAULTY_MODULE in page.page.locator("#what-changed").inner_text()
    assert page.page.locator("#compare-tensors tr.changed").count() >= 1
    _assert_charts_drawn(page.page, minimum=1)


def test_model_history_charts(page: Page) -> None:
    page.goto("/models")
    page.page.click("text=mlp")
    page.page.wait_for_load_state("networkidle")
    assert _assert_charts_drawn(page.page, minimum=4) == 4
    assert page.page.locator("table#history tbody tr").count() == 4


def test_a_nearly_flat_history_has_distinct_tick_labels(browser: Any, site: tuple[Flask, Seeded, str]) -> None:
    import copy

    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.tokens import create_token
    from tests.dashboard_support import _finish, _submit, mlp_spec, real_report

    app, _, base = site
    with app.app_context():  # a project of its own, so the other tests' pages keep their runs
        token = create_token(store.session(), "flat-history").token
        store.session().commit()
    client, spec_text = app.test_client(), mlp_spec()
    for i, norm in enumerate((24.9001, 24.9013, 24.9007, 24.9019)):  # a total gradient norm that barely moves
        report = copy.deepcopy(real_report("spec", spec_text, {}))
        report["gradient_norms"]["total_norm"] = norm
        run_id = _submit(client, token, "spec", spec_text, "flat-mlp", {}, {"branch": "main", "commit": f"f1a7{i}"},
                         [])
        _finish(app, run_id, report)
    page = Page(browser, base, token, viewport={"width": 1280, "height": 800})
    try:
        page.goto("/models/flat-mlp")
        labels = page.page.locator("#chart-norm").evaluate(
            "c => Chart.getChart(c).scales.y.ticks.map(t => t.label).filter(l => l !== '')")
        assert len(labels) >= 3, labels
        assert len(set(labels)) == len(labels), labels  # e.g. 24.9, 24.9002, 24.9004 rather than 24.9 three times
        assert all(label.startswith("24.9") for label in labels), labels
        assert page.errors == []
    finally:
        page.close()


def test_another_projects_run_is_not_found(page: Page, site: tuple[Flask, Seeded, str]) -> None:
    _, seeded, _ = site
    response = page.goto(f"/runs/{seeded.run('other').id}")
    assert response.status == 404
    assert page.page.locator("h1").inner_text() == "Not found"
    assert page.page.locator(".project").inner_text() == "vision"  # still the dashboard's own layout
    # Chromium logs the 404 document itself as a console error; that one was asked for.
    page.errors = [e for e in page.errors if "404 (NOT FOUND)" not in e]


def test_queued_run_updates_live_without_reloading(page: Page, site: tuple[Flask, Seeded, str]) -> None:
    app, seeded, _ = site
    queued = seeded.run("queued").id
    page.goto("/")
    row = page.page.locator(f"tr[data-run-id='{queued}']")
    assert row.get_attribute("data-status") == "queued"
    page.page.evaluate("window.notReloaded = true")
    finish_queued(app, queued)
    page.page.wait_for_selector(f"tr[data-run-id='{queued}'][data-status='passed']", timeout=15_000)
    assert row.locator("[data-role=status]").inner_text().lower() == "passed"
    assert page.page.evaluate("window.notReloaded") is True


def test_phone_layout_has_no_sideways_scrolling(browser: Any, site: tuple[Flask, Seeded, str]) -> None:
    _, seeded, base = site
    phone = Page(browser, base, seeded.token, viewport={"width": 390, "height": 844}, is_mobile=True,
                 has_touch=True)
    try:
        for path in ("/", f"/runs/{seeded.run('swish-bug').id}", "/models/mlp",
                     f"/compare?a={seeded.run('swish-ok').id}&b={seeded.run('swish-bug').id}"):
            phone.goto(path)
            width = phone.page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width}px wide on a 390px phone"
        assert phone.errors == []
    finally:
        phone.close()


def test_the_check_table_fits_a_1400px_window(browser: Any, site: tuple[Flask, Seeded, str]) -> None:
    """Every column of the run page's check table, "Worst coordinate" included, is inside a 1400 px viewport
    without scrolling the table sideways."""
    _, seeded, base = site
    wide = Page(browser, base, seeded.token, viewport={"width": 1400, "height": 900})
    try:
        wide.goto(f"/runs/{seeded.run('swish-bug').id}")
        header = wide.page.locator("#check-table thead th").last
        assert header.text_content() == "Worst coordinate"
        box = header.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 1400, box
        wrap = wide.page.locator("#gradient-check .table-wrap").first
        scroll, client = wrap.evaluate("w => [w.scrollWidth, w.clientWidth]")
        assert scroll <= client, f"the table scrolls sideways: {scroll}px in a {client}px box"
        cell = wide.page.locator("#check-table tbody tr").first.locator("td.worst")
        cell_box = cell.bounding_box()
        assert cell_box is not None and cell_box["x"] + cell_box["width"] <= box["x"] + box["width"] + 1
        assert wide.errors == []
    finally:
        wide.close()
