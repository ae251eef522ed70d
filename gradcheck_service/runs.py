"""A run as the service's API answers it (``GET /api/v1/runs/<id>``, the list, the dashboard's ``.json``).

One model for both sides: the service builds its answer from it (``service/api/serialize.py``) and documents it in
the OpenAPI document, and the clients (``ci``, ``submit``) read the answer back into it. Unknown fields are ignored
when reading, so a client keeps working against a newer server that answers more.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PlainSerializer, ValidationError, WithJsonSchema

from .report import Report
from .types import VERDICTS

# A run's status: inconclusive is a finished check whose report's verdict is inconclusive (nothing wrong found, too
# little compared to call it passed); error is a check that did not run to the end.
Status = Literal["queued", "running", "passed", "failed", "inconclusive", "error"]

# Times are written as Python's isoformat() writes them (the offset as +00:00).
IsoTime = Annotated[dt.datetime, PlainSerializer(dt.datetime.isoformat, return_type=str),
                    WithJsonSchema({"type": "string", "format": "date-time"})]


class RunCreated(BaseModel):
    """The answer to a submission (``202``): the new run's id, its queue and where to read it."""

    id: str
    status: Status
    queue: str
    url: str


class RunModel(BaseModel):
    name: str
    hash: str = Field(description="SHA-256 of the submitted definition.")
    kind: str = Field(description="spec or python (a model file, alone or in a repository archive).")


class RunGit(BaseModel):
    repo: str | None = None
    branch: str | None = None
    commit: str | None = None


class Progress(BaseModel):
    stage: str | None
    fraction: float | None


class RunTimings(BaseModel):
    queued_s: float | None = Field(description="Wall seconds from submission to the start of the last attempt.")
    run_s: float | None = Field(description="Wall seconds of the last attempt.")
    check_s: float | None = Field(description="The check's own time, seconds (the report's timings.total_s).")


class RunError(BaseModel):
    code: str
    message: str


class RunSummary(BaseModel):
    """Headline figures of a finished run (from the queryable tables)."""

    passed: bool
    faulty_modules: list[str]
    failed_because: list[str]
    inconclusive_because: list[str] = Field(default_factory=list, description="Why the verdict is inconclusive "
                                            "(status inconclusive): nothing wrong found, too little compared.")
    diagnosis: list[str]
    total_gradient_norm: float | None
    parameter_bytes: int | None
    gradient_bytes: int | None
    optimizer_bytes: int | None
    activation_bytes: int | None
    peak_bytes: int | None


class RunOut(BaseModel):
    id: str
    status: Status
    model: RunModel
    options: dict[str, Any]
    git: RunGit
    labels: list[str]
    device: str
    queue: str
    created_at: IsoTime
    started_at: IsoTime | None
    finished_at: IsoTime | None
    attempts: int
    worker_host: str | None
    progress: Progress
    timings: RunTimings
    error: RunError | None
    summary: RunSummary | None = None
    report: dict[str, Any] | None = Field(None, description="The full report (see report.schema.json); only in "
                                          "the answer about one run.")

    @property
    def finished(self) -> bool:
        """The run ended: with a verdict, or in error."""
        return self.status in (*VERDICTS, "error")

    def parsed_report(self) -> Report | None:
        """The report as a Report; None when the run has none, or one of another schema version (a server of
        another version): shown as missing rather than a crash."""
        if self.report is None:
            return None
        try:
            return Report.model_validate(self.report)
        except ValidationError:
            return None
