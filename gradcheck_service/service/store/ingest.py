"""Turn a report (its JSON form) into rows: the report itself plus the figures people filter and chart on."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .models import Base, GradientStat, RunReport, TensorResult

# Memory figures copied into columns: column -> path inside the report's ``memory`` section (bytes).
_MEMORY_FIELDS: dict[str, tuple[str, ...]] = {
    "parameter_bytes": ("parameter_bytes",),
    "gradient_bytes": ("gradient_bytes",),
    "optimizer_bytes": ("optimizer_state", "adam_bytes"),  # Adam's state, the usual worst case
    "activation_bytes": ("activation_bytes",),
    "peak_bytes": ("peak_bytes",),
}


def _finite(value: Any) -> float | None:
    """A float for the database; NaN/Inf become None (they are kept in the JSON report)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _at(section: Any, path: Iterable[str]) -> int | None:
    for key in path:
        if not isinstance(section, Mapping):
            return None
        section = section.get(key)
    value = _finite(section)
    return int(value) if value is not None else None


def memory_figures(report: Mapping[str, Any]) -> dict[str, int | None]:
    memory = report.get("memory") or {}
    return {column: _at(memory, path) for column, path in _MEMORY_FIELDS.items()}


def report_rows(run_id: str, report: Mapping[str, Any]) -> list[Base]:
    """The RunReport row and its child rows for a finished run's report."""
    check = report.get("gradient_check") or {}
    localization = report.get("localization") or {}
    norms = report.get("gradient_norms") or {}
    diagnosis = report.get("diagnosis") or {}
    rows: list[Base] = [
        RunReport(
            run_id=run_id,
            schema_version=str(report.get("schema_version", "")),
            passed=bool(report.get("passed")),
            gradient_check_passed=check.get("passed"),
            faulty_modules=list(localization.get("faulty_modules") or []),
            failed_because=list(report.get("failed_because") or []),
            inconclusive_because=list(report.get("inconclusive_because") or []),
            total_gradient_norm=_finite(norms.get("total_norm")),
            diagnosis=sorted({f.get("kind", "") for f in diagnosis.get("findings") or [] if isinstance(f, dict)}),
            report=dict(report),
            **memory_figures(report),
        )
    ]
    for kind, key in (("parameter", "parameters"), ("input", "inputs"), ("second_order", "second_order")):
        for item in check.get(key) or []:
            rows.append(TensorResult(
                run_id=run_id, kind=kind, name=str(item.get("name", ""))[:500], passed=bool(item.get("passed")),
                max_abs_error=_finite(item.get("max_abs_error")), max_rel_error=_finite(item.get("max_rel_error")),
                max_error_ratio=_finite(item.get("max_error_ratio")),
                coordinates_checked=int(item.get("coordinates_checked") or 0), numel=int(item.get("numel") or 0),
                coverage=item.get("coverage"), unused=bool(item.get("unused")),
            ))
    for item in norms.get("parameters") or []:
        rows.append(GradientStat(
            run_id=run_id, scope="parameter", name=str(item.get("name", ""))[:500], depth=None,
            norm=_finite(item.get("l2_norm")),
            extra={k: item.get(k) for k in ("max_abs", "mean_abs", "nan_count", "inf_count", "grad_to_weight")
                   if k in item},
        ))
    for depth, item in enumerate(norms.get("layers") or []):
        rows.append(GradientStat(
            run_id=run_id, scope="layer", name=str(item.get("name", ""))[:500], depth=depth,
            norm=_finite(item.get("grad_norm")),
            extra={k: item.get(k) for k in ("type", "call", "output_numel", "nonfinite_grad") if k in item},
        ))
    return rows
