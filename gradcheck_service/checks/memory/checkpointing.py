"""Gradient checkpointing trade-off, measured: memory saved and time added per block, gradients verified equal.

Each candidate block's forward is run through ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``: its inner
activations are dropped after the forward and recomputed during backward, so the saving is what the block saved
for backward minus its inputs, which checkpointing has to keep. Recomputation performs the same operations on the
same values with the same RNG state, so gradients should be bit-identical; a difference beyond a few rounding
errors means the block is not deterministic (or has side effects) and checkpointing would change training.
"""

from __future__ import annotations

import torch
from torch import nn

from ...report.memory import CheckpointCandidate as CheckpointCandidate
from ...report.memory import CheckpointingPlan as CheckpointingPlan
from ...types import LossFn
from ..health.findings import Finding
from ..model_state import clear_grads, seeded
from .allocations import StepMeasurement, checkpointed_blocks, measure_step, timed_step

TIMING_REPEATS = 3  # best of 3: the minimum is the least noisy estimate of a step's cost on a busy machine
MIN_SAVED_FRACTION = 0.05  # a block is recommended only if it saves at least 5 % of the activation bytes ...
MIN_EFFICIENCY = 1.0  # ... and at least 1 % of activation bytes per 1 % of extra step time
MISMATCH_EPS_MULTIPLE = 16  # allowed |difference| = 16 eps(dtype) x max|g|: room for non-deterministic reductions


def select_blocks(model: nn.Module, selection: bool | list[str]) -> dict[str, nn.Module]:
    """The blocks to try: the named ones, or the top-level children (descending through single-child wrappers)."""
    modules = dict(model.named_modules())
    if isinstance(selection, list):
        unknown = [name for name in selection if name not in modules or name == ""]
        if unknown:
            available = ", ".join(name for name, _ in model.named_children()) or "(none)"
            raise ValueError(f"checkpointing: no block named {', '.join(map(repr, unknown))} in the model "
                             f"(top-level blocks: {available})")
        return {name: modules[name] for name in selection}
    prefix, parent = "", model
    children = list(parent.named_children())
    while len(children) == 1:
        name, parent = children[0]
        prefix = f"{prefix}{name}."
        children = list(parent.named_children())
    return {f"{prefix}{name}": child for name, child in children}


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def _max_difference(a: dict[str, torch.Tensor | None], b: dict[str, torch.Tensor | None]) -> tuple[float, float]:
    """(max |a - b| over all parameters, max |a|): None gradients count as zero."""
    worst = scale = 0.0
    for name, ga in a.items():
        gb = b.get(name)
        if ga is None and gb is None:
            continue
        ta = ga if ga is not None else torch.zeros_like(gb)  # type: ignore[arg-type]
        tb = gb if gb is not None else torch.zeros_like(ta)
        worst = max(worst, float((ta.double() - tb.double()).abs().max()) if ta.numel() else 0.0)
        scale = max(scale, float(ta.abs().max()) if ta.numel() else 0.0)
    return worst, scale


