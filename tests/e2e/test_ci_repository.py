"""`gradcheck-service ci` in a throwaway ML repository: locally in-process, and through a live local service.

Asserted as a CI job sees it: exit codes, the JUnit file's failures (naming the parameter and the faulty module),
the Markdown summary, and a real regression against a baseline (the correct model's hidden layer is widened on a
branch, so its activation and peak memory grow).
"""

from __future__ import annotations

import json
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.ml_repository import ALL_MODELS, CORRECT_MODELS, MLRepository, clean_env, model_table
from tests.service_support import ServiceProcess, cli, free_port, service_env, wait_until_ready

pytestmark = pytest.mark.e2e


def _suites(junit: Path) -> dict[str, ET.Element]:
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    return {suite.get("name", ""): suite for suite in root.iter("testsuite")}


def _case(suite: ET.Element, name: str) -> ET.Element:
    found = [case for case in suite.iter("testcase") if case.get("name") == name]
    assert len(found) == 1, f"no single test case {name!r} in suite {suite.get('name')}"
    return found[0]


def _assert_broken_model_named(junit: Path) -> None:
    """The broken model's failures name the failing tensor and the faulty module, with numbers.

    In default mode each parameter is compared through its own module, where the upstream Linear's gradient is
    right for the gradient it receives; the wrong gradient shows in the model's input and the joint probes.
    """
    suites = _suites(junit)
    assert set(suites) >= {"broken", "good", "tiny"}
    failure = _case(suites["broken"], "gradient check").find("failure")
    assert failure is not None
    message = failure.get("message", "")
    assert "input[0]" in message and "encoder.act" in message and "max rel error" in message
    text = failure.text or ""
    assert "input input[0]" in text and "joint probes" in text
    assert "module encoder.act (ScaledTanh)" in text and "backprop" in text and "finite differences" in text
    assert "head.weight" not in text  # the head's gradients are right and are not blamed
    localization = _case(suites["broken"], "localization").find("failure")
    assert localization is not None and localization.get("message") == "faulty module: encoder.act"
    for name in ("good", "tiny"):  # correct models: no check of theirs fails (a baseline regression may)
        assert suites[name].get("errors") == "0"
        for check in ("gradient check", "localization", "diagnosis", "memory"):
            assert _case(suites[name], check).find("failure") is None


def test_local_ci_on_a_repository_with_a_broken_model(tmp_path: Path) -> None:
    repo = MLRepository(tmp_path / "repo")
    commit = repo.git("rev-parse", "HEAD")
    done = repo.ci("--summary", "reports/summary.md")
    assert done.returncode == 1, done.stdout + done.stderr
    junit = repo.root / "reports" / "gradcheck.xml"  # from `junit = ...` in [tool.gradcheck]
    _assert_broken_model_named(junit)
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("15", "2", "0")

    summary = (repo.root / "reports" / "summary.md").read_text()
    assert summary.startswith("## ❌ gradcheck: 1 of 3 models failed")
    assert f"commit `{commit[:12]}`" in summary and "branch `main`" in summary
    assert "git.example.com/team/toy-ml" in summary and "s3cret" not in summary  # credentials stripped
    assert "| `broken` | ❌ failed |" in summary and "`encoder.act`" in summary
    assert "| `good` | ✅ passed |" in summary and "| `tiny` | ✅ passed |" in summary
    assert "input input[0]: max abs error" in summary  # the wrong gradient as it reaches the model's input
    assert summary in done.stdout  # the same summary on stdout for the job log
    assert "Traceback" not in done.stderr


def test_local_ci_passes_with_only_correct_models_and_errors_on_a_raising_build(tmp_path: Path) -> None:
    repo = MLRepository(tmp_path / "repo")
    repo.configure(CORRECT_MODELS)
    passed = repo.ci("--junit", "out/ok.xml")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    suites = _suites(repo.root / "out" / "ok.xml")
    assert set(suites) == {"good", "tiny"} and all(s.get("failures") == "0" for s in suites.values())
    assert "✅ gradcheck: all 2 models passed" in passed.stdout

    repo.configure(CORRECT_MODELS + model_table("models/raises.py"))
    errored = repo.ci("--junit", "out/error.xml")
    assert errored.returncode == 3, errored.stdout + errored.stderr
    error = _case(_suites(repo.root / "out" / "error.xml")["raises"], "gradient check").find("error")
    assert error is not None and "checkpoint weights.pt not found" in error.get("message", "")
    assert "| `good` | ✅ passed |" in errored.stdout  # the other models still ran


