"""Report sections reshaped for the run page: the check table (failures first), findings, the definition."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ...report import Finding, Report, TensorCheck
from ..store.models import Run

_KIND_ORDER = {"parameter": 0, "input": 1, "second_order": 2}


@dataclass(frozen=True)
class CheckRow:
    """One line of the gradient-check table: a compared tensor and which list of the report it comes from."""

    kind: str  # "parameter", "input" or "second_order"
    tensor: TensorCheck


def readable_report(stored: Mapping[str, Any] | None) -> Report | None:
    """The stored report read as a Report (its non-finite figures, stored as the strings "NaN", "Infinity",
    "-Infinity", floats again, so the page formats and sorts them as numbers); None when there is none, or when
    this version cannot read it (the page says so; ``/runs/<id>.json`` serves it as stored)."""
    if not stored:
        return None
    try:
        return Report.model_validate(stored)
    except ValidationError:
        return None


def check_rows(report: Report) -> list[CheckRow]:
    """Parameters, inputs and second-order terms; failures first (furthest beyond their tolerance first), then the
    rest in the report's order."""
    check = report.gradient_check
    rows = [CheckRow(kind, tensor) for kind, tensors in (("parameter", check.parameters), ("input", check.inputs),
                                                         ("second_order", check.second_order))
            for tensor in tensors]
    order = {id(row): i for i, row in enumerate(rows)}
    return sorted(rows, key=lambda r: (r.tensor.passed, -_severity(r.tensor) if not r.tensor.passed else order[id(r)]))


def _severity(tensor: TensorCheck) -> float:
    """How far a failing tensor is beyond its tolerance (relative error for reports without the ratio)."""
    return tensor.max_error_ratio if tensor.max_error_ratio is not None else tensor.max_rel_error


@dataclass(frozen=True)
class FindingView:
    source: str  # "gradient flow" or "memory"
    finding: Finding

    @property
    def where(self) -> str:
        return self.finding.where or "(whole model)"


def findings(report: Report) -> list[FindingView]:
    """Diagnosis findings (gradient flow) then memory-profile findings, each with its suggestion."""
    out = [FindingView("gradient flow", f) for f in (report.diagnosis.findings if report.diagnosis else [])]
    return out + [FindingView("memory", f) for f in (report.memory.findings if report.memory else [])]


def definition_text(run: Run) -> tuple[str, str]:
    """(language, text) of the submitted definition: a JSON spec pretty-printed, Python source as submitted."""
    if run.definition_kind == "spec":
        try:
            return "json", json.dumps(json.loads(run.definition), indent=2)
        except ValueError:
            return "json", run.definition
    return "python", run.definition


def definition_files(run: Run) -> list[tuple[str, str]]:
    """(path, text) of every file of a repository archive, the check file first; empty for a single file."""
    if not run.layout:
        return []
    entry = run.layout.get("entry")
    return sorted(((f.path, f.content) for f in run.files), key=lambda item: (item[0] != entry, item[0]))
