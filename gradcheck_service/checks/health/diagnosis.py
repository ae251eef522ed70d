"""Vanishing/exploding/non-finite/dead-ReLU diagnosis from measured gradient statistics.

The depth test compares the backward signal (the norm of d loss / d layer output) at the first layer with the one at
the last layer, in forward order. Under a well-scaled initialization this ratio stays within a few orders of
magnitude of 1 whatever the depth; a product of per-layer factors below or above 1 drives it to 0 or infinity
exponentially with depth. Weight-gradient norms alone can miss this: in a deep linear stack with large init the
forward activations grow as fast as the backward signal, so dL/dW = signal x activation stays level across layers.
"""

from __future__ import annotations

import math

from ...options import HealthThresholds
from ...report.health import Diagnosis as Diagnosis
from ...report.health import GradientNorms, LayerSignal
from .findings import Finding, one_significant_figure

_SATURATING = {"Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Softsign", "LogSigmoid"}


def _layer_label(layer: LayerSignal) -> str:
    return layer.name if layer.call == 0 else f"{layer.name} (call {layer.call})"


def _depth_ratio(norms: GradientNorms) -> tuple[float, float, LayerSignal, LayerSignal, int] | None:
    """(ratio, per-layer factor, first layer, last layer, layer count) over layers with a finite signal."""
    reached = [layer for layer in norms.layers
               if layer.grad_norm is not None and layer.output_numel > 0 and not layer.nonfinite_grad]
    if len(reached) < 2:
        return None
    first, last = reached[0], reached[-1]
    assert first.grad_norm is not None and last.grad_norm is not None
    if last.grad_norm == 0:
        return None
    ratio = first.grad_norm / last.grad_norm
    factor = ratio ** (1.0 / (len(reached) - 1)) if ratio > 0 else 0.0
    return ratio, factor, first, last, len(reached)


def _vanishing(norms: GradientNorms, ratio: float, factor: float, first: LayerSignal, last: LayerSignal,
               count: int, threshold: float) -> Finding:
    saturating = sorted({layer.type for layer in norms.layers} & _SATURATING)
    advice = ["add residual (skip) connections so the signal has a path that bypasses the layers",
              "add normalization (LayerNorm/BatchNorm) inside the blocks"]
    if saturating:
        advice.insert(0, f"replace the saturating {'/'.join(saturating)} activations by ReLU or GELU")
    advice.append("re-initialize with a variance-preserving scheme (Xavier for tanh, Kaiming for ReLU)")
    return Finding(
        kind="vanishing", where=_layer_label(first), measured=ratio, threshold=threshold,
        explanation=(f"The gradient reaching the output of '{_layer_label(first)}' is {ratio:.2e} times the one at "
                     f"'{_layer_label(last)}': across {count} layers it shrinks by about {factor:.3g}x per layer, "
                     "so the early layers barely learn."),
        suggestion="; ".join(advice) + ".",
    )


def _exploding(ratio: float | None, factor: float | None, first: LayerSignal | None, total_norm: float,
               thresholds: HealthThresholds) -> Finding:
    amplification = max(ratio or 1.0, 1.0)
    # Clipping norm: the total gradient norm with the measured depth amplification taken out, and never above the
    # exploding_norm threshold, rounded down to one significant figure (a value a person would type).
    clip = one_significant_figure(min(total_norm / amplification, thresholds.exploding_norm))
    by_ratio = ratio is not None and ratio > thresholds.exploding_ratio
    if by_ratio and first is not None and factor is not None:
        explanation = (f"The gradient reaching the output of '{_layer_label(first)}' is {ratio:.2e} times the one "
                       f"at the last layer: it grows by about {factor:.3g}x per layer going backward. The total "
                       f"parameter-gradient norm is {total_norm:.3g}.")
        reinit = (f"re-initialize so each layer's gain is near 1 (divide the init scale by about {factor:.3g}), or "
                  "add normalization")
        measured, threshold, where = ratio, thresholds.exploding_ratio, _layer_label(first)
    else:
        explanation = (f"The total parameter-gradient L2 norm is {total_norm:.3g}, above {thresholds.exploding_norm:g}"
                       ": one SGD step would move the weights by that much times the learning rate.")
        reinit = "check the loss scale (a sum where a mean was meant) and the initialization"
        measured, threshold, where = total_norm, thresholds.exploding_norm, ""
    return Finding(
        kind="exploding", where=where, measured=measured, threshold=threshold, explanation=explanation,
        suggestion=(f"clip gradients: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={clip:g}) (the "
                    f"measured total norm {total_norm:.3g} divided by the depth amplification {amplification:.3g}); "
                    f"{reinit}."),
    )


