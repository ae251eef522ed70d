"""Comparing a model's report with its baseline (a saved report, or the latest run on the base branch).

What counts as a regression, with the thresholds of :class:`RegressionThresholds`:
- a new failure: the baseline passed and this run fails, or a tensor or faulty module that passed now fails;
- memory growth: activation bytes or the forward+backward peak grew by more than ``memory_growth`` (+10 %);
- a gradient-norm shift: the total gradient norm, or a parameter's, changed by ``gradient_norm_factor`` (10x) or more
  in either direction -- a change of scale that usually means a broken init, normalization or loss scaling;
- a slowdown: the forward+backward step time grew by more than ``slowdown`` and by more than ``min_slowdown_s``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from ..report import Report
from .config import RegressionThresholds

RegressionKind = Literal["new_failure", "memory", "gradient_norm", "slowdown"]


class Regression(BaseModel):
    kind: RegressionKind
    metric: str
    baseline: float | str | None = None
    current: float | str | None = None
    message: str


class Baseline(BaseModel):
    """Where a model's baseline came from: a file, or a run on a server (with its dashboard page)."""

    source: str
    run_id: str | None = None
    url: str | None = None
    report: Report


class BaselineError(Exception):
    """A baseline file that cannot be read; the message names the file."""


def _growth(name: str, base: float, current: float, limit: float, unit: str) -> Regression | None:
    if base <= 0 or current <= base * (1 + limit):
        return None
    percent = (current / base - 1) * 100
    return Regression(kind="memory", metric=name, baseline=base, current=current,
                      message=f"{name} grew by {percent:.1f} % ({base:,.0f} -> {current:,.0f} {unit}; "
                      f"threshold +{limit * 100:.0f} %)")


def _norm_shift(name: str, base: float | None, current: float | None, factor: float) -> Regression | None:
    if not base or not current or base <= 0 or current <= 0:
        return None
    ratio = current / base
    if 1 / factor < ratio < factor:
        return None
    direction = "grew" if ratio > 1 else "shrank"
    return Regression(kind="gradient_norm", metric=name, baseline=base, current=current,
                      message=f"{name} {direction} {max(ratio, 1 / ratio):.3g}x ({base:.3g} -> {current:.3g}; "
                      f"threshold {factor:g}x)")


def _new_failures(base: Report, current: Report) -> list[Regression]:
    if current.passed:
        return []
    if base.passed:
        reasons = "; ".join(current.failed_because) or "failed"
        return [Regression(kind="new_failure", metric="verdict", baseline="passed", current="failed",
                           message=f"passed on the baseline, fails now: {reasons}")]
    out = []
    before = {t.name: t.passed for t in base.gradient_check.parameters + base.gradient_check.inputs}
    for t in current.gradient_check.parameters + current.gradient_check.inputs:
        if not t.passed and before.get(t.name, True):
            out.append(Regression(kind="new_failure", metric=t.name, baseline="passed", current="failed",
                                  message=f"{t.kind} {t.name} passed on the baseline, fails now "
                                  f"(max rel error {t.max_rel_error:.3g})"))
    for module in sorted(set(current.localization.faulty_modules) - set(base.localization.faulty_modules)):
        out.append(Regression(kind="new_failure", metric=f"module {module}", baseline="passed", current="failed",
                              message=f"module {module} is newly faulty"))
    return out


def compare(base: Report, current: Report, thresholds: RegressionThresholds) -> list[Regression]:
    """Regressions of ``current`` against ``base``; empty when nothing got worse beyond the thresholds."""
    found = _new_failures(base, current)
    if base.memory is not None and current.memory is not None:
        for name in ("activation_bytes", "peak_bytes"):
            hit = _growth(name, getattr(base.memory, name), getattr(current.memory, name), thresholds.memory_growth,
                          "bytes")
            if hit:
                found.append(hit)
        step_base = base.memory.forward_s + base.memory.backward_s
        step_now = current.memory.forward_s + current.memory.backward_s
        if step_base > 0 and step_now > step_base * (1 + thresholds.slowdown) and \
                step_now - step_base > thresholds.min_slowdown_s:
            found.append(Regression(
                kind="slowdown", metric="step_s", baseline=step_base, current=step_now,
                message=f"forward+backward step took {step_now * 1e3:.3g} ms, {step_now / step_base:.2f}x the "
                f"baseline's {step_base * 1e3:.3g} ms (threshold +{thresholds.slowdown * 100:.0f} %)"))
    if base.gradient_norms is not None and current.gradient_norms is not None:
        factor = thresholds.gradient_norm_factor
        hit = _norm_shift("total gradient norm", base.gradient_norms.total_norm, current.gradient_norms.total_norm,
                          factor)
        if hit:
            found.append(hit)
        before = {p.name: p.l2_norm for p in base.gradient_norms.parameters}
        for p in current.gradient_norms.parameters:
            hit = _norm_shift(f"gradient norm of {p.name}", before.get(p.name), p.l2_norm, factor)
            if hit:
                found.append(hit)
    return found


def _reports_in(data: Any) -> list[dict[str, Any]]:
    """Reports found in a decoded baseline file: one report, a list of them, or a `ci --output` results file."""
    if isinstance(data, dict) and "schema_version" in data and "gradient_check" in data:
        return [data]
    if isinstance(data, dict) and isinstance(data.get("models"), list):
        return [m["report"] for m in data["models"] if isinstance(m, dict) and isinstance(m.get("report"), dict)]
    if isinstance(data, list):
        return [item for d in data for item in _reports_in(d)]
    return []


def load_baselines(path: Path) -> dict[str, Baseline]:
    """Model name -> baseline from ``path``: a report JSON, a ``ci --output`` file, or a ``--save-report`` folder."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not path.exists():
        raise BaselineError(f"{path}: no such file or directory")
    out: dict[str, Baseline] = {}
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise BaselineError(f"{file}: not a JSON report ({exc})") from None
        found = _reports_in(data)
        if not found:
            raise BaselineError(f"{file}: holds no gradcheck report (expected `check --json` output, a "
                                "`ci --save-report` file or a `ci --output` file)")
        for raw in found:
            try:
                report = Report.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise BaselineError(f"{file}: not a report this version can read ({where}: {first['msg']})") from None
            out[report.model.name] = Baseline(source=str(file), report=report)
    return out
