"""Git metadata of the build: repository, branch, commit, pull request and base branch.

Read from the environment variables of the common CI systems (GitHub Actions, GitLab CI, CircleCI, Buildkite,
Jenkins), filling whatever they leave out from ``git`` itself. Credentials embedded in remote URLs
(``https://user:token@host/...``) are removed, since the repository name is stored by the service and shown in
summaries.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel


class GitMeta(BaseModel):
    repo: str | None = None
    branch: str | None = None
    commit: str | None = None
    pull_request: str | None = None
    base_branch: str | None = None
    ci: str | None = None
    build_url: str | None = None
    default_branch: str | None = None


def strip_credentials(url: str) -> str:
    """``https://user:secret@host/x.git`` -> ``https://host/x.git``; other strings unchanged."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url, flags=re.IGNORECASE)


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _github(env: Mapping[str, str]) -> GitMeta:
    server = env.get("GITHUB_SERVER_URL", "https://github.com")
    repo = env.get("GITHUB_REPOSITORY")
    pr = None
    match = re.fullmatch(r"refs/pull/(\d+)/(merge|head)", env.get("GITHUB_REF", ""))
    if match:
        pr = match.group(1)
    commit = env.get("GITHUB_SHA")
    event_path = env.get("GITHUB_EVENT_PATH")
    if pr and event_path:
        # On a pull request GITHUB_SHA is a merge commit nobody pushed; the PR's head commit is in the event.
        try:
            event = json.loads(Path(event_path).read_text())
            commit = event["pull_request"]["head"]["sha"] or commit
        except (OSError, ValueError, KeyError, TypeError):
            pass
    run_id = env.get("GITHUB_RUN_ID")
    return GitMeta(
        ci="github", repo=repo, commit=commit, pull_request=pr,
        branch=_clean(env.get("GITHUB_HEAD_REF")) or _clean(env.get("GITHUB_REF_NAME")),
        base_branch=_clean(env.get("GITHUB_BASE_REF")),
        build_url=f"{server}/{repo}/actions/runs/{run_id}" if repo and run_id else None,
    )


def _gitlab(env: Mapping[str, str]) -> GitMeta:
    return GitMeta(
        ci="gitlab", repo=env.get("CI_PROJECT_PATH"), commit=env.get("CI_COMMIT_SHA"),
        branch=_clean(env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME")) or _clean(env.get("CI_COMMIT_REF_NAME")),
        pull_request=_clean(env.get("CI_MERGE_REQUEST_IID")),
        base_branch=_clean(env.get("CI_MERGE_REQUEST_TARGET_BRANCH_NAME")),
        default_branch=_clean(env.get("CI_DEFAULT_BRANCH")), build_url=env.get("CI_JOB_URL"),
    )


def _circle(env: Mapping[str, str]) -> GitMeta:
    owner, name = env.get("CIRCLE_PROJECT_USERNAME"), env.get("CIRCLE_PROJECT_REPONAME")
    pr = _clean(env.get("CIRCLE_PR_NUMBER"))
    if not pr and env.get("CIRCLE_PULL_REQUEST"):
        pr = env["CIRCLE_PULL_REQUEST"].rstrip("/").rsplit("/", 1)[-1]
    return GitMeta(
        ci="circleci", repo=f"{owner}/{name}" if owner and name else None, commit=env.get("CIRCLE_SHA1"),
        branch=_clean(env.get("CIRCLE_BRANCH")), pull_request=pr, build_url=env.get("CIRCLE_BUILD_URL"),
    )


def _buildkite(env: Mapping[str, str]) -> GitMeta:
    pr = _clean(env.get("BUILDKITE_PULL_REQUEST"))
    return GitMeta(
        ci="buildkite", repo=env.get("BUILDKITE_REPO"), commit=env.get("BUILDKITE_COMMIT"),
        branch=_clean(env.get("BUILDKITE_BRANCH")), pull_request=None if pr in (None, "false") else pr,
        base_branch=_clean(env.get("BUILDKITE_PULL_REQUEST_BASE_BRANCH")),
        default_branch=_clean(env.get("BUILDKITE_PIPELINE_DEFAULT_BRANCH")), build_url=env.get("BUILDKITE_BUILD_URL"),
    )


def _jenkins(env: Mapping[str, str]) -> GitMeta:
    branch = _clean(env.get("CHANGE_BRANCH")) or _clean(env.get("BRANCH_NAME")) or _clean(env.get("GIT_BRANCH"))
    if branch and branch.startswith("origin/"):
        branch = branch[len("origin/"):]
    return GitMeta(
        ci="jenkins", repo=env.get("GIT_URL"), commit=env.get("GIT_COMMIT"), branch=branch,
        pull_request=_clean(env.get("CHANGE_ID")), base_branch=_clean(env.get("CHANGE_TARGET")),
        build_url=env.get("BUILD_URL"),
    )


def from_environment(env: Mapping[str, str]) -> GitMeta:
    """What the CI system says about this build; an empty GitMeta outside CI."""
    if env.get("GITHUB_ACTIONS") == "true":
        return _github(env)
    if env.get("GITLAB_CI"):
        return _gitlab(env)
    if env.get("CIRCLECI"):
        return _circle(env)
    if env.get("BUILDKITE"):
        return _buildkite(env)
    if env.get("JENKINS_URL") or env.get("JENKINS_HOME"):
        return _jenkins(env)
    return GitMeta()


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return _clean(done.stdout) if done.returncode == 0 else None


def from_git(directory: Path) -> GitMeta:
    """Repository (origin's URL), branch and commit from ``git``; fields are None outside a repository."""
    branch = _git(directory, "rev-parse", "--abbrev-ref", "HEAD")
    origin_head = _git(directory, "symbolic-ref", "--short", "refs/remotes/origin/HEAD")
    return GitMeta(
        repo=_git(directory, "config", "--get", "remote.origin.url"),
        commit=_git(directory, "rev-parse", "HEAD"),
        branch=None if branch == "HEAD" else branch,  # detached HEAD has no branch
        default_branch=origin_head.split("/", 1)[1] if origin_head and "/" in origin_head else None,
    )


def detect(directory: Path, env: Mapping[str, str] | None = None) -> GitMeta:
    """CI variables first, then ``git`` for the gaps; credentials stripped from the repository URL."""
    meta = from_environment(os.environ if env is None else env)
    local = from_git(directory)
    for field in ("repo", "branch", "commit", "default_branch"):
        if getattr(meta, field) is None:
            setattr(meta, field, getattr(local, field))
    if meta.repo:
        meta.repo = strip_credentials(meta.repo)
    return meta


def base_branch(meta: GitMeta, configured: str | None) -> str:
    """The branch whose runs are the baseline: configured > the PR's target > the default branch > 'main'."""
    return configured or meta.base_branch or meta.default_branch or "main"
