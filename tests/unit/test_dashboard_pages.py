"""Dashboard pages through the Flask test client: project scoping, filters, paging, the run page, error pages,
and the list page's queries staying bounded whatever the number of runs."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from tests.dashboard_support import BUGGY_FILE, FAULTY_MODULE, real_report
from tests.service_support import TINY_SPEC
from tests.unit.service_api import Project, finish_with_report
from tests.unit.test_dashboard_auth import sign_in

TINY = json.dumps(TINY_SPEC)


def submit(client: FlaskClient, project: Project, name: str = "tiny", branch: str = "main",
           labels: list[str] | None = None) -> str:
    response = client.post("/api/v1/runs", headers=project.headers, json={
        "spec": TINY_SPEC, "metadata": {"name": name, "git": {"branch": branch, "commit": "abc123"},
                                        "labels": labels or []}})
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def submit_buggy(client: FlaskClient, project: Project) -> str:
    import io

    response = client.post("/api/v1/runs", headers=project.headers, content_type="multipart/form-data", data={
        "model": (io.BytesIO(BUGGY_FILE.read_bytes()), "swish.py"),
        "metadata": json.dumps({"name": "swish-net", "git": {"branch": "feature/swish"}}),
    })
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def passed_run(api_app: Flask, client: FlaskClient, project: Project, **kwargs: Any) -> str:
    run_id = submit(client, project, **kwargs)
    finish_with_report(api_app, run_id, real_report("spec", TINY, {}))
    return run_id


def failed_run(api_app: Flask, client: FlaskClient, project: Project) -> str:
    run_id = submit_buggy(client, project)
    finish_with_report(api_app, run_id, real_report("python", BUGGY_FILE.read_text(), {}))
    return run_id


def run_ids_on(html: str) -> list[str]:
    return re.findall(r'<tr data-run-id="([0-9a-f]+)"', html)


def test_new_project_sees_the_empty_state(client: FlaskClient, project: Project) -> None:
    sign_in(client, project.token)
    html = client.get("/").get_data(as_text=True)
    assert 'id="empty-state"' in html and "gradcheck-service submit" in html
    assert 'id="empty-state"' in client.get("/models").get_data(as_text=True)


def test_only_the_signed_in_projects_runs_are_shown(api_app: Flask, client: FlaskClient, project: Project,
                                                    other_project: Project) -> None:
    mine = passed_run(api_app, client, project, name="mine")
    theirs = passed_run(api_app, client, other_project, name="theirs")
    sign_in(client, project.token)
    html = client.get("/").get_data(as_text=True)
    assert run_ids_on(html) == [mine]
    assert "theirs" not in html
    for path in (f"/runs/{theirs}", f"/runs/{theirs}.json", "/models/theirs", f"/compare?a={mine}&b={theirs}"):
        response = client.get(path)
        assert response.status_code == 404, path
    assert client.get(f"/runs/{theirs}.json").get_json()["error"]["code"] == "not_found"  # JSON stays JSON
    assert "theirs" not in client.get("/models").get_data(as_text=True)
    assert client.get(f"/live.json?ids={mine},{theirs}").get_json()["runs"][0]["id"] == mine
    assert len(client.get(f"/live.json?ids={theirs}").get_json()["runs"]) == 0


def test_another_projects_run_is_a_404_page_in_the_dashboard_style(api_app: Flask, client: FlaskClient,
                                                                   project: Project, other_project: Project) -> None:
    theirs = passed_run(api_app, client, other_project)
    sign_in(client, project.token)
    response = client.get(f"/runs/{theirs}")
    html = response.get_data(as_text=True)
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "Not found" in html and "dashboard.css" in html and f"no run {theirs!r}" in html.replace("&#39;", "'")


def test_filters_and_search(api_app: Flask, client: FlaskClient, project: Project) -> None:
    ok = passed_run(api_app, client, project, name="alpha-net", branch="main", labels=["nightly"])
    bad = failed_run(api_app, client, project)
    queued = submit(client, project, name="gamma", branch="dev")
    sign_in(client, project.token)
    assert run_ids_on(client.get("/?status=failed").get_data(as_text=True)) == [bad]
    assert run_ids_on(client.get("/?status=queued").get_data(as_text=True)) == [queued]
    assert run_ids_on(client.get("/?branch=feature/swish").get_data(as_text=True)) == [bad]
    assert run_ids_on(client.get("/?label=nightly").get_data(as_text=True)) == [ok]
    assert run_ids_on(client.get("/?model=gamma").get_data(as_text=True)) == [queued]
    assert run_ids_on(client.get("/?q=ALPHA").get_data(as_text=True)) == [ok]
    assert run_ids_on(client.get(f"/?q={bad[:8]}").get_data(as_text=True)) == [bad]
    assert set(run_ids_on(client.get("/?since=2000-01-01").get_data(as_text=True))) == {ok, bad, queued}
    assert run_ids_on(client.get("/?until=2000-01-01").get_data(as_text=True)) == []
    none = client.get("/?q=%25").get_data(as_text=True)  # LIKE wildcards are searched for literally
    assert 'id="no-match"' in none


@pytest.mark.parametrize("query, problem", [("status=finished", "status must be one of"),
                                            ("since=yesterday", "YYYY-MM-DD"),
                                            ("older=not-a-cursor", "not valid any more")])
def test_bad_filter_values_are_a_400_page_naming_the_problem(client: FlaskClient, project: Project, query: str,
                                                             problem: str) -> None:
    sign_in(client, project.token)
    response = client.get(f"/?{query}")
    assert response.status_code == 400
    assert problem in response.get_data(as_text=True)


def test_paging_walks_every_run_once_both_ways(api_app: Flask, client: FlaskClient, project: Project) -> None:
    api_app.config["PAGE_SIZE"] = 3
    made = [submit(client, project, name=f"m{i}") for i in range(8)]
    sign_in(client, project.token)
    seen: list[str] = []
    pages: list[str] = []
    url: str | None = "/"
    while url:
        html = client.get(url).get_data(as_text=True)
        pages.append(html)
        ids = run_ids_on(html)
        assert len(ids) <= 3
        seen += ids
        older = re.search(r'rel="next" href="([^"]+)"', html)
        url = older.group(1).replace("&amp;", "&") if older else None
    assert sorted(seen) == sorted(made) and len(seen) == len(made)
    newer = re.search(r'rel="prev" href="([^"]+)"', pages[-1])
    assert newer
    back = client.get(newer.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert run_ids_on(back) == run_ids_on(pages[-2])


def test_failed_run_page_names_the_faulty_module_and_lists_failures_first(api_app: Flask, client: FlaskClient,
                                                                          project: Project) -> None:
    run_id = failed_run(api_app, client, project)
    sign_in(client, project.token)
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    banner = html[html.index('id="verdict"'):html.index("</section>", html.index('id="verdict"'))]
    assert FAULTY_MODULE in banner and "faulty module" in banner
    table = html[html.index('id="check-table"'):]
    verdicts = re.findall(r'<tr class="(fail|)" data-tensor=', table)
    assert verdicts[0] == "fail" and "fail" not in verdicts[verdicts.index(""):]
    for section in ("gradient-flow", "parameter-norms", "memory", "definition"):
        assert f'id="{section}"' in html
    assert "SwishFunction" in html  # the submitted source, read-only
    raw = client.get(f"/runs/{run_id}.json").get_json()
    assert raw["report"]["localization"]["faulty_modules"] == [FAULTY_MODULE]


def test_chart_configs_are_embedded_as_data_not_code(api_app: Flask, client: FlaskClient,
                                                     project: Project) -> None:
    run_id = passed_run(api_app, client, project)
    sign_in(client, project.token)
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    configs = re.findall(r'<script type="application/json" id="(chart-[a-z-]+)-config">(.*?)</script>', html, re.S)
    names = {name for name, _ in configs}
    assert {"chart-flow", "chart-param-norms", "chart-memory"} <= names
    for _, text in configs:
        assert json.loads(text)["data"]["datasets"]
    assert "<script>" not in html  # no inline code: the CSP allows only scripts served from this site


def test_queued_and_error_runs_have_no_report_sections(api_app: Flask, client: FlaskClient,
                                                       project: Project) -> None:
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.lifecycle import fail_run

    queued = submit(client, project)
    broken = submit(client, project)
    with api_app.app_context():
        fail_run(store.session(), broken, None, "timeout", "ran past 600 s")
    sign_in(client, project.token)
    html = client.get(f"/runs/{queued}").get_data(as_text=True)
    assert "Waiting for a worker" in html and "data-live=" in html
    html = client.get(f"/runs/{broken}").get_data(as_text=True)
    assert "Error: timeout" in html and "ran past 600 s" in html and 'id="gradient-check"' not in html


def test_compare_highlights_the_changed_verdict_and_newly_faulty_module(api_app: Flask, client: FlaskClient,
                                                                        project: Project) -> None:
    a = passed_run(api_app, client, project)
    b = failed_run(api_app, client, project)
    sign_in(client, project.token)
    html = client.get(f"/compare?a={a}&b={b}").get_data(as_text=True)
    assert re.search(r'<li class="changed" id="verdict-change">Verdict: passed → <strong>failed', html)
    assert f"Newly faulty: <code>{FAULTY_MODULE}</code>" in html
    picker = client.get("/compare").get_data(as_text=True)
    assert a in picker and b in picker  # the picker offers recent runs


def test_unknown_paths_html_for_browsers_json_for_the_api(client: FlaskClient, project: Project) -> None:
    html = client.get("/no/such/page", headers={"Accept": "text/html"})
    assert html.status_code == 404 and html.mimetype == "text/html"
    api = client.get("/api/v1/no-such-route", headers={"Accept": "text/html"})
    assert api.status_code == 404 and api.get_json()["error"]["code"] == "not_found"


def test_a_crash_is_a_500_page_without_the_traceback(api_app: Flask, client: FlaskClient, project: Project,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from gradcheck_service.service.dashboard import charts

    run_id = passed_run(api_app, client, project)

    def broken(_report: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(charts, "gradient_flow", broken)
    sign_in(client, project.token)
    response = client.get(f"/runs/{run_id}")
    html = response.get_data(as_text=True)
    assert response.status_code == 500 and "Something went wrong" in html
    assert "secret internal detail" not in html and "Traceback" not in html


def test_list_page_queries_stay_bounded_as_runs_grow(api_app: Flask, client: FlaskClient,
                                                     project: Project) -> None:
    """The same number of statements for 3 runs and for 3 pages' worth, each reading at most a page of runs."""
    from gradcheck_service.service.extensions import store

    api_app.config["PAGE_SIZE"] = 10
    sign_in(client, project.token)

    def statements() -> list[str]:
        seen: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            seen.append(statement)

        event.listen(store.engine, "before_cursor_execute", record)
        try:
            assert client.get("/").status_code == 200
        finally:
            event.remove(store.engine, "before_cursor_execute", record)
        return seen

    for i in range(3):
        submit(client, project, name=f"m{i}", labels=["x"])
    few = statements()
    for i in range(30):
        submit(client, project, name=f"m{i}", labels=["x"])
    many = statements()
    assert len(few) == len(many)
    page_reads = [s for s in many if re.search(r"FROM runs\s", s) and "count(" not in s.lower()
                  and "DISTINCT" not in s]
    assert page_reads and all("LIMIT" in s for s in page_reads)


