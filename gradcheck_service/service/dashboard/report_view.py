"""Report sections reshaped for the run page: the check table (failures first), findings, the definition."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ...report import Report
from ..store.models import Run

_KIND_ORDER = {"parameter": 0, "input": 1, "second_order": 2}


@dataclass(frozen=True)
class CheckRow:
    """One line of the gradient-check table."""

    kind: str
    name: str
    shape: list[int]
    passed: bool
    max_abs_error: float | None
    max_rel_error: float | None
    max_error_ratio: float | None  # error / its tolerance; at most 1 passes (None in older reports)
    coordinates_checked: int
    probes: int
    numel: int
    coverage: str
    scope: str  # "local" (through its own module's call) or "global" (through the whole model)
    undetected_error: float | None  # the largest error one coordinate could hide (None in older reports)
    failed_coordinates: int
    worst_index: list[int] | None
    worst_analytic: float | None
    worst_numeric: float | None
    worst_tolerance: float | None
    unused: bool
    note: str | None


def readable_report(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The stored report with its non-finite figures as floats again (stored as the strings "NaN", "Infinity",
    "-Infinity"), so the page formats and sorts them as numbers; a report this version cannot read is shown as
    stored."""
    if not stored:
        return {}
    try:
        return Report.model_validate(stored).model_dump()
    except ValidationError:
        return dict(stored)


def check_rows(report: Mapping[str, Any]) -> list[CheckRow]:
    """Parameters, inputs and second-order terms; failures first (furthest beyond their tolerance first), then the
    rest in the report's order."""
    check = report.get("gradient_check") or {}
    rows: list[CheckRow] = []
    for key, kind in (("parameters", "parameter"), ("inputs", "input"), ("second_order", "second_order")):
        for item in check.get(key) or []:
            worst = item.get("worst") or {}
            rows.append(CheckRow(
                kind=kind, name=str(item.get("name", "")), shape=list(item.get("shape") or []),
                passed=bool(item.get("passed")), max_abs_error=item.get("max_abs_error"),
                max_rel_error=item.get("max_rel_error"), max_error_ratio=item.get("max_error_ratio"),
                coordinates_checked=int(item.get("coordinates_checked") or 0), probes=int(item.get("probes") or 0),
                numel=int(item.get("numel") or 0), coverage=str(item.get("coverage") or ""),
                scope=str(item.get("scope") or "global"), undetected_error=item.get("undetected_error"),
                failed_coordinates=int(item.get("failed_coordinates") or 0),
                worst_index=worst.get("index") if worst else None, worst_analytic=worst.get("analytic"),
                worst_numeric=worst.get("numeric"), worst_tolerance=worst.get("tolerance"),
                unused=bool(item.get("unused")), note=item.get("note"),
            ))
    order = {id(row): i for i, row in enumerate(rows)}
    return sorted(rows, key=lambda r: (r.passed, -_severity(r) if not r.passed else order[id(r)]))


def _severity(row: CheckRow) -> float:
    """How far a failing row is beyond its tolerance (relative error for reports without the ratio)."""
    return row.max_error_ratio if row.max_error_ratio is not None else row.max_rel_error or 0.0


@dataclass(frozen=True)
class FindingView:
    source: str  # "gradient flow" or "memory"
    kind: str
    where: str
    explanation: str
    suggestion: str
    measured: float | None
    threshold: float | None


def findings(report: Mapping[str, Any]) -> list[FindingView]:
    """Diagnosis findings (gradient flow) then memory-profile findings, each with its suggestion."""
    out: list[FindingView] = []
    for source, section in (("gradient flow", report.get("diagnosis")), ("memory", report.get("memory"))):
        for item in (section or {}).get("findings") or []:
            out.append(FindingView(
                source=source, kind=str(item.get("kind", "")), where=str(item.get("where") or "(whole model)"),
                explanation=str(item.get("explanation", "")), suggestion=str(item.get("suggestion", "")),
                measured=item.get("measured"), threshold=item.get("threshold"),
            ))
    return out


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
