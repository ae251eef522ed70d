"""What a worker and its sandboxed child say to each other, as types: ``job.json`` in, ``progress.json`` and
``result.json`` out.

The child runs the user's model, so everything it writes is read as hostile: a result that does not parse as
:class:`Result` (exactly one of a report or an error) is the child's fault, answered as ``bad_result``, never a
``KeyError`` in the worker. The report inside stays JSON here; the store reads it as a :class:`Report` (and ends
the run as ``report_not_stored`` when it does not parse).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SandboxSpec(_Message):
    """The limits a sandboxed job runs under and how it is isolated (for the child to name a limit that fired)."""

    limits: dict[str, Any] = Field(default_factory=dict)
    isolation: dict[str, Any] = Field(default_factory=dict)


class Job(_Message):
    """``job.json``: the definition file (relative to the job folder), the check's options, where imports resolve."""

    definition: str
    options: dict[str, Any] = Field(default_factory=dict)  # CheckOptions, validated by the child (invalid_options)
    name: str | None = None
    pythonpath: list[str] = Field(default_factory=list)
    sandbox: SandboxSpec | None = None


class Progress(_Message):
    """``progress.json``: the stage the check is in and how far, rewritten as it goes."""

    stage: str = Field(max_length=64)
    fraction: float
    at: float


class Problem(_Message):
    path: str
    message: str


class JobError(BaseModel):
    """Why a job produced no report. Codes and messages are the run's error as the API answers it."""

    model_config = ConfigDict(extra="allow")  # codes add what they name (the missing module, a limit's figures)

    code: str
    message: str
    problems: list[Problem] = Field(default_factory=list)


class Result(_Message):
    """``result.json``: the report, or the error that took its place."""

    report: dict[str, Any] | None = None
    error: JobError | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Result:
        if (self.report is None) == (self.error is None):
            raise ValueError("a result holds a report or an error, exactly one")
        return self
