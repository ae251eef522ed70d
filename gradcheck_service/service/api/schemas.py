"""Request and response models of the API; they validate submissions and generate the OpenAPI document."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, StringConstraints

from ...options import CheckOptions
from ...strict_json import StrictModel

Label = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/=+@-]+$")]
# A run's status (store.models.RUN_STATUSES): inconclusive is a finished check whose report's verdict is
# inconclusive (nothing wrong found, too little compared to call it passed).
Status = Literal["queued", "running", "passed", "failed", "inconclusive", "error"]


class GitInfo(StrictModel):
    repo: Annotated[str, Field(max_length=500)] | None = None
    branch: Annotated[str, Field(max_length=255)] | None = None
    commit: Annotated[str, Field(max_length=64, pattern=r"^[0-9A-Za-z._-]+$")] | None = None


class RunMetadata(StrictModel):
    """Optional facts about a submission; ``name`` defaults to the spec's name or the file name."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    git: GitInfo = Field(default_factory=GitInfo)
    labels: Annotated[list[Label], Field(max_length=20)] = Field(default_factory=list)
    timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Wall-time limit of the check, seconds (default GRADCHECK_RUN_TIMEOUT_S, at most "
        "GRADCHECK_MAX_RUN_TIMEOUT_S)."
    )


class RunSubmission(StrictModel):
    """JSON body of ``POST /api/v1/runs``. A Python model file is sent as multipart instead: field ``model``
    (the ``.py`` or ``.json`` file) plus optional fields ``options`` and ``metadata`` holding JSON text."""

    spec: dict[str, Any] = Field(description="A declarative model spec (see the spec JSON Schema).")
    options: CheckOptions = Field(default_factory=CheckOptions)
    metadata: RunMetadata = Field(default_factory=RunMetadata)


def _iso_8601(value: Any) -> Any:
    """A date or time as ISO 8601 text only: pydantic would also read a number (``until=0.5``) as seconds since
    1970, which nobody typing a filter means."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        raise ValueError("expected an ISO 8601 date or time, e.g. 2026-01-01 or 2026-01-01T12:00:00Z, not a number")
    return value


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
IsoDateTime = Annotated[dt.datetime, BeforeValidator(_iso_8601)]


class RunQuery(StrictModel):
    """Filters of ``GET /api/v1/runs`` (query parameters); all optional and combined with AND, each given at most
    once."""

    model: str | None = None
    status: str | None = Field(None, description="One status or several separated by commas: queued, running, "
                               "passed, failed, inconclusive, error.")
    branch: str | None = None
    commit: str | None = None
    label: str | None = None
    since: IsoDateTime | None = Field(None, description="Created at or after (ISO 8601; UTC when no offset).")
    until: IsoDateTime | None = Field(None, description="Created before (ISO 8601; UTC when no offset).")
    passed: bool | None = Field(None, description="true: status passed; false: status failed (an inconclusive "
                                "run is neither; filter it with status=inconclusive).")
    limit: Annotated[int, Field(ge=1, le=500)] | None = None
    cursor: str | None = Field(None, description="next_cursor of the previous page.")


class Progress(BaseModel):
    stage: str | None
    fraction: float | None


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
    model: dict[str, Any] = Field(description="name, hash (SHA-256 of the definition) and kind (spec|python).")
    options: dict[str, Any]
    git: GitInfo
    labels: list[str]
    device: str
    queue: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    attempts: int
    worker_host: str | None
    progress: Progress
    timings: dict[str, float | None] = Field(description="queued_s, run_s (wall, seconds) and check_s (the "
                                             "check's own time).")
    error: RunError | None
    summary: RunSummary | None = None
    report: dict[str, Any] | None = Field(None, description="The full report (see report.schema.json).")


class RunCreated(BaseModel):
    id: str
    status: Status
    queue: str
    url: str


class RunPage(BaseModel):
    runs: list[RunOut]
    next_cursor: str | None
    limit: int


class ModelRun(BaseModel):
    id: str
    status: Status
    created_at: dt.datetime
    git_branch: str | None
    git_commit: str | None
    check_s: float | None
    total_gradient_norm: float | None
    peak_bytes: int | None
    faulty_modules: list[str]


class ModelOut(BaseModel):
    name: str
    runs: int
    last_run_at: dt.datetime
    history: list[ModelRun]


class ModelList(BaseModel):
    models: list[ModelOut]


class DefinitionFile(BaseModel):
    path: str = Field(description="Relative path in the repository archive.")
    source: str


class Definition(BaseModel):
    kind: Literal["spec", "python"]
    name: str
    hash: str
    source: str = Field(description="The spec, the model file, or an archive's check file.")
    entry: str | None = Field(None, description="Repository archive only: the check file's path.")
    pythonpath: list[str] | None = Field(None, description="Repository archive only: its import roots "
                                         "('.' is the archive's root).")
    files: list[DefinitionFile] | None = Field(None, description="Repository archive only: every file.")


class Change(BaseModel):
    a: Any
    b: Any
    delta: float | None = None


class Comparison(BaseModel):
    a: dict[str, Any]
    b: dict[str, Any]
    verdict: dict[str, Any]
    parameters: list[dict[str, Any]]
    faulty_modules: dict[str, list[str]]
    gradient_norms: dict[str, Any]
    memory: dict[str, Change]
    time: dict[str, Change]


class ErrorBody(BaseModel):
    code: str
    message: str
    problems: list[dict[str, str]] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)


class Package(BaseModel):
    name: str
    version: str


class WorkerEnvironmentOut(BaseModel):
    worker: str = Field(description="The worker's Celery node name.")
    queues: list[str]
    python: str
    started_at: dt.datetime = Field(description="When the worker last started and recorded its packages.")
    packages: list[Package]


class EnvironmentOut(BaseModel):
    workers: list[WorkerEnvironmentOut]
