"""Directional finite differences along many directions at once, with kink refinement.

A direction is a tensor shaped like the target. Coordinates are scaled one-hot directions, probes are dense
Rademacher directions; both are measured the same way so one error model covers every comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .evaluator import LossEvaluator, Target
from .finite_difference import REFINE_FACTOR, Differences, base_step, central, combine
from .in_place import Directions, random_signs, robust_scale, scale_floor

_MULTIPLIERS = torch.tensor([1.0, -1.0, 2.0, -2.0])
_SCREEN = torch.tensor([1.0, -1.0])
# Bytes of perturbation tensors materialised at once (4 deltas per direction).
DELTA_BUDGET_BYTES = 128 * 2**20


@dataclass
class Measured:
    numeric: torch.Tensor  # directional derivative along each direction (Richardson)
    error: torch.Tensor  # estimated absolute error of numeric
    kink: torch.Tensor  # bool per direction


def measure(
    evaluator: LossEvaluator, target: Target, directions: torch.Tensor | Directions, dtype: torch.dtype,
    step_factor: float = 1.0,
) -> Measured:
    """Finite-difference derivative of the loss along each row of ``directions`` (shape [m, *target.shape]).

    :class:`Directions` (a target perturbed in place, see :mod:`.in_place`) are measured one at a time.
    """
    dtype = evaluator.arithmetic_dtype(target, dtype)
    step = base_step(dtype) * step_factor
    diffs, suspicious = _measure_at(evaluator, target, directions, step, dtype)
    if dtype == torch.float64 and not evaluator.floor_noise and 2 * int(suspicious.sum()) > suspicious.numel():
        # Most directions look like kinks: either the function is kinked everywhere, or a kernel rounds to float32
        # below a float64-sized step (its output moves in float32 quanta, too coarse for the noise measurement to
        # see). Steps sized for float32 tell them apart: a smooth function computed in float32 is smooth there.
        coarse_step = base_step(torch.float32) * step_factor
        coarse, coarse_suspicious = _measure_at(evaluator, target, directions, coarse_step, torch.float32)
        if 2 * int(coarse_suspicious.sum()) < int(suspicious.sum()):
            evaluator.reduced_precision[target.name] = torch.float32
            dtype, step, diffs, suspicious = torch.float32, coarse_step, coarse, coarse_suspicious
    if bool(suspicious.any()):
        idx = suspicious.nonzero().flatten()
        refined, still = _measure_at(evaluator, target, directions[idx], step / REFINE_FACTOR, dtype)
        diffs.numeric[idx] = refined.numeric
        diffs.error[idx] = refined.error
        diffs.kink[idx] = still
    return Measured(numeric=diffs.numeric, error=diffs.error, kink=diffs.kink)


def _stencil(evaluator: LossEvaluator) -> torch.Tensor:
    """Step multipliers: +-h and +-2h, or +-h alone in the screening pass (see check_tensor)."""
    return _SCREEN if evaluator.floor_noise else _MULTIPLIERS


def _differences(
    values: torch.Tensor, evaluator: LossEvaluator, target: Target, step: float, dtype: torch.dtype
) -> tuple[Differences, torch.Tensor]:
    """Loss values ``[len(stencil), m]`` to derivative estimates, their errors and suspected kinks."""
    if values.shape[0] == 2:
        return central(values[0], values[1], step, evaluator.loss_scale, dtype)
    return combine(values[0], values[1], values[2], values[3], evaluator.base_loss, step, evaluator.loss_scale,
                   evaluator.noise(target), dtype)


def _measure_at(
    evaluator: LossEvaluator, target: Target, directions: torch.Tensor | Directions, step: float, dtype: torch.dtype
) -> tuple[Differences, torch.Tensor]:
    if isinstance(directions, Directions):
        return _measure_one_at_a_time(evaluator, target, directions, step, dtype)
    m = directions.shape[0]
    stencil = _stencil(evaluator)
    s = stencil.numel()
    per_direction = max(1, directions[0].numel() * directions.element_size() * s)
    if per_direction > DELTA_BUDGET_BYTES:
        return _measure_one_at_a_time(evaluator, target, directions, step, dtype)
    group = max(1, DELTA_BUDGET_BYTES // per_direction)
    coefficients = (stencil * step).tolist()
    parts = [evaluator.losses_along(target, directions[start : start + group], coefficients).to(torch.float64)
             for start in range(0, m, group)]
    return _differences(torch.cat(parts, dim=1), evaluator, target, step, dtype)


def _measure_one_at_a_time(
    evaluator: LossEvaluator, target: Target, directions: torch.Tensor | Directions, step: float, dtype: torch.dtype
) -> tuple[Differences, torch.Tensor]:
    """:func:`_measure_at` for a target so large that one delta at a time is what memory allows."""
    stencil = _stencil(evaluator).tolist()
    values = torch.empty((len(stencil), directions.shape[0]), dtype=torch.float64)
    for k, d in enumerate(directions):
        for j, multiplier in enumerate(stencil):
            values[j, k] = evaluator.loss_along(target, d, multiplier * step)
    return _differences(values, evaluator, target, step, dtype)


def coordinate_directions(base: torch.Tensor, flat_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled one-hot directions for the given flat indices, and the scale of each."""
    scale = robust_scale(base)[flat_indices]
    dirs = torch.zeros((flat_indices.numel(), base.numel()), dtype=base.dtype, device=base.device)
    dirs[torch.arange(flat_indices.numel()), flat_indices] = scale.to(base.dtype)
    return dirs.reshape((flat_indices.numel(), *base.shape)), scale.to(torch.float64)


