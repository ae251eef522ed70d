"""Pure parts of `gradcheck-service ci`: CI-system metadata, baseline comparison, and the copyable examples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gradcheck_service.ci.baseline import compare
from gradcheck_service.ci.cli import ci
from gradcheck_service.ci.config import RegressionThresholds
from gradcheck_service.ci.gitmeta import base_branch, detect, from_environment, strip_credentials
from gradcheck_service.report import Report
from tests.service_support import ROOT, real_report


@pytest.mark.parametrize(("env", "expected"), [
    ({"GITLAB_CI": "true", "CI_PROJECT_PATH": "ml/encoder", "CI_COMMIT_SHA": "a1b2", "CI_COMMIT_REF_NAME": "mr-src",
      "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature", "CI_MERGE_REQUEST_IID": "17",
      "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "develop", "CI_DEFAULT_BRANCH": "main"},
     {"ci": "gitlab", "repo": "ml/encoder", "commit": "a1b2", "branch": "feature", "pull_request": "17",
      "base_branch": "develop"}),
    ({"CIRCLECI": "true", "CIRCLE_PROJECT_USERNAME": "ml", "CIRCLE_PROJECT_REPONAME": "encoder",
      "CIRCLE_SHA1": "c3d4", "CIRCLE_BRANCH": "feature", "CIRCLE_PULL_REQUEST": "https://github.com/ml/encoder/pull/9"},
     {"ci": "circleci", "repo": "ml/encoder", "commit": "c3d4", "branch": "feature", "pull_request": "9",
      "base_branch": None}),
    ({"BUILDKITE": "true", "BUILDKITE_REPO": "git@github.com:ml/encoder.git", "BUILDKITE_COMMIT": "e5f6",
      "BUILDKITE_BRANCH": "main", "BUILDKITE_PULL_REQUEST": "false", "BUILDKITE_PIPELINE_DEFAULT_BRANCH": "main"},
     {"ci": "buildkite", "commit": "e5f6", "branch": "main", "pull_request": None, "default_branch": "main"}),
    ({"JENKINS_URL": "https://ci.example.com/", "GIT_URL": "https://github.com/ml/encoder.git",
      "GIT_COMMIT": "0a0b", "GIT_BRANCH": "origin/feature", "CHANGE_ID": "5", "CHANGE_TARGET": "main"},
     {"ci": "jenkins", "commit": "0a0b", "branch": "feature", "pull_request": "5", "base_branch": "main"}),
    ({"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "ml/encoder", "GITHUB_REF": "refs/heads/main",
      "GITHUB_REF_NAME": "main", "GITHUB_SHA": "9f9f", "GITHUB_BASE_REF": "", "GITHUB_RUN_ID": "77"},
     {"ci": "github", "branch": "main", "pull_request": None, "base_branch": None,
      "build_url": "https://github.com/ml/encoder/actions/runs/77"}),
])
def test_ci_systems_metadata(env: dict[str, str], expected: dict[str, str | None]) -> None:
    meta = from_environment(env)
    assert {key: getattr(meta, key) for key in expected} == expected


def test_git_fills_gaps_and_credentials_are_stripped(tmp_path: Path) -> None:
    meta = detect(tmp_path, {"GITLAB_CI": "true", "CI_PROJECT_PATH": "https://bot:t0ken@gitlab.example.com/ml/x"})
    assert meta.repo == "https://gitlab.example.com/ml/x" and meta.commit is None  # not a git repository
    assert strip_credentials("git@github.com:ml/x.git") == "git@github.com:ml/x.git"
    assert base_branch(meta, None) == "main" and base_branch(meta, "release") == "release"


@pytest.fixture(scope="module")
def report() -> Report:
    return Report.model_validate(real_report())


def _changed(report: Report, **sections: dict[str, object]) -> Report:
    data = report.model_dump()
    for section, values in sections.items():
        data[section].update(values)
    return Report.model_validate(data)


def test_same_report_has_no_regression(report: Report) -> None:
    assert compare(report, report, RegressionThresholds()) == []


def test_memory_growth_threshold(report: Report) -> None:
    assert report.memory is not None
    bytes_ = report.memory.activation_bytes
    small = _changed(report, memory={"activation_bytes": int(bytes_ * 1.05)})
    assert compare(report, small, RegressionThresholds()) == []  # +5 % is under the default +10 %
    grown = _changed(report, memory={"activation_bytes": int(bytes_ * 1.3)})
    found = compare(report, grown, RegressionThresholds())
    assert [(r.kind, r.metric) for r in found] == [("memory", "activation_bytes")]
    expected = f"grew by {(round(bytes_ * 1.298) / bytes_ - 1) * 100:.1f} %"
    assert expected in found[0].message and compare(report, grown, RegressionThresholds(memory_growth=0.5)) == []


def test_gradient_norm_shift_in_either_direction(report: Report) -> None:
    assert report.gradient_norms is not None
    total = report.gradient_norms.total_norm
    for factor, word in ((12.0, "grew"), (1 / 12.0, "shrank")):
        shifted = _changed(report, gradient_norms={"total_norm": total * factor})
        found = compare(report, shifted, RegressionThresholds())
        assert [r.metric for r in found] == ["total gradient norm"] and word in found[0].message
    assert compare(report, _changed(report, gradient_norms={"total_norm": total * 9}), RegressionThresholds()) == []


def test_slowdown_needs_both_relative_and_absolute_growth(report: Report) -> None:
    base = _changed(report, memory={"forward_s": 0.010, "backward_s": 0.010})
    noisy = _changed(report, memory={"forward_s": 0.012, "backward_s": 0.012})
    slower = _changed(report, memory={"forward_s": 0.030, "backward_s": 0.030})
    assert compare(base, noisy, RegressionThresholds()) == []
    assert [r.kind for r in compare(base, slower, RegressionThresholds())] == ["slowdown"]
    tiny = _changed(report, memory={"forward_s": 0.0001, "backward_s": 0.0001})
    tiny_slower = _changed(report, memory={"forward_s": 0.0004, "backward_s": 0.0004})
    assert compare(tiny, tiny_slower, RegressionThresholds()) == []  # 3x, but 0.6 ms: timer noise


def test_new_failure_against_a_passing_baseline(report: Report) -> None:
    data = report.model_dump()
    data["passed"] = False
    data["failed_because"] = ["gradient check failed for layers.0.weight"]
    data["gradient_check"]["parameters"][0]["passed"] = False
    found = compare(report, Report.model_validate(data), RegressionThresholds())
    assert found[0].kind == "new_failure" and "layers.0.weight" in found[0].message


def test_examples_use_only_real_ci_options() -> None:
    """Every flag the copyable workflows pass to `gradcheck-service ci` exists (the examples cannot rot)."""
    known = {opt for param in ci.params for opt in getattr(param, "opts", [])}
    for name in ("github-actions.yml", "gitlab-ci.yml"):
        text = (ROOT / "deploy" / "ci" / name).read_text()
        commands = re.findall(r"gradcheck-service ci\b((?:.|\n)*?)(?:\n\s*- |\n\s*\n|\n\s+[a-z_-]+:|\Z)", text)
        assert commands, name
        flags = {flag for command in commands for flag in re.findall(r"(?<![\w-])--[a-z-]+", command)}
        assert {"--junit", "--summary", "--fail-on"} <= flags <= known, (name, flags - known)


def test_a_failing_tensor_line_gives_the_error_in_units_of_its_tolerance_and_how_it_was_checked() -> None:
    from gradcheck_service.ci.describe import tensor_line
    from gradcheck_service.report import TensorCheck

    t = TensorCheck(name="blocks.1.weight", kind="parameter", shape=[4, 4], dtype="float64", passed=False,
                    coverage="probes", method="local", numel=16, coordinates_checked=0, probes=4,
                    max_abs_error=0.02, max_rel_error=0.5, max_error_ratio=3.1e6, scope="local")
    line = tensor_line(t)
    assert "3.1e+06x its tolerance" in line and "4 probes" in line and "through its own module" in line