class _Runner:
    def __init__(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], loss_fn: LossFn,
                 device: torch.device, seed: int) -> None:
        self.model, self.inputs, self.loss_fn, self.device, self.seed = model, inputs, loss_fn, device, seed

    def run(self, blocks: dict[str, nn.Module]) -> tuple[StepMeasurement, float, dict[str, torch.Tensor | None]]:
        """Measure memory, the best-of-N step time and the gradients with ``blocks`` checkpointed."""
        with checkpointed_blocks(blocks):
            clear_grads(self.model)
            with seeded(self.seed, self.device):
                measured = measure_step(self.model, self.inputs, self.loss_fn, self.device, set(blocks))
            times = []
            grads: dict[str, torch.Tensor | None] = {}
            for repeat in range(TIMING_REPEATS):
                clear_grads(self.model)
                with seeded(self.seed, self.device):
                    times.append(sum(timed_step(self.model, self.inputs, self.loss_fn, self.device)))
                if repeat == 0:
                    grads = _grads(self.model)
            clear_grads(self.model)
        return measured, min(times), grads

    def candidate(self, name: str, type_name: str, blocks: dict[str, nn.Module], base: StepMeasurement,
                  base_time: float, base_grads: dict[str, torch.Tensor | None]) -> CheckpointCandidate:
        measured, step, grads = self.run(blocks)
        difference, _ = _max_difference(base_grads, grads)
        base_peak = base.resident_bytes + base.peak_increase_bytes
        peak = measured.resident_bytes + measured.peak_increase_bytes
        saved = base.activation_bytes - measured.activation_bytes
        return CheckpointCandidate(
            block=name, type=type_name, activation_bytes=measured.activation_bytes, activation_saved_bytes=saved,
            activation_saved_fraction=saved / base.activation_bytes if base.activation_bytes else 0.0,
            peak_bytes=peak, peak_saved_bytes=base_peak - peak, step_s=step, extra_time_s=step - base_time,
            extra_time_fraction=(step - base_time) / base_time if base_time > 0 else 0.0,
            gradients_identical=difference == 0.0, max_abs_difference=difference,
        )


def _efficiency(c: CheckpointCandidate) -> float:
    """Percent of activation memory saved per percent of extra time (extra time floored at 1 %)."""
    return c.activation_saved_fraction / max(c.extra_time_fraction, 0.01)


def plan_checkpointing(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    device: torch.device,
    seed: int,
    selection: bool | list[str],
    findings: list[Finding],
) -> CheckpointingPlan:
    """Measure checkpointing for each selected block and recommend a set; mismatching gradients become findings.

    Runs inside the caller's state restoration (:func:`.model_state.preserved`).
    """
    blocks = select_blocks(model, selection)
    runner = _Runner(model, inputs, loss_fn, device, seed)
    base, base_time, base_grads = runner.run({})
    _, scale = _max_difference(base_grads, base_grads)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    tolerance = MISMATCH_EPS_MULTIPLE * torch.finfo(dtype).eps * scale
    candidates = [runner.candidate(name, type(block).__name__, {name: block}, base, base_time, base_grads)
                  for name, block in blocks.items()]
    for c in candidates:
        if c.max_abs_difference > tolerance:
            findings.append(Finding(
                kind="checkpoint_mismatch", where=c.block, measured=c.max_abs_difference, threshold=tolerance,
                explanation=f"With '{c.block}' checkpointed the gradients differ from the plain run by up to "
                            f"{c.max_abs_difference:.3g}: its recomputed forward does not reproduce the original.",
                suggestion="Look for non-determinism or side effects in this block (RNG outside torch, in-place "
                           "updates of module state, data-dependent control flow); do not checkpoint it until fixed.",
            ))
    candidates.sort(key=_efficiency, reverse=True)
    recommended = [c.block for c in candidates
                   if c.activation_saved_fraction >= MIN_SAVED_FRACTION and _efficiency(c) >= MIN_EFFICIENCY
                   and c.max_abs_difference <= tolerance]
    combined = None
    if len(recommended) > 1:
        chosen = {name: blocks[name] for name in recommended}
        combined = runner.candidate(" + ".join(recommended), "combined", chosen, base, base_time, base_grads)
    elif recommended:
        combined = next(c for c in candidates if c.block == recommended[0])
    if combined is None:
        text = "Checkpointing does not pay off here: no block saves >= 5 % of activation memory per 1 % of extra time."
    else:
        text = (f"Checkpoint {', '.join(recommended)}: saves {combined.activation_saved_fraction:.0%} of activation "
                f"memory ({combined.activation_saved_bytes} bytes; peak -{combined.peak_saved_bytes} bytes) for "
                f"{combined.extra_time_fraction:+.0%} step time.")
    return CheckpointingPlan(
        baseline_activation_bytes=base.activation_bytes, baseline_peak_bytes=base.resident_bytes +
        base.peak_increase_bytes, baseline_step_s=base_time, blocks=candidates, recommended=recommended,
        combined=combined, recommendation=text,
    )