def test_mixed_precision_section_shows_the_verdict(api_app: Flask, client: FlaskClient, project: Project) -> None:
    from tests.dashboard_support import mlp_spec

    response = client.post("/api/v1/runs", headers=project.headers,
                           json={"spec": json.loads(mlp_spec()), "options": {"precision": "bf16"}})
    run_id = response.get_json()["id"]
    report = real_report("spec", mlp_spec(), {"precision": "bf16"})
    finish_with_report(api_app, run_id, report)
    sign_in(client, project.token)
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    section = html[html.index('id="precision"'):]
    assert report["memory"]["precision"]["verdict"].capitalize() in section
    assert section.count("<tr") == 1 + len(report["memory"]["precision"]["parameters"])


def test_count_and_label_choices_are_bounded_reads(api_app: Flask, client: FlaskClient, project: Project,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import select

    from gradcheck_service.service.dashboard import queries
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.models import Project as ProjectRow
    from gradcheck_service.service.store.queries import RunFilters

    for i in range(4):
        submit(client, project, name=f"m{i}", labels=[f"l{i}"])
    with api_app.app_context():
        session = store.session()
        project_id = session.scalar(select(ProjectRow.id).where(ProjectRow.name == project.name))
        assert project_id is not None
        assert queries.count_matching(session, project_id, RunFilters()) == 4
        assert queries.count_matching(session, project_id, RunFilters(), cap=2) == 3  # "more than 2"
        monkeypatch.setattr(queries, "LABEL_WINDOW", 2)
        assert queries.filter_choices(session, project_id).labels == ["l2", "l3"]  # the latest runs' labels
    sign_in(client, project.token)
    html = client.get("/?label=l0").get_data(as_text=True)
    assert '<option value="l0" selected>' in html  # the active filter stays selectable


def test_a_probed_tensor_reads_as_probed_not_as_nothing_checked(api_app: Flask, client: FlaskClient,
                                                                 project: Project) -> None:
    run_id = passed_run(api_app, client, project)
    sign_in(client, project.token)
    report = client.get(f"/runs/{run_id}.json").get_json()["report"]
    probed = [t for t in report["gradient_check"]["parameters"] if t["probes"] and not t["coordinates_checked"]]
    assert probed, "the tiny spec's default-mode check probes some tensor"
    table = client.get(f"/runs/{run_id}").get_data(as_text=True)
    row = table[table.index(f'data-tensor="{probed[0]["name"]}"'):]
    row = row[: row.index("</tr>")]
    assert f"+ {probed[0]['probes']} probes" in row
    assert "one coordinate could hide an error of at most" in row and probed[0]["scope"] in row
