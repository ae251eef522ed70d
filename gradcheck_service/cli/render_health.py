"""Plain-text rendering of the gradient-flow and memory sections for the CLI (one string each)."""

from __future__ import annotations

import math

from ..report import Diagnosis, Finding, GradientNorms, MemoryProfile
from ..report.units import human_bytes

BAR_WIDTH = 32


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _bar(value: float | None, low: float, high: float) -> str:
    """A log-scale bar: one cell at 10**low, BAR_WIDTH cells at 10**high."""
    if value is None:
        return "(no gradient)"
    if value <= 0:
        return "(zero)"
    span = max(high - low, 1e-12)
    cells = 1 + round((math.log10(value) - low) / span * (BAR_WIDTH - 1))
    return "#" * max(1, min(BAR_WIDTH, cells))


def _findings(findings: list[Finding]) -> list[str]:
    lines = []
    for f in findings:
        where = f" at '{f.where}'" if f.where else ""
        lines.append(f"  [{f.kind}]{where}: {f.explanation} (measured {f.measured:.3g}, threshold {f.threshold:.3g})")
        lines.append(f"      -> {f.suggestion}")
    return lines


def render_gradient_flow(norms: GradientNorms, diagnosis: Diagnosis) -> str:
    """One line per layer (forward order): |d loss / d output| with a log-scale bar, then the diagnosis."""
    values = [layer.grad_norm for layer in norms.layers if layer.grad_norm]
    low = math.floor(math.log10(min(values))) if values else 0
    high = math.ceil(math.log10(max(values))) if values else 1
    high = high if high > low else low + 1
    last = next((layer.grad_norm for layer in reversed(norms.layers) if layer.grad_norm), None)
    name_width = max([len(layer.name or "(root)") + (4 if layer.call else 0) for layer in norms.layers] + [5])
    type_width = max([len(layer.type) for layer in norms.layers] + [4])
    lines = [f"Gradient flow: |d loss / d layer output| in forward order, log scale 1e{low} .. 1e{high} "
             f"({norms.dtype}, {norms.device}, {'train' if norms.training else 'eval'} mode)"]
    lines.append(f"  {'layer':<{name_width}}  {'type':<{type_width}}  {'|grad|':>9}  {'x last':>9}  bar")
    for layer in norms.layers:
        label = (layer.name or "(root)") + (f" #{layer.call}" if layer.call else "")
        norm = "-" if layer.grad_norm is None else f"{layer.grad_norm:.2e}"
        relative = f"{layer.grad_norm / last:.2e}" if layer.grad_norm is not None and last else "-"
        flag = "  NaN/Inf" if layer.nonfinite_grad or layer.nonfinite_output else ""
        lines.append(f"  {label:<{name_width}}  {layer.type:<{type_width}}  {norm:>9}  {relative:>9}  "
                     f"{_bar(layer.grad_norm, low, high)}{flag}")
    ratio = "n/a" if diagnosis.signal_ratio is None else f"{diagnosis.signal_ratio:.2e}"
    lines.append(f"  total parameter-gradient norm {norms.total_norm:.3g}; first/last layer ratio {ratio}")
    for g in norms.inputs:  # a model without trainable parameters: its inputs' gradients are the training signal
        detail = f"|grad| {g.l2_norm:.2e}, max {g.max_abs:.2e}" if g.has_gradient else "no gradient"
        nonfinite = f", {g.nan_count} NaN, {g.inf_count} Inf" if g.nan_count or g.inf_count else ""
        lines.append(f"  {g.name} {'x'.join(map(str, g.shape)) or 'scalar'}: {detail}{nonfinite}")
    flags = ", ".join(f"{name}={'YES' if getattr(diagnosis, name) else 'no'}"
                      for name in ("vanishing", "exploding", "nonfinite", "dead_relu"))
    lines.append(f"Diagnosis: {flags}")
    lines.extend(_findings(diagnosis.findings))
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    fmt = "  " + "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header), *(fmt.format(*row) for row in rows)]


