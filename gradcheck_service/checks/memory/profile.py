"""Measured memory profile of one training step (forward + loss + backward) on the model as given.

Static figures are exact from the tensors (parameters, gradients, optimizer state); activation bytes and the peak
are measured on a real step (see :mod:`.allocations` for how); checkpointing, batch scaling and mixed precision
are extra measured runs, only on request. The model is left exactly as it was.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ...options import CheckOptions
from ...report.memory import (
    MemoryProfile as MemoryProfile,
)
from ...report.memory import (
    ModuleActivation as ModuleActivation,
)
from ...report.memory import (
    OptimizerState as OptimizerState,
)
from ...types import LossFn
from ..health.diagnosis import Diagnosis
from ..health.findings import Finding
from ..health.flow import GradientNorms, recording, summarize_gradients
from ..model_state import clear_grads, model_device, preserved, seeded
from .allocations import distinct_storage_bytes, measure_step, timed_step
from .batch_scaling import batch_size_of, measure_batch_scaling
from .checkpointing import plan_checkpointing
from .precision import compare_precision


def _float_input_dtype(inputs: tuple[torch.Tensor, ...]) -> torch.dtype:
    """The dtype a model without parameters computes in: its first float input's (else the default dtype)."""
    return next((t.dtype for t in inputs if t.is_floating_point()), torch.get_default_dtype())


def optimizer_state_bytes(model: nn.Module) -> OptimizerState:
    """SGD-momentum and Adam state bytes for ``model``'s trainable parameters (see :class:`OptimizerState`)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    step_size = 8 if torch.get_default_dtype() == torch.float64 else 4
    return OptimizerState(sgd_momentum_bytes=grad_bytes, adam_bytes=2 * grad_bytes + step_size * len(trainable))


def profile_memory(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    options: CheckOptions,
) -> MemoryProfile:
    """Measure one training step's memory and time; checkpointing, batch scaling, precision as ``options`` ask.

    ``options.memory_budget_bytes`` implies batch scaling (the budget is answered from the fitted line).
    """
    return _profile(model, inputs, loss_fn, options, with_health=False)[0]


def profile_training_step(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    options: CheckOptions,
) -> tuple[MemoryProfile, GradientNorms, Diagnosis]:
    """The memory profile and the gradient health from the same instrumented pass.

    The health hooks ride on the memory profile's instrumented forward+backward (their own small tensors are
    hidden from the allocation tracker), which saves a whole training step against running
    :func:`~.health.analyze_gradients` and :func:`profile_memory` one after the other; the figures are the same.
    """
    memory, health = _profile(model, inputs, loss_fn, options, with_health=True)
    assert health is not None
    return memory, *health


def _profile(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    options: CheckOptions,
    with_health: bool,
) -> tuple[MemoryProfile, tuple[GradientNorms, Diagnosis] | None]:
    device = model_device(model, inputs)
    health: tuple[GradientNorms, Diagnosis] | None = None
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    findings: list[Finding] = []
    optimizer = optimizer_state_bytes(model)
    with preserved(model):
        with seeded(options.seed, device), recording(model) if with_health else nullcontext() as recorder:
            step = measure_step(model, inputs, loss_fn, device)
        if recorder is not None:
            health = summarize_gradients(model, recorder, step.loss_value, device, options.thresholds, inputs)
        clear_grads(model)
        with seeded(options.seed, device):
            forward_s, backward_s = timed_step(model, inputs, loss_fn, device)
        clear_grads(model)
        checkpointing = None
        if options.checkpointing:
            checkpointing = plan_checkpointing(model, inputs, loss_fn, device, options.seed, options.checkpointing,
                                               findings)
        scaling = None
        if options.batch_scaling or options.memory_budget_bytes is not None:
            scaling = measure_batch_scaling(model, inputs, loss_fn, device, options.seed, step,
                                            options.memory_budget_bytes, optimizer.adam_bytes)
        precision = None
        if options.precision is not None:
            precision = compare_precision(model, inputs, loss_fn, options.precision, device, options.seed,
                                          options.thresholds, findings)
    by_module = sorted(
        (ModuleActivation(module=name, type=entry.type, bytes=entry.bytes, tensors=entry.tensors)
         for name, entry in step.by_module.items()),
        key=lambda m: m.bytes, reverse=True,
    )
    profile = MemoryProfile(
        device=str(device),
        dtype=str(params[0].dtype if params else _float_input_dtype(inputs)).removeprefix("torch."),
        batch_size=batch_size_of(inputs)[0],
        parameter_bytes=distinct_storage_bytes(params),
        trainable_parameter_bytes=sum(p.numel() * p.element_size() for p in trainable),
        buffer_bytes=distinct_storage_bytes(list(model.buffers())),
        gradient_bytes=sum(p.numel() * p.element_size() for p in trainable),
        optimizer_state=optimizer,
        activation_bytes=step.activation_bytes,
        activation_input_bytes=step.activation_input_bytes,
        saved_tensors=step.saved_tensors,
        loss_saved_bytes=step.loss_saved_bytes,
        activations_by_module=by_module,
        retained_after_forward_bytes=step.retained_after_forward_bytes,
        resident_bytes=step.resident_bytes,
        peak_bytes=step.resident_bytes + step.peak_increase_bytes,
        peak_increase_bytes=step.peak_increase_bytes,
        peak_method=step.peak_method,
        forward_s=forward_s,
        backward_s=backward_s,
        checkpointing=checkpointing,
        batch_scaling=scaling,
        precision=precision,
        findings=findings,
    )
    return profile, health
