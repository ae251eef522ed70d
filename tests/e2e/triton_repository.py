"""``triton_repo`` (see ``tests.fixtures.triton_models``) as a git repository that CI checks out."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.ml_repository import MLRepository, clean_env
from tests.fixtures.triton_models import copy_repository


def triton_env(**extra: str) -> dict[str, str]:
    """A CI job's environment with nothing said about Triton: ``auto`` decides in the process that runs the model."""
    env = clean_env(**extra)
    env.pop("TRITON_INTERPRET", None)
    return env


class TritonRepository(MLRepository):
    """A git repository (branch ``main``, one commit) holding ``triton_repo``, with ``bug`` seeded if given."""

    def __init__(self, root: Path, bug: str | None = None) -> None:  # noqa: D107 - the base class builds another
        self.root = copy_repository(root, bug)
        self.git("init", "-q", "-b", "main")
        self.git("remote", "add", "origin", "https://git.example.com/team/fused-kernels.git")
        self.commit("fused kernels")
