"""Plain-text descriptions of a report's failures, shared by the JUnit file, the summary and ``testing``.

Every line names the parameter or module and carries the numbers a user needs to judge it: the largest absolute
and relative differences between backprop and finite differences, and the worst coordinate with both values.
"""

from __future__ import annotations

import math

from ..report import ModuleCheck, Report, TensorCheck


def failing_tensors(report: Report) -> list[TensorCheck]:
    """Failing comparisons, worst relative error first (NaN counts as the worst): parameters and inputs (first and
    second order), and the joint probes over every parameter when they failed -- a fault between modules, which
    each tensor's own check can pass."""
    gc = report.gradient_check
    failing = [t for t in gc.parameters + gc.inputs + gc.second_order if not t.passed]
    if joint_probes_failed(report):
        failing.append(gc.composition)  # type: ignore[arg-type]
    return sorted(failing, key=lambda t: severity(t.max_rel_error), reverse=True)


def joint_probes_failed(report: Report) -> bool:
    composition = report.gradient_check.composition
    return composition is not None and not composition.passed


def severity(error: float) -> float:
    """An error as a sort key: NaN ranks above every number, so a comparison that gave NaN is never hidden."""
    return math.inf if math.isnan(error) else error


def module_name(name: str) -> str:
    """A module's qualified name for people: '' is the model itself."""
    return name or "(root)"


def faulty_modules(report: Report) -> str:
    """'blocks.1.activation, head': the faulty modules, joined for a message."""
    return ", ".join(module_name(m) for m in report.localization.faulty_modules)


def blamed_modules(report: Report) -> list[ModuleCheck]:
    """The module checks behind ``localization.faulty_modules`` (the smallest modules whose own backward is wrong)."""
    faulty = set(report.localization.faulty_modules)
    return [m for m in report.localization.modules if m.blamed or (m.module in faulty and not m.passed)]


def comparison_label(t: TensorCheck, report: Report | None = None) -> str:
    """'parameter head.weight', or 'joint probes over every parameter' for the report's composition check."""
    if report is not None and t is report.gradient_check.composition:
        return "joint probes over every parameter"
    return f"{t.kind} {t.name}"


def tensor_line(t: TensorCheck, report: Report | None = None) -> str:
    """'parameter blocks.1.linear.weight: max abs error 5.3e-02, max rel error 1.3; worst [2, 4]: ...'."""
    probes = f", {t.probes} probes" if t.probes else ""
    ratio = f", {t.max_error_ratio:.3g}x its tolerance" if t.max_error_ratio is not None else ""
    line = (f"{comparison_label(t, report)}: max abs error {t.max_abs_error:.3g}, max rel error {t.max_rel_error:.3g}{ratio}"
            f" ({t.failed_coordinates} of {t.coordinates_checked} coordinates failed{probes}; checked "
            f"{'through its own module' if t.scope == 'local' else 'through the whole model'})")
    if t.worst is not None:
        where = f"[{', '.join(str(i) for i in t.worst.index)}]" if t.worst.index else "probe direction"
        line += (f"; worst {where}: backprop {t.worst.analytic:.6g} vs finite differences {t.worst.numeric:.6g} "
                 f"(allowed difference {t.worst.tolerance:.2g})")
    if t.unused:
        line += "; autograd gave no gradient (detached or unused) but the loss depends on it"
    return line


def source_module(m: ModuleCheck) -> str | None:
    """The repository module defining ``m``'s class ('mylib.layers'); None for torch's classes and for a class
    of the model file itself (loaded under a generated name)."""
    if not m.defined_in or m.defined_in.startswith("gradcheck_user_model_"):
        return None
    return m.defined_in


def module_line(m: ModuleCheck) -> str:
    """'module blocks.1.activation (Swish): own backward wrong, max abs error 8.9e-02, max rel error 0.38 ...'."""
    call = f", call {m.call}" if m.call else ""
    where = f", defined in {source_module(m)}" if source_module(m) else ""
    line = (f"module {module_name(m.module)} ({m.type}{where}{call}): its own backward is wrong, max abs error "
            f"{m.max_abs_error:.3g}, max rel error {m.max_rel_error:.3g}")
    return line + (f"; {m.detail}" if m.detail else "")


def gradient_failure(report: Report) -> str:
    """Multi-line message of a failed gradient check: faulty modules first, then each failing comparison."""
    comparisons = failing_tensors(report)
    tensors = [t for t in comparisons if t is not report.gradient_check.composition]
    failed = []
    if tensors:
        failed.append(f"{len(tensors)} of "
                      f"{len(report.gradient_check.parameters) + len(report.gradient_check.inputs)} tensors")
    if joint_probes_failed(report):
        failed.append("the joint probes through the whole model")
    head = f"gradient check failed for {' and '.join(failed)}"
    if report.localization.faulty_modules:
        head += f"; faulty module: {faulty_modules(report)}"
    lines = [head]
    lines += [f"  {module_line(m)}" for m in blamed_modules(report)]
    lines += [f"  {tensor_line(t, report)}" for t in comparisons]
    if report.localization.note:
        lines.append(f"  localization: {report.localization.note}")
    return "\n".join(lines)


def other_reasons(report: Report) -> list[str]:
    """``failed_because`` entries that are not the gradient check itself (diagnosis findings in fail_on)."""
    gradient_check = ("gradient check failed", "second-order", "joint probes through the whole model failed")
    return [r for r in report.failed_because if not r.startswith(gradient_check)]


def failure_message(report: Report) -> str:
    """Everything that made ``report`` fail, as one message (empty when it passed)."""
    parts = []
    if failing_tensors(report):
        parts.append(gradient_failure(report))
    for reason in other_reasons(report):
        parts.append(reason)
        for finding in _findings(report):
            if reason.startswith(f"diagnosis: {finding[0]}"):
                parts.append(f"  {finding[1]}")
    return "\n".join(parts)


def _findings(report: Report) -> list[tuple[str, str]]:
    found = list(report.diagnosis.findings) if report.diagnosis else []
    found += list(report.memory.findings) if report.memory else []
    return [(f.kind, f"[{f.kind}] {f.where or '(model)'}: {f.explanation} {f.suggestion}") for f in found]


def findings_lines(report: Report) -> list[str]:
    return [text for _, text in _findings(report)]
