"""Mixed precision: autocast gradients against a float64 reference, per parameter, with underflow counts.

Three runs with the same seed: a float64 copy of the model (the reference), the model in its own dtype, and the
model under ``torch.autocast(dtype=bf16|fp16)``. Rounding in a format with unit roundoff ``u`` perturbs gradients
by a small multiple of ``u`` (measured: 2-3 u for a 9-layer tanh MLP), so a relative error within
``precision_error_factor * u`` is precision loss; beyond it, the autocast path itself is suspect (overflow, a
layer that misbehaves in low precision, a custom op's half-precision kernel). If even the model's own dtype
disagrees with float64 the problem is not mixed precision at all. Entries that are zero under autocast but not in
the reference are gradients that underflowed (fp16 needs loss scaling for them).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from ...options import HealthThresholds
from ...report.memory import (
    PrecisionComparison as PrecisionComparison,
)
from ...report.memory import (
    PrecisionParameter as PrecisionParameter,
)
from ...types import LossFn
from ..health.findings import Finding
from ..health.flow import compute_loss
from ..model_state import clear_grads, seeded

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _gradients(model: nn.Module, inputs: tuple[torch.Tensor, ...], loss_fn: LossFn, device: torch.device,
               seed: int, autocast: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    clear_grads(model)
    with seeded(seed, device):
        if autocast is None:
            loss = compute_loss(model, inputs, loss_fn)
        else:
            with torch.autocast(device_type=device.type, dtype=autocast):
                loss = compute_loss(model, inputs, loss_fn)
        loss.backward()
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double()
             for name, p in model.named_parameters() if p.requires_grad}
    clear_grads(model)
    return grads


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 difference over the entries where both are finite (non-finite ones are counted separately)."""
    both = torch.isfinite(a) & torch.isfinite(ref)
    a, ref = a[both], ref[both]
    scale = float(torch.linalg.vector_norm(ref))
    difference = float(torch.linalg.vector_norm(a - ref))
    return difference / scale if scale > 0 else difference


def compare_precision(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    precision: Literal["bf16", "fp16"],
    device: torch.device,
    seed: int,
    thresholds: HealthThresholds,
    findings: list[Finding],
) -> PrecisionComparison:
    """Compare autocast, own-dtype and float64 gradients (inside the caller's state restoration)."""
    dtype = _DTYPES[precision]
    u = torch.finfo(dtype).eps / 2
    tolerance = thresholds.precision_error_factor * u
    model_dtype = str(next((p.dtype for p in model.parameters()), torch.float32)).removeprefix("torch.")
    try:
        reference = copy.deepcopy(model).double()
    except Exception as error:  # some modules cannot be copied; report instead of failing the whole profile
        return PrecisionComparison(
            autocast_dtype=precision, model_dtype=model_dtype, unit_roundoff=u, tolerance=tolerance,
            max_rel_error=0.0, underflow_count=0, underflow_fraction=0.0, verdict="not measured",
            note=f"the model could not be copied to build the float64 reference: {error}",
        )
    ref_inputs = tuple(t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)
    ref = _gradients(reference, ref_inputs, loss_fn, device, seed)
    own = _gradients(model, inputs, loss_fn, device, seed)
    amp = _gradients(model, inputs, loss_fn, device, seed, autocast=dtype)
    rows = []
    for name, g_ref in ref.items():
        g_amp = amp[name]
        underflow = int(((g_amp == 0) & (g_ref != 0)).sum())
        overflow = int((~torch.isfinite(g_amp) & torch.isfinite(g_ref)).sum())
        rel = _rel(g_amp, g_ref)
        rows.append(PrecisionParameter(name=name, numel=g_ref.numel(), rel_error=rel,
                                       own_dtype_rel_error=_rel(own[name], g_ref), underflow_count=underflow,
                                       nonfinite_count=overflow, within_tolerance=rel <= tolerance and not overflow))
    total = sum(r.numel for r in rows) or 1
    underflow_count = sum(r.underflow_count for r in rows)
    worst = max(rows, key=lambda r: r.rel_error, default=None)
    own_bad = [r for r in rows if r.own_dtype_rel_error > tolerance]
    verdict: Literal["precision loss only", "autocast-specific error", "differs without autocast", "not measured"]
    if own_bad:
        verdict = "differs without autocast"
    elif any(not r.within_tolerance for r in rows):
        verdict = "autocast-specific error"
        worst = max(rows, key=lambda r: (r.nonfinite_count, r.rel_error))
    else:
        verdict = "precision loss only"
    if worst is not None and verdict != "precision loss only":
        findings.append(Finding(
            kind="precision", where=worst.name, measured=worst.rel_error, threshold=tolerance,
            explanation=(f"Under {precision} autocast the gradient of '{worst.name}' differs from float64 by "
                         f"{worst.rel_error:.3g} (relative; {worst.nonfinite_count} entries NaN/Inf), more than {thresholds.precision_error_factor:g} x the unit "
                         f"roundoff {u:.3g}. " + ("The model's own dtype already differs from float64, so this is "
                                                  "not a mixed-precision effect." if own_bad else
                                                  "Without autocast it matches, so the low-precision path is at "
                                                  "fault.")),
            suggestion=("Run the gradient check on this model (a wrong or non-deterministic backward)." if own_bad
                        else "Keep the offending layers in float32 (autocast(enabled=False) around them), or look "
                        "for overflow (fp16 max 65504) in their activations."),
        ))
    fraction = underflow_count / total
    if fraction > thresholds.underflow_fraction:
        findings.append(Finding(
            kind="underflow", where=max(rows, key=lambda r: r.underflow_count).name, measured=fraction,
            threshold=thresholds.underflow_fraction,
            explanation=f"{underflow_count} gradient entries ({fraction:.1%}) are exactly 0 under {precision} autocast "
                        "but not in float64: they underflowed.",
            suggestion="Scale the loss with torch.amp.GradScaler (fp16), or train in bf16, whose range is float32's.",
        ))
    return PrecisionComparison(
        autocast_dtype=precision, model_dtype=model_dtype, unit_roundoff=u, tolerance=tolerance,
        max_rel_error=max((r.rel_error for r in rows), default=0.0), underflow_count=underflow_count,
        underflow_fraction=fraction, verdict=verdict, parameters=rows,
    )