@pytest.mark.parametrize(("config", "expected"), [
    ("[tool.gradcheck]\nmodels = []\n", "pyproject.toml: tool.gradcheck.models: List should have at least 1 item"),
    ('[tool.gradcheck]\ncolour = "blue"\n' + model_table("models/good.py").replace("[[", "\n[[", 1),
     "pyproject.toml: tool.gradcheck.colour: unknown key"),
    (model_table("models/missing.py"), "pyproject.toml: tool.gradcheck.models[0].path: models/missing.py: no such file"),
    (model_table("models/good.py", mode="quick"), "pyproject.toml: tool.gradcheck.models[0].mode: Input should be"),
    (model_table("models/good.py", **{"fail-on": ["regression", "exploded"]}),
     "pyproject.toml: tool.gradcheck.models[0].fail-on[1]: Input should be 'vanishing'"),
    (model_table("models/good.py", **{"memory-budget": "lots"}),
     "pyproject.toml: tool.gradcheck.models[0].memory-budget: 'lots' is not a size"),
    ("[tool.gradcheck\n", "pyproject.toml: invalid TOML"),
])
def test_bad_configuration_exits_2_naming_file_and_key(tmp_path: Path, config: str, expected: str) -> None:
    repo = MLRepository(tmp_path / "repo")
    (repo.root / "pyproject.toml").write_text(config)
    done = repo.ci()
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_local_baseline_regression(tmp_path: Path) -> None:
    repo = MLRepository(tmp_path / "repo")
    repo.configure(CORRECT_MODELS)
    saved = repo.ci("--save-report", "baseline", "--output", "results-main.json")
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert sorted(p.name for p in (repo.root / "baseline").iterdir()) == ["good.json", "tiny.json"]

    repo.git("checkout", "-q", "-b", "wider")
    repo.set_hidden(16)  # 4x the hidden activations: a real memory regression
    repo.commit("widen the hidden layer")
    warned = repo.ci("--baseline", "baseline", "--summary", "summary.md")
    assert warned.returncode == 0, warned.stdout + warned.stderr  # reported, not gating without --fail-on
    summary = (repo.root / "summary.md").read_text()
    assert "| `good` | ✅ passed |" in summary and "⚠️" in summary
    assert "activation_bytes grew by" in summary and "threshold +10 %" in summary
    assert "| `tiny` | ✅ passed |" in summary and "no regression" in summary

    gated = repo.ci("--baseline", "results-main.json", "--fail-on", "regression", "--junit", "gated.xml")
    assert gated.returncode == 1, gated.stdout + gated.stderr
    suites = _suites(repo.root / "gated.xml")
    failure = _case(suites["good"], "baseline").find("failure")
    assert failure is not None and "activation_bytes grew by" in failure.get("message", "")
    assert "peak_bytes grew by" in (failure.text or "")
    assert _case(suites["tiny"], "baseline").find("failure") is None

    broken_baseline = repo.root / "not-a-report.json"
    broken_baseline.write_text('{"hello": 1}')
    unreadable = repo.ci("--baseline", str(broken_baseline))
    assert unreadable.returncode == 2 and "not-a-report.json: holds no gradcheck report" in unreadable.stderr


