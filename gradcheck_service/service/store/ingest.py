"""Turn a report (its JSON form) into rows: the report itself plus the figures people filter and chart on."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...report import Report
from ...strict_json import encode_non_finite
from .models import Base, GradientStat, RunReport, TensorResult


def _finite(value: float | None) -> float | None:
    """A float for the database; NaN/Inf become None (they are kept in the JSON report)."""
    return value if value is not None and math.isfinite(value) else None


def memory_figures(report: Report) -> dict[str, int | None]:
    """The memory figures copied into columns (bytes); Adam's state stands for the optimizer, the usual worst case."""
    memory = report.memory
    if memory is None:
        return dict.fromkeys(("parameter_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes",
                              "peak_bytes"))
    return {"parameter_bytes": memory.parameter_bytes, "gradient_bytes": memory.gradient_bytes,
            "optimizer_bytes": memory.optimizer_state.adam_bytes, "activation_bytes": memory.activation_bytes,
            "peak_bytes": memory.peak_bytes}


def report_rows(run_id: str, data: Mapping[str, Any]) -> list[Base]:
    """The RunReport row and its child rows for a finished run's report (its JSON form, stored as it is).

    The report is read as a :class:`Report`: one that does not match it raises ``ValidationError`` (a
    ``ValueError``), which ``finish_run`` records as a report that could not be stored."""
    report = Report.model_validate(data)
    check, norms = report.gradient_check, report.gradient_norms
    rows: list[Base] = [
        RunReport(
            run_id=run_id,
            schema_version=report.schema_version,
            passed=report.passed,
            gradient_check_passed=check.passed,
            faulty_modules=list(report.localization.faulty_modules),
            failed_because=list(report.failed_because),
            inconclusive_because=list(report.inconclusive_because),
            total_gradient_norm=_finite(norms.total_norm) if norms is not None else None,
            diagnosis=sorted({f.kind for f in report.diagnosis.findings}) if report.diagnosis is not None else [],
            report=dict(data),
            **memory_figures(report),
        )
    ]
    tensors = [("parameter", check.parameters), ("input", check.inputs), ("second_order", check.second_order)]
    for kind, items in tensors:
        for item in items:
            rows.append(TensorResult(
                run_id=run_id, kind=kind, name=item.name[:500], passed=item.passed,
                max_abs_error=_finite(item.max_abs_error), max_rel_error=_finite(item.max_rel_error),
                max_error_ratio=_finite(item.max_error_ratio), coordinates_checked=item.coordinates_checked,
                numel=item.numel, coverage=item.coverage, unused=item.unused,
            ))
    if norms is None:
        return rows
    for parameter in norms.parameters:
        rows.append(GradientStat(
            run_id=run_id, scope="parameter", name=parameter.name[:500], depth=None, norm=_finite(parameter.l2_norm),
            extra=encode_non_finite(parameter.model_dump(include={"max_abs", "mean_abs", "nan_count", "inf_count",
                                                                  "grad_to_weight"})),
        ))
    for depth, layer in enumerate(norms.layers):
        rows.append(GradientStat(
            run_id=run_id, scope="layer", name=layer.name[:500], depth=depth, norm=_finite(layer.grad_norm),
            extra=layer.model_dump(include={"type", "call", "output_numel", "nonfinite_grad"}),
        ))
    return rows
