"""Central finite differences with an error estimate, and the calibrated comparison built on them.

Every comparison in a check is a *direction* ``d`` in some tensor's space: a scaled one-hot vector for a single
coordinate, or a dense random vector for a probe. Along ``d`` we evaluate the loss at ``+-h`` and ``+-2h`` and form

    D1 = (f(+h) - f(-h)) / 2h          error ~ h^2 f'''/6 + roundoff ~ eps*|f|/h
    D2 = (f(+2h) - f(-2h)) / 4h        truncation error 4x that of D1
    R  = (4 D1 - D2) / 3               Richardson extrapolation, truncation O(h^4)

``|D1 - D2|`` measures the truncation error actually present (plus part of the roundoff noise), so the tolerance
of each comparison is derived from the numbers themselves rather than fixed in advance: a difference fails only
when it is ``safety_factor`` times beyond that estimate plus a roundoff bound. This is why a 0.1 % error in float64
fails (the estimate there is ~1e-9 relative) while a correct model whose values are ~1e10 passes (the step and the
roundoff bound scale with the values; an absolute step of 1e-6 would fall below float64 resolution at 1e10).

When ``D1`` and ``D2`` disagree by far more than smooth truncation allows, the perturbation crossed a kink (ReLU,
max, abs). Those directions are re-measured with a 16x smaller step; if they still disagree they are counted as
kinks and left out of the verdict instead of being reported as bugs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Step multiplier in units of the value's scale. eps^(1/3) balances truncation (h^2) against roundoff (eps/h)
# for central differences: ~6e-6 in float64, ~5e-3 in float32.
STEP_EXPONENT = 1.0 / 3.0
# Rounding error allowed in one loss difference: this many standard deviations of the noise measured for the
# target (LossEvaluator.noise), and never less than a few machine epsilons of the loss's absolute magnitude.
NOISE_SIGMAS = 4.0
ROUNDOFF_FLOOR_ULPS = 2.0
# Refinement factor for directions whose two step sizes disagree (suspected kinks).
REFINE_FACTOR = 16.0


def machine_eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def base_step(dtype: torch.dtype) -> float:
    return machine_eps(dtype) ** STEP_EXPONENT


def relative_floor(dtype: torch.dtype) -> float:
    """Relative difference below which analytic and numeric values are equal for any practical purpose.

    The backward pass has its own rounding error; in float64 1e-7 (the classic 'good' level) is far above it and
    far below any real bug (a 0.1 % error is 1e-3); float32 gets 1e-3, half precision 1e-2.
    """
    if dtype == torch.float64:
        return 1e-7
    return 1e-3 if dtype == torch.float32 else 1e-2


@dataclass
class Differences:
    """Finite-difference results for a batch of directions (all tensors have one entry per direction)."""

    numeric: torch.Tensor  # Richardson estimate of the directional derivative
    error: torch.Tensor  # estimated absolute error of ``numeric``
    kink: torch.Tensor  # bool: step sizes disagree even after refinement


def combine(
    f_plus1: torch.Tensor,
    f_minus1: torch.Tensor,
    f_plus2: torch.Tensor,
    f_minus2: torch.Tensor,
    f_zero: float,
    step: float,
    loss_scale: float,
    noise: float,
    dtype: torch.dtype,
) -> tuple[Differences, torch.Tensor]:
    """Turn loss values at +-h, +-2h into derivative estimates; also return which directions look like kinks.

    ``noise`` is the measured standard deviation of the loss's rounding noise; ``loss_scale`` its magnitude.
    """
    d1 = (f_plus1 - f_minus1) / (2 * step)
    d2 = (f_plus2 - f_minus2) / (4 * step)
    numeric = (4 * d1 - d2) / 3
    eps = machine_eps(dtype)
    roundoff = max(NOISE_SIGMAS * noise, ROUNDOFF_FLOOR_ULPS * eps * loss_scale) / step
    spread = (d1 - d2).abs()
    error = spread / 3 + roundoff
    # Smooth functions give |D1 - D2| ~ h^2 |f'''| ~ eps^(2/3) relative; a kink gives O(1) relative.
    suspicious = spread > (eps**0.5 * 100) * (d1.abs() + d2.abs()) + 8 * roundoff
    # The one-sided asymmetry (f(+h) - 2 f(0) + f(-h)) / 2h is h f''/2 for a smooth function, so twice the
    # asymmetry at h equals the asymmetry at 2h up to O(h^3). A kink with slope jump c inside the steps breaks
    # that (exactly at a kink both asymmetries are c/2) even where D1 == D2, which central differences miss.
    asym1 = (f_plus1 - 2 * f_zero + f_minus1) / (2 * step)
    asym2 = (f_plus2 - 2 * f_zero + f_minus2) / (4 * step)
    suspicious |= (2 * asym1 - asym2).abs() > (eps**0.5 * 100) * (d1.abs() + d2.abs()) + 16 * roundoff
    return Differences(numeric=numeric, error=error, kink=torch.zeros_like(suspicious)), suspicious


def central(
    f_plus: torch.Tensor, f_minus: torch.Tensor, step: float, loss_scale: float, dtype: torch.dtype
) -> tuple[Differences, torch.Tensor]:
    """The screening estimate: one central difference, its error the roundoff floor alone.

    Nothing is called a kink here: the screening pass (check_tensor) only ever accepts a clean pass, and a
    difference that crossed a kink, or a truncation error above the floor, fails it and is measured in full.
    """
    numeric = (f_plus - f_minus) / (2 * step)
    error = torch.full_like(numeric, ROUNDOFF_FLOOR_ULPS * machine_eps(dtype) * loss_scale / step)
    none = torch.zeros(numeric.shape, dtype=torch.bool)
    return Differences(numeric=numeric, error=error, kink=none), none.clone()


def tolerance(
    analytic: torch.Tensor, numeric: torch.Tensor, error: torch.Tensor, safety_factor: float, dtype: torch.dtype
) -> torch.Tensor:
    """Allowed |analytic - numeric| per comparison: safety factor x estimated FD error + a relative floor."""
    # Scaled by finite values only: an infinite analytic value must not widen its own tolerance to infinity.
    magnitude = analytic.abs()
    scale = torch.maximum(torch.where(torch.isfinite(magnitude), magnitude, 0.0), numeric.abs())
    return safety_factor * error + relative_floor(dtype) * scale
