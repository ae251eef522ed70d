"""The outcome of one ``ci`` invocation: one result per configured model, and the exit code they add up to."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ..report import Report
from ..types import ExitCode
from .baseline import Baseline, Regression
from .gitmeta import GitMeta

RESULTS_SCHEMA = "gradcheck-ci/1"

Status = Literal["passed", "failed", "inconclusive", "error"]


class ModelResult(BaseModel):
    name: str
    path: str = Field(description="The model file or spec, relative to the repository root.")
    status: Status = Field(description="The check's own verdict (passed, failed, inconclusive); 'error' when it "
                           "could not run to the end.")
    report: Report | None = None
    error: str | None = None
    run_id: str | None = None
    run_url: str | None = Field(None, description="The run's dashboard page when a server was used.")
    duration_s: float = Field(0.0, description="Wall time of the check, seconds (on the server: its own time).")
    baseline: Baseline | None = None
    regressions: list[Regression] = Field(default_factory=list)
    fail_on_regression: bool = False

    @property
    def regression_fails(self) -> bool:
        return self.fail_on_regression and bool(self.regressions)

    @property
    def outcome(self) -> Status:
        """The CI verdict: the check's status, made 'failed' by a regression when regressions fail the job."""
        if self.status == "passed" and self.regression_fails:
            return "failed"
        return self.status


class CiResult(BaseModel):
    schema_: str = Field(RESULTS_SCHEMA, alias="schema")
    mode: Literal["local", "server"]
    server: str | None = None
    git: GitMeta
    base_branch: str
    models: list[ModelResult]
    allow_inconclusive: bool = Field(False, description="--allow-inconclusive: an inconclusive model does not fail "
                                     "the job.")

    model_config = {"populate_by_name": True}

    def count(self, outcome: Status) -> int:
        return sum(1 for m in self.models if m.outcome == outcome)

    @property
    def exit_code(self) -> int:
        """3 when any run ended in error (its verdict is unknown), else 1 when any failed or was inconclusive
        (not passing, as in ``check``; 0 for inconclusive with ``allow_inconclusive``), else 0."""
        if self.count("error"):
            return ExitCode.ERROR
        not_passing = self.count("failed") + (0 if self.allow_inconclusive else self.count("inconclusive"))
        return ExitCode.FAILED if not_passing else ExitCode.PASSED

    def to_json(self) -> str:
        # The baselines' own reports are left out: they are already stored where they came from.
        return self.model_dump_json(indent=2, by_alias=True, exclude={"models": {"__all__": {"baseline": {"report"}}}})