def test_github_actions_metadata_and_step_summary(tmp_path: Path) -> None:
    repo = MLRepository(tmp_path / "repo")
    repo.configure(model_table("specs/tiny.json"))
    step_summary = tmp_path / "step-summary.md"
    step_summary.write_text("earlier step\n")
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"head": {"sha": "abc123def4567890"}}}))
    env = clean_env(GITHUB_ACTIONS="true", GITHUB_REPOSITORY="team/toy-ml", GITHUB_REF="refs/pull/42/merge",
                    GITHUB_SHA="f" * 40, GITHUB_HEAD_REF="feature/x", GITHUB_BASE_REF="develop",
                    GITHUB_EVENT_PATH=str(event), GITHUB_STEP_SUMMARY=str(step_summary))
    done = repo.ci("--output", "results.json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    text = step_summary.read_text()
    assert text.startswith("earlier step\n## ✅ gradcheck: all 1 models passed")  # appended, not overwritten
    assert "`team/toy-ml` · branch `feature/x` · commit `abc123def456` · PR #42" in text
    git = json.loads((repo.root / "results.json").read_text())["git"]
    assert git["base_branch"] == "develop" and git["ci"] == "github"


# --- against a live local service -------------------------------------------------------------------------------


def _api(url: str, token: str) -> dict:  # type: ignore[type-arg]
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def test_ci_against_a_live_service(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = service_env(DATA_DIR=str(data_dir))
    made = cli(["token", "create", "--project", "toy-ml"], env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    port = free_port()
    server = ServiceProcess(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    ci_env = clean_env(GRADCHECK_TOKEN=token)
    try:
        wait_until_ready(port, 90, "the embedded server to be ready")
        repo = MLRepository(tmp_path / "repo")

        # The base branch: its runs become the baseline of later branches.
        repo.configure(CORRECT_MODELS)
        repo.commit("only correct models")
        main = repo.ci("--server", url, env=ci_env)
        assert main.returncode == 0, main.stdout + main.stderr
        main_runs = _api(f"{url}/api/v1/runs?branch=main", token)["runs"]
        assert sorted(r["model"]["name"] for r in main_runs) == ["good", "tiny"]
        assert all(r["git"]["commit"] == repo.git("rev-parse", "HEAD") for r in main_runs)
        assert all(r["git"]["repo"] == "https://git.example.com/team/toy-ml.git" for r in main_runs)

        # A feature branch widens the correct model and brings the broken one back.
        repo.git("checkout", "-q", "-b", "feature")
        repo.set_hidden(16)
        repo.configure(ALL_MODELS)
        repo.commit("wider model, custom activation")
        feature = repo.ci("--server", url, "--fail-on", "regression", "--summary", "reports/summary.md",
                          env=ci_env)
        assert feature.returncode == 1, feature.stdout + feature.stderr
        junit = repo.root / "reports" / "gradcheck.xml"
        _assert_broken_model_named(junit)
        suites = _suites(junit)
        regression = _case(suites["good"], "baseline").find("failure")
        assert regression is not None and "activation_bytes grew by" in regression.get("message", "")
        good_main = next(r for r in main_runs if r["model"]["name"] == "good")
        assert f"run {good_main['id']} on main" in (regression.text or "")
        assert _case(suites["tiny"], "baseline").find("failure") is None
        assert _case(suites["broken"], "baseline").find("skipped") is not None  # never ran on main

        summary = (repo.root / "reports" / "summary.md").read_text()
        feature_runs = _api(f"{url}/api/v1/runs?branch=feature", token)["runs"]
        assert len(feature_runs) == 3
        for run in feature_runs:
            assert f"{url}/runs/{run['id']}" in summary  # links to the dashboard's run pages
        assert f"{url}/runs/{good_main['id']}" in summary  # and to the baseline run
        assert "| `broken` | ❌ failed |" in summary and "`encoder.act`" in summary
        assert "| `good` | ❌ failed (regression) |" in summary and "baseline: `main`" in summary

        # A run that ends in error on the server: exit 3; a bad token or no token: exit 2.
        repo.configure(model_table("models/raises.py"))
        errored = repo.ci("--server", url, env=ci_env)
        assert errored.returncode == 3, errored.stdout + errored.stderr
        assert "checkpoint weights.pt not found" in errored.stdout
        refused = repo.ci("--server", url, env=clean_env(GRADCHECK_TOKEN="gcs_not-a-token"))
        assert refused.returncode == 2 and "401" in refused.stderr and "Traceback" not in refused.stderr
        missing = repo.ci("--server", url, env=clean_env())
        assert missing.returncode == 2 and "GRADCHECK_TOKEN" in missing.stderr
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-3000:]
