"""Measured memory profile of one training step (forward + loss + backward) on the model as given.

Static figures are exact from the tensors (parameters, gradients, optimizer state); activation bytes and the peak
are measured on a real step (see :mod:`.allocations` for how); checkpointing, batch scaling and mixed precision
are extra measured runs, only on request. The model is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from pydantic import BaseModel, Field
from torch import nn

from ..options import CheckOptions
from ..strict_json import REPORT_MODEL_CONFIG
from .allocations import distinct_storage_bytes, measure_step, timed_step
from .batch_scaling import BatchScaling, batch_size_of, measure_batch_scaling
from .checkpointing import CheckpointingPlan, plan_checkpointing
from .diagnosis import Diagnosis
from .findings import Finding
from .health import GradientNorms, recording, summarize_gradients
from .model_state import clear_grads, model_device, preserved, seeded
from .precision import PrecisionComparison, compare_precision

LossFn = Callable[..., torch.Tensor]


class _Model(BaseModel):
    model_config = REPORT_MODEL_CONFIG


class ModuleActivation(_Model):
    """Bytes of the distinct storages first saved for backward while this module (innermost) was running."""

    module: str = Field(description="Qualified name; '' is the root's own forward.")
    type: str
    bytes: int
    tensors: int


class OptimizerState(_Model):
    """Exact bytes an optimizer allocates for its state on the first step, from the trainable parameters."""

    sgd_momentum_bytes: int = Field(description="One momentum buffer shaped like each trainable parameter.")
    adam_bytes: int = Field(
        description="exp_avg and exp_avg_sq shaped like each trainable parameter, plus one scalar `step` tensor "
        "per parameter (float32, or float64 when that is the default dtype; amsgrad would add a third buffer)."
    )


class MemoryProfile(_Model):
    """The ``memory`` report section. Bytes are bytes, times seconds."""

    device: str
    dtype: str
    batch_size: int | None = Field(description="Size of the shared dim 0 of the inputs, if there is one.")
    parameter_bytes: int = Field(description="All parameters (distinct storages).")
    trainable_parameter_bytes: int
    buffer_bytes: int
    gradient_bytes: int = Field(description="One gradient per trainable parameter, in its dtype.")
    optimizer_state: OptimizerState
    activation_bytes: int = Field(
        description="Distinct storages autograd saved for backward in the model's own forward, parameters and "
        "buffers excluded (saved_tensors_hooks); includes input batches the first layers keep. What the loss "
        "saves is in loss_saved_bytes."
    )
    activation_input_bytes: int = Field(description="Part of activation_bytes that is the model's own inputs.")
    saved_tensors: int = Field(description="Tensors the model's forward packed for backward, before de-duplicating "
                               "storages.")
    loss_saved_bytes: int = Field(
        0, description="Distinct storages the loss function saved for backward that the model had not already "
        "saved: the default random projection's weights, or e.g. a cross-entropy's log-softmax of the logits."
    )
    activations_by_module: list[ModuleActivation] = Field(default_factory=list, description="Largest first.")
    retained_after_forward_bytes: int = Field(
        description="Allocated by the forward+loss and still alive when backward starts (measured by allocation)."
    )
    resident_bytes: int = Field(description="Parameters, buffers, existing gradients and inputs before the step.")
    peak_bytes: int = Field(description="resident_bytes + peak_increase_bytes.")
    peak_increase_bytes: int = Field(description="Highest allocation above resident during forward+backward.")
    peak_method: str
    forward_s: float = Field(description="One plain forward including the loss.")
    backward_s: float
    checkpointing: CheckpointingPlan | None = None
    batch_scaling: BatchScaling | None = None
    precision: PrecisionComparison | None = None
    findings: list[Finding] = Field(default_factory=list)


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