def probe_directions(base: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Dense Rademacher directions scaled per coordinate.

    With +-1 signs a single wrong coordinate j shifts the probe by exactly |error_j| x scale_j, so one probe
    cannot miss an isolated error above its tolerance; several independent probes make cancellation between
    several wrong coordinates unlikely (probability 2^-probes for a pair of equal errors).
    """
    dirs = random_signs(count * base.numel(), generator).to(base.dtype).reshape(count, base.numel())
    return dirs.mul_(robust_scale(base).to(base.dtype)).reshape((count, *base.shape))


def measure_coordinates(
    evaluator: LossEvaluator, target: Target, flat_indices: torch.Tensor, dtype: torch.dtype,
    step_factor: float = 1.0,
) -> Measured:
    """Partial derivative of the loss w.r.t. each listed coordinate (in the target's own units)."""
    if evaluator.can_perturb_in_place(target):
        return _measure_in_place(evaluator, target, flat_indices, dtype, step_factor)
    numel = max(1, target.base.numel())
    group = max(1, DELTA_BUDGET_BYTES // (numel * target.base.element_size() * 4))
    parts: list[Measured] = []
    for start in range(0, flat_indices.numel(), group):
        idx = flat_indices[start : start + group]
        dirs, scale = coordinate_directions(target.base, idx)
        got = measure(evaluator, target, dirs, dtype, step_factor)
        parts.append(Measured(numeric=got.numeric / scale, error=got.error / scale, kink=got.kink))
    if not parts:
        empty = torch.empty(0, dtype=torch.float64)
        return Measured(empty, empty, torch.empty(0, dtype=torch.bool))
    return Measured(
        numeric=torch.cat([p.numeric for p in parts]),
        error=torch.cat([p.error for p in parts]),
        kink=torch.cat([p.kink for p in parts]),
    )


def _measure_in_place(
    evaluator: LossEvaluator, target: Target, flat_indices: torch.Tensor, dtype: torch.dtype, step_factor: float,
) -> Measured:
    """:func:`measure_coordinates` for a large tensor: each coordinate perturbed in place (no dense deltas)."""
    scale = robust_scale(target.base.reshape(-1)[flat_indices], floor=scale_floor([target.base]))
    dtype = evaluator.arithmetic_dtype(target, dtype)
    step = base_step(dtype) * step_factor

    def at(idx: torch.Tensor, h: float) -> tuple[Differences, torch.Tensor]:
        stencil = _stencil(evaluator).to(torch.float64)
        offsets = (scale[idx].unsqueeze(0) * (stencil * h).unsqueeze(1)).reshape(-1)
        values = evaluator.coordinate_losses(target, flat_indices[idx].repeat(stencil.numel()), offsets)
        return _differences(values.view(stencil.numel(), idx.numel()), evaluator, target, h, dtype)

    everything = torch.arange(flat_indices.numel())
    diffs, suspicious = at(everything, step)
    if bool(suspicious.any()):
        idx = suspicious.nonzero().flatten()
        refined, still = at(idx, step / REFINE_FACTOR)
        diffs.numeric[idx], diffs.error[idx], diffs.kink[idx] = refined.numeric, refined.error, still
    return Measured(numeric=diffs.numeric / scale, error=diffs.error / scale, kink=diffs.kink)
