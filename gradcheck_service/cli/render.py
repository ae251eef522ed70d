"""Human-readable text of a report for the terminal: verdict first, worst offenders first."""

from __future__ import annotations

from ..report import Report, TensorCheck


def _fmt(value: float) -> str:
    return f"{value:.2e}" if value else "0"


def _ratio(value: float | None) -> str:
    """An error in units of its tolerance: at most 1 passes."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.3g}" if 0.01 <= value < 1000 else f"{value:.1e}"


def _order(t: TensorCheck) -> tuple[int, float]:
    ratio = t.max_error_ratio
    if ratio is None:
        ratio = t.worst.abs_error / t.worst.tolerance if t.worst and t.worst.tolerance else 0.0
    return (int(t.passed), -ratio)


def render_gradient_check(report: Report) -> str:
    gc = report.gradient_check
    rows = sorted(gc.parameters + gc.inputs, key=_order)
    head = (f"{'tensor':<34} {'shape':<14} {'verdict':<7} {'coverage':<14} {'coords':>8} {'probes':>6} "
            f"{'err/tol':>7} {'max abs err':>11} {'max rel err':>11} {'undetected':>10}  worst (analytic vs numeric)")
    lines = [head, "-" * len(head)]
    for t in rows:
        worst = ""
        if t.worst is not None:
            where = f"[{','.join(map(str, t.worst.index))}]" if t.worst.index else "probe"
            worst = f"{where} {t.worst.analytic:.6g} vs {t.worst.numeric:.6g}"
        flags = " unused" if t.unused else ""
        flags += f" kinks={t.kinks}" if t.kinks else ""
        lines.append(
            f"{t.name[:34]:<34} {'x'.join(map(str, t.shape)) or 'scalar':<14} {'ok' if t.passed else 'FAIL':<7} "
            f"{t.scope + ':' + t.coverage:<14} {t.coordinates_checked:>8} {t.probes:>6} "
            f"{_ratio(t.max_error_ratio):>7} {_fmt(t.max_abs_error):>11} {_fmt(t.max_rel_error):>11} "
            f"{_fmt(t.undetected_error) if t.undetected_error is not None else '-':>10}  {worst}{flags}"
        )
    if gc.composition is not None:
        c = gc.composition
        lines.append(f"joint probes over every parameter, through the whole model: {'ok' if c.passed else 'FAIL'} "
                     f"({c.probes} probes, err/tol {_ratio(c.max_error_ratio)})")
    for t in gc.second_order:
        lines.append(f"second order {t.name}: {'ok' if t.passed else 'FAIL'} (error/tolerance "
                     f"{_ratio(t.max_error_ratio)}, max abs err {_fmt(t.max_abs_error)})")
    if gc.frozen_parameters:
        lines.append(f"frozen (not checked): {', '.join(gc.frozen_parameters)}")
    return "\n".join(lines)


def render_report(report: Report) -> str:
    gc = report.gradient_check
    verdict = report.verdict.upper()
    parts = [
        f"{report.model.name}: {verdict}  ({report.model.trainable_parameters:,} trainable parameters, checked in "
        f"{gc.dtype}, {gc.mode} mode, {gc.evaluations:,} evaluations, {report.timings.gradient_check_s:.2f} s)",
    ]
    parts.extend(f"  - {reason}" for reason in report.failed_because + report.inconclusive_because)
    if report.localization.performed:
        if report.localization.faulty_modules:
            parts.append("faulty modules (their own backward disagrees with finite differences of their forward):")
            for m in report.localization.modules:
                if m.blamed:
                    ratio = f", err/tol {_ratio(m.max_error_ratio)}" if m.max_error_ratio is not None else ""
                    parts.append(f"  {m.module or '<root>'} ({m.type}, call {m.call}): max rel err "
                                 f"{_fmt(m.max_rel_error)}{ratio}{' - ' + m.detail if m.detail else ''}")
        elif report.localization.note:
            parts.append(f"localization: {report.localization.note}")
    parts.append("")
    parts.append(render_gradient_check(report))
    for note in gc.notes + report.warnings:
        parts.append(f"note: {note}")
    if report.gradient_norms is not None and report.diagnosis is not None:
        from .render_health import render_gradient_flow

        parts += ["", render_gradient_flow(report.gradient_norms, report.diagnosis)]
    if report.memory is not None:
        from .render_health import render_memory

        parts += ["", render_memory(report.memory)]
    if report.output:
        parts += ["", render_output(report.output)]
    return "\n".join(parts)


def render_output(output: str, max_lines: int = 20) -> str:
    """The model's own prints, last ``max_lines`` lines: enough to recognise them without burying the verdict."""
    lines = output.rstrip("\n").splitlines()
    shown = lines[-max_lines:]
    head = f"Output of the model's code ({len(lines)} line{'s' if len(lines) != 1 else ''}"
    head += f", last {len(shown)} shown; --json has all that was kept):" if len(shown) < len(lines) else "):"
    return "\n".join([head, *(f"  | {line}" for line in shown)])