def _nonfinite(norms: GradientNorms) -> list[Finding]:
    findings: list[Finding] = []
    if norms.loss is None:
        findings.append(Finding(
            kind="nonfinite", where="", measured=1.0, threshold=0.0,
            explanation="The loss itself is NaN or Inf (measured: 1 non-finite loss).",
            suggestion="Check the inputs and the loss (log of 0, division by 0, overflow); see the first layer "
                       "whose output is non-finite, if any.",
        ))
    bad_output = next((layer for layer in norms.layers if layer.nonfinite_output), None)
    if bad_output is not None:
        findings.append(Finding(
            kind="nonfinite", where=_layer_label(bad_output), measured=1.0, threshold=0.0,
            explanation=f"'{_layer_label(bad_output)}' is the first layer (forward order) whose output has NaN/Inf.",
            suggestion="Inspect this layer's weights and inputs for NaN/Inf and for overflowing values; lower the "
                       "learning rate if the weights diverged.",
        ))
    else:
        bad_signal = next((layer for layer in reversed(norms.layers) if layer.nonfinite_grad), None)
        if bad_signal is not None:
            findings.append(Finding(
                kind="nonfinite", where=_layer_label(bad_signal), measured=1.0, threshold=0.0,
                explanation=(f"The forward pass is finite but the gradient at the output of "
                             f"'{_layer_label(bad_signal)}' is the first (going backward from the loss) with NaN/Inf."),
                suggestion="Look right after this layer for an operation with an unbounded derivative (sqrt or "
                           "pow at 0, log near 0, division by a small value) and add an epsilon or clamp.",
            ))
    bad_params = [p for p in norms.parameters if p.nan_count + p.inf_count > 0]
    if bad_params:
        count = sum(p.nan_count + p.inf_count for p in bad_params)
        findings.append(Finding(
            kind="nonfinite", where=bad_params[0].name, measured=float(count), threshold=0.0,
            explanation=f"{count} gradient entries are NaN/Inf, in {len(bad_params)} parameter(s) "
                        f"({', '.join(p.name for p in bad_params[:5])}{', ...' if len(bad_params) > 5 else ''}).",
            suggestion="An optimizer step now would write NaN into the weights: fix the source named above, or "
                       "skip steps with non-finite gradients (torch.amp.GradScaler does this).",
        ))
    return findings


def _dead_relus(norms: GradientNorms, threshold: float) -> list[Finding]:
    return [Finding(
        kind="dead_relu", where=relu.name if relu.call == 0 else f"{relu.name} (call {relu.call})",
        measured=relu.dead_fraction, threshold=threshold,
        explanation=f"{relu.dead_units} of {relu.units} units of this ReLU are never active in the batch: they pass "
                    "no gradient, so the weights feeding them cannot recover.",
        suggestion="check the preceding layer's bias and initialization (a large negative bias switches units off), "
                   "normalize before the ReLU, lower the learning rate, or use LeakyReLU/GELU.",
    ) for relu in norms.relus if relu.dead_units > 0 and relu.dead_fraction >= threshold]


def diagnose(norms: GradientNorms, thresholds: HealthThresholds) -> Diagnosis:
    """Turn measured statistics into booleans and findings using ``thresholds``."""
    findings = _nonfinite(norms)
    depth = _depth_ratio(norms)
    ratio = factor = None
    first = last = None
    vanishing = exploding = False
    if depth is not None:
        ratio, factor, first, last, count = depth
        if ratio < thresholds.vanishing_ratio:
            vanishing = True
            findings.append(_vanishing(norms, ratio, factor, first, last, count, thresholds.vanishing_ratio))
    if (ratio is not None and ratio > thresholds.exploding_ratio) or norms.total_norm > thresholds.exploding_norm:
        exploding = True
        findings.append(_exploding(ratio, factor, first, norms.total_norm, thresholds))
    dead = _dead_relus(norms, thresholds.dead_relu_fraction)
    findings.extend(dead)
    return Diagnosis(
        vanishing=vanishing, exploding=exploding, nonfinite=any(f.kind == "nonfinite" for f in findings),
        dead_relu=bool(dead), signal_ratio=ratio,
        per_layer_factor=factor if factor is None or math.isfinite(factor) else None,
        first_layer=_layer_label(first) if first else None, last_layer=_layer_label(last) if last else None,
        findings=findings,
    )
