"""What changed between two runs: verdicts, per-tensor results, faulty modules, gradient norms, memory, time."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import GradientStat, Run, RunReport, TensorResult

_MEMORY = ("parameter_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes", "peak_bytes")


def _change(a: float | int | None, b: float | int | None) -> dict[str, Any]:
    return {"a": a, "b": b, "delta": (b - a) if a is not None and b is not None else None}


def _ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a and b is not None else None


def _tensors(session: Session, run_id: str) -> dict[tuple[str, str], TensorResult]:
    rows = session.scalars(select(TensorResult).where(TensorResult.run_id == run_id))
    return {(row.kind, row.name): row for row in rows}


def _layers(session: Session, run_id: str) -> dict[tuple[str, int], GradientStat]:
    """Layer signals keyed by (name, call index within that name), so a module called twice pairs correctly."""
    rows = session.scalars(
        select(GradientStat).where(GradientStat.run_id == run_id, GradientStat.scope == "layer")
        .order_by(GradientStat.depth)
    )
    out: dict[tuple[str, int], GradientStat] = {}
    seen: dict[str, int] = {}
    for row in rows:
        call = seen.get(row.name, 0)
        seen[row.name] = call + 1
        out[(row.name, call)] = row
    return out


def _brief(run: Run) -> dict[str, Any]:
    return {"id": run.id, "status": run.status, "model_name": run.model_name, "model_hash": run.model_hash,
            "git_branch": run.git_branch, "git_commit": run.git_commit, "created_at": run.created_at.isoformat()}


def compare_runs(session: Session, a: Run, b: Run) -> dict[str, Any]:
    """Both runs must already be scoped to the caller's project."""
    report_a = session.get(RunReport, a.id)
    report_b = session.get(RunReport, b.id)
    tensors_a, tensors_b = _tensors(session, a.id), _tensors(session, b.id)
    parameters = []
    for key in sorted(set(tensors_a) | set(tensors_b)):
        ta, tb = tensors_a.get(key), tensors_b.get(key)
        parameters.append({
            "kind": key[0], "name": key[1],
            "a": {"passed": ta.passed, "max_abs_error": ta.max_abs_error, "max_rel_error": ta.max_rel_error}
            if ta else None,
            "b": {"passed": tb.passed, "max_abs_error": tb.max_abs_error, "max_rel_error": tb.max_rel_error}
            if tb else None,
            "verdict_changed": (ta.passed if ta else None) != (tb.passed if tb else None),
        })
    faulty_a = list(report_a.faulty_modules) if report_a else []
    faulty_b = list(report_b.faulty_modules) if report_b else []
    layers_a, layers_b = _layers(session, a.id), _layers(session, b.id)
    layers = []
    for layer in sorted(set(layers_a) | set(layers_b), key=lambda k: (
            (layers_a.get(k) or layers_b[k]).depth or 0, k)):
        la, lb = layers_a.get(layer), layers_b.get(layer)
        norm_a, norm_b = (la.norm if la else None), (lb.norm if lb else None)
        layers.append({"name": layer[0], "call": layer[1], "a": norm_a, "b": norm_b,
                       "ratio": _ratio(norm_a, norm_b)})
    total_a = report_a.total_gradient_norm if report_a else None
    total_b = report_b.total_gradient_norm if report_b else None
    wall_a = (a.finished_at - a.started_at).total_seconds() if a.finished_at and a.started_at else None
    wall_b = (b.finished_at - b.started_at).total_seconds() if b.finished_at and b.started_at else None
    return {
        "a": _brief(a),
        "b": _brief(b),
        "verdict": {"a": a.status, "b": b.status, "changed": a.status != b.status,
                    "same_definition": a.model_hash == b.model_hash},
        "parameters": parameters,
        "faulty_modules": {"a": faulty_a, "b": faulty_b,
                           "added": sorted(set(faulty_b) - set(faulty_a)),
                           "removed": sorted(set(faulty_a) - set(faulty_b))},
        "gradient_norms": {"total": {"a": total_a, "b": total_b, "ratio": _ratio(total_a, total_b)},
                           "layers": layers},
        "memory": {name: _change(getattr(report_a, name, None) if report_a else None,
                                 getattr(report_b, name, None) if report_b else None) for name in _MEMORY},
        "time": {"check_s": _change(a.check_s, b.check_s), "run_s": _change(wall_a, wall_b)},
    }