def render_memory(profile: MemoryProfile) -> str:
    """The memory breakdown, activations per module, and the checkpointing/batch-scaling/precision extras."""
    batch = f", batch {profile.batch_size}" if profile.batch_size is not None else ""
    opt = profile.optimizer_state
    lines = [f"Memory of one training step ({profile.device}, {profile.dtype}{batch})"]
    lines += _table(["item", "bytes", "note"], [
        ["parameters", human_bytes(profile.parameter_bytes),
         f"trainable {human_bytes(profile.trainable_parameter_bytes)}"],
        ["gradients", human_bytes(profile.gradient_bytes), ""],
        ["optimizer state", human_bytes(opt.adam_bytes), f"Adam; SGD momentum {human_bytes(opt.sgd_momentum_bytes)}"],
        ["activations", human_bytes(profile.activation_bytes),
         f"saved for backward; inputs {human_bytes(profile.activation_input_bytes)}"],
        ["loss saved", human_bytes(profile.loss_saved_bytes), "saved for backward by the loss function"],
        ["buffers", human_bytes(profile.buffer_bytes), ""],
        ["peak fwd+bwd", human_bytes(profile.peak_bytes),
         f"+{human_bytes(profile.peak_increase_bytes)} above resident"],
    ])
    lines.append(f"  peak measured by {profile.peak_method}")
    lines.append(f"  time: forward {_ms(profile.forward_s)}, backward {_ms(profile.backward_s)}")
    if profile.activations_by_module:
        lines.append("Activations by module (largest first)")
        total = profile.activation_bytes or 1
        lines += _table(["module", "type", "bytes", "share", "tensors"], [
            [m.module or "(root)", m.type, human_bytes(m.bytes), f"{m.bytes / total:.0%}", str(m.tensors)]
            for m in profile.activations_by_module
        ])
    plan = profile.checkpointing
    if plan is not None:
        lines.append(f"Gradient checkpointing (baseline: activations {human_bytes(plan.baseline_activation_bytes)}, "
                     f"peak {human_bytes(plan.baseline_peak_bytes)}, step {_ms(plan.baseline_step_s)}), ranked")
        lines += _table(["block", "type", "activations saved", "peak saved", "extra time", "gradients"], [
            [c.block, c.type, f"{human_bytes(c.activation_saved_bytes)} ({c.activation_saved_fraction:.0%})",
             human_bytes(c.peak_saved_bytes), f"{c.extra_time_fraction:+.0%}",
             "identical" if c.gradients_identical else f"max diff {c.max_abs_difference:.2g}"]
            for c in plan.blocks
        ])
        lines.append(f"  {plan.recommendation}")
    scaling = profile.batch_scaling
    if scaling is not None:
        if not scaling.possible:
            lines.append(f"Batch scaling: not measured ({scaling.reason})")
        else:
            lines.append(f"Batch scaling (measured at batch {scaling.batch_sizes[0]} and {scaling.batch_sizes[1]})")
            lines.append(f"  activations = {human_bytes(scaling.activation_fixed_bytes or 0)} + "
                         f"{human_bytes(scaling.activation_per_sample_bytes or 0)} per sample")
            lines.append(f"  peak        = {human_bytes(scaling.peak_fixed_bytes or 0)} + "
                         f"{human_bytes(scaling.peak_per_sample_bytes or 0)} per sample")
            if scaling.budget_bytes is not None:
                lines.append(f"  largest batch in {human_bytes(scaling.budget_bytes)}: {scaling.largest_batch} "
                             f"(with Adam state: {scaling.largest_batch_with_adam})")
    precision = profile.precision
    if precision is not None:
        lines.append(f"Mixed precision ({precision.autocast_dtype} autocast vs float64): {precision.verdict}; "
                     f"max relative error {precision.max_rel_error:.2e} (tolerance {precision.tolerance:.2e}); "
                     f"{precision.underflow_count} entries underflowed to zero")
        if precision.note:
            lines.append(f"  {precision.note}")
    if profile.findings:
        lines.append("Findings")
        lines.extend(_findings(profile.findings))
    return "\n".join(lines)
