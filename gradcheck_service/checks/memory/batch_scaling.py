"""How activation and peak memory grow with batch size, and the largest batch that fits a memory budget.

Two measured points, batch B (as given) and 2B (every input repeated along dim 0), fit ``bytes = fixed +
per_sample * batch``. For standard layers activation memory is exactly linear in the batch, so two points determine
the line; ``fixed`` holds what does not scale (parameters, gradients, per-batch constants).
"""

from __future__ import annotations

import torch
from torch import nn

from ...report.memory import BatchScaling as BatchScaling
from ...types import LossFn
from ..model_state import clear_grads, seeded
from .allocations import StepMeasurement, measure_step


def batch_size_of(inputs: tuple[torch.Tensor, ...]) -> tuple[int | None, str | None]:
    """(batch size, None) when every tensor input has a dim 0 of the same size; else (None, why not)."""
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    if not tensors:
        return None, "the model takes no tensor inputs"
    if any(t.dim() == 0 for t in tensors):
        return None, "an input is a scalar (0-d) tensor: there is no batch dimension to grow"
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) > 1:
        return None, f"inputs disagree on dim 0 ({sorted(sizes)}): dim 0 is not a shared batch dimension"
    return sizes.pop(), None


def _fit(b1: int, y1: int, b2: int, y2: int) -> tuple[float, float]:
    per_sample = (y2 - y1) / (b2 - b1)
    return y1 - per_sample * b1, per_sample


def _largest(budget: float, fixed: float, per_sample: float) -> int | None:
    if per_sample <= 0:
        return None
    return max(int((budget - fixed) // per_sample), 0)


def measure_batch_scaling(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    device: torch.device,
    seed: int,
    base: StepMeasurement,
    budget_bytes: int | None,
    adam_bytes: int,
) -> BatchScaling:
    """Measure at twice the batch and fit; ``base`` is the measurement at the given batch."""
    batch, reason = batch_size_of(inputs)
    if batch is None:
        return BatchScaling(possible=False, reason=reason, budget_bytes=budget_bytes)
    doubled = tuple(t.repeat(2, *([1] * (t.dim() - 1))) if isinstance(t, torch.Tensor) else t for t in inputs)
    clear_grads(model)
    try:
        with seeded(seed, device):
            big = measure_step(model, doubled, loss_fn, device)
    except Exception as error:  # the model may not accept another batch size; that is an answer, not a crash
        return BatchScaling(possible=False, budget_bytes=budget_bytes,
                            reason=f"the model failed at batch {2 * batch} (inputs repeated along dim 0): {error}")
    finally:
        clear_grads(model)
    sizes = [batch, 2 * batch]
    activations = [base.activation_bytes, big.activation_bytes]
    peaks = [base.resident_bytes + base.peak_increase_bytes, big.resident_bytes + big.peak_increase_bytes]
    a_fixed, a_per = _fit(sizes[0], activations[0], sizes[1], activations[1])
    p_fixed, p_per = _fit(sizes[0], peaks[0], sizes[1], peaks[1])
    return BatchScaling(
        possible=True, batch_sizes=sizes, activation_bytes=activations, peak_bytes=peaks,
        activation_fixed_bytes=a_fixed, activation_per_sample_bytes=a_per, peak_fixed_bytes=p_fixed,
        peak_per_sample_bytes=p_per, budget_bytes=budget_bytes,
        largest_batch=_largest(budget_bytes, p_fixed, p_per) if budget_bytes else None,
        largest_batch_with_adam=_largest(budget_bytes - adam_bytes, p_fixed, p_per) if budget_bytes else None,
    )
