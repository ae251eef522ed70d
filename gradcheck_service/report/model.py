"""The report of one check: what was checked, the verdict and why, and every section.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from ..options import CheckOptions
from ..strict_json import ReportModel
from .gradients import GradientCheck, Localization
from .health import Diagnosis, GradientNorms
from .memory import MemoryProfile

SCHEMA_VERSION = "1.0"


class Timings(ReportModel):
    gradient_check_s: float = 0.0
    localization_s: float = 0.0
    health_s: float = 0.0
    memory_s: float = 0.0
    total_s: float = 0.0
    peak_rss_bytes: int | None = Field(
        None, description="The process's peak resident memory when the report was done (Linux VmHWM): in a fresh "
        "CLI process, what the whole check cost in memory, interpreter and imports included. Compare with "
        "memory.peak_bytes, one training step of the model.")
    peak_cuda_bytes: int | None = Field(
        None, description="torch.cuda.max_memory_allocated() when the report was done, for checks on CUDA.")


class ModelInfo(ReportModel):
    name: str
    type: str
    parameters: int
    trainable_parameters: int
    dtype: str
    device: str


class Environment(ReportModel):
    torch: str
    python: str
    platform: str


class Report(ReportModel):
    schema_version: str = SCHEMA_VERSION
    passed: bool = Field(description="Gradient check passed and no diagnosis named in fail_on was found.")
    verdict: Literal["passed", "failed", "inconclusive"] = Field(
        "failed", description="passed; failed (failed_because says why); inconclusive: nothing wrong was found but "
        "the check could not compare enough to say the gradients are right (inconclusive_because says why). "
        "Inconclusive is not passing.")
    failed_because: list[str] = Field(default_factory=list)
    inconclusive_because: list[str] = Field(default_factory=list)
    model: ModelInfo
    options: CheckOptions
    gradient_check: GradientCheck
    localization: Localization
    gradient_norms: GradientNorms | None = None
    diagnosis: Diagnosis | None = None
    memory: MemoryProfile | None = None
    timings: Timings
    environment: Environment
    warnings: list[str] = Field(default_factory=list)
    output: str | None = Field(
        None, description="What the model's own code wrote to stdout and stderr while it was loaded, built and "
        "run during the check (in the order written; at most about 64 KiB, the head and the tail around a line "
        "saying how much was left out). None when it printed nothing or the report came from check() called "
        "directly, which captures nothing."
    )

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    def to_jsonable(self) -> dict[str, Any]:
        """The report as plain JSON data (what the service stores), non-finite floats as their strings.

        ``model_dump(mode="json")`` would keep NaN and infinities as floats, which a JSON column cannot hold."""
        return dict(json.loads(self.model_dump_json()))
