"""Gradient statistics per parameter and per layer (the backward signal through depth) for one training step.

:func:`analyze_gradients` runs one forward and backward pass on the model as given (its dtype, device and
train/eval mode), under a seeded RNG, and leaves the model exactly as it was. The statistics' models live in
:mod:`gradcheck_service.report.health`; the vanishing/exploding diagnosis built from these numbers lives in :mod:`.diagnosis`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...options import HealthThresholds
from ...report.health import GradientNorms, InputGradient, LayerSignal, ParameterGradient, ReluActivity
from ...types import LossFn
from ..layers import DEAD_RELU_TYPES, dense, grad_leaves, is_layer
from ..model_state import model_device, preserved, seeded
from ..tracking import untracked
from .diagnosis import Diagnosis, diagnose
from .findings import Finding

__all__ = [
    "Diagnosis",
    "Finding",
    "GradientNorms",
    "InputGradient",
    "LayerSignal",
    "ParameterGradient",
    "ReluActivity",
    "analyze_gradients",
    "compute_loss",
]


def compute_loss(model: nn.Module, inputs: tuple[torch.Tensor, ...], loss_fn: LossFn) -> torch.Tensor:
    """``loss_fn(model(*inputs), *inputs)``, checked to be a scalar that depends on a parameter or an input."""
    loss = loss_fn(model(*inputs), *inputs)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on any parameter or input that requires grad: nothing to "
                         "differentiate")
    return loss.reshape(())


def _finite_stats(tensor: torch.Tensor) -> tuple[float, float, float, int, int]:
    """(L2 norm, max |x|, mean |x|) over the finite entries, and the NaN and Inf counts.

    Fast path: three reductions (L2 norm, min/max, sum of |x|). A finite L2 norm proves every entry is finite,
    so the element-wise NaN/Inf scan (several times slower) runs only when the norm is not finite.
    """
    t = tensor.detach()
    if t.numel() == 0:
        return 0.0, 0.0, 0.0, 0, 0
    norm = float(torch.linalg.vector_norm(t))
    if math.isfinite(norm):
        low, high = torch.aminmax(t)  # (vector_norm with ord=inf is ~500x slower on CPU)
        return norm, max(-float(low), float(high)), float(t.abs().sum()) / t.numel(), 0, 0
    finite = torch.isfinite(t)
    nan_count = int(torch.isnan(t).sum())
    inf_count = int(t.numel() - finite.sum()) - nan_count
    values = t[finite].abs().to(torch.float64)  # float64: the finite entries may be huge enough to overflow
    if values.numel() == 0:
        return 0.0, 0.0, 0.0, nan_count, inf_count
    return (float(torch.linalg.vector_norm(values)), float(values.max()), float(values.mean()),
            nan_count, inf_count)


def _finite_norm(tensor: torch.Tensor) -> float:
    """L2 norm over the finite entries: one reduction, the full statistics only when it is not finite."""
    norm = float(torch.linalg.vector_norm(tensor.detach()))
    return norm if math.isfinite(norm) else _finite_stats(tensor)[0]


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry is finite; a finite sum proves it in one allocation-free pass."""
    t = tensor.detach()
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def _input_gradients(inputs: tuple[torch.Tensor, ...]) -> list[InputGradient]:
    rows: list[InputGradient] = []
    for i, t in enumerate(inputs):
        if not (isinstance(t, torch.Tensor) and t.is_leaf and t.requires_grad):
            continue
        norm, max_abs, mean_abs, nan_count, inf_count = _finite_stats(t.grad) if t.grad is not None else (
            0.0, 0.0, 0.0, 0, 0)
        rows.append(InputGradient(
            name=f"input[{i}]", shape=list(t.shape), numel=t.numel(), has_gradient=t.grad is not None,
            l2_norm=norm, max_abs=max_abs, mean_abs=mean_abs, nan_count=nan_count, inf_count=inf_count,
        ))
    return rows


def _parameter_gradients(model: nn.Module) -> list[ParameterGradient]:
    rows: list[ParameterGradient] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        weight_norm = _finite_norm(p) if p.numel() else 0.0
        if p.grad is None:
            norm = max_abs = mean_abs = 0.0
            nan_count = inf_count = 0
        else:
            norm, max_abs, mean_abs, nan_count, inf_count = _finite_stats(dense(p.grad))
        rows.append(ParameterGradient(
            name=name, shape=list(p.shape), numel=p.numel(), has_gradient=p.grad is not None, l2_norm=norm,
            max_abs=max_abs, mean_abs=mean_abs, nan_count=nan_count, inf_count=inf_count, weight_norm=weight_norm,
            grad_to_weight=norm / weight_norm if weight_norm > 0 else None,
        ))
    return rows


class _SignalRecorder:
    """Forward hooks on every layer that attach tensor hooks to its output, and ReLU activity counting.

    Tensor hooks (not module backward hooks) are used because they tolerate in-place activations after the layer
    and tuple outputs; a hook registered before an in-place change still receives d loss / d (original output).
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers: list[dict[str, Any]] = []
        self.relus: list[ReluActivity] = []
        self._calls: dict[str, int] = {}
        self._handles: list[Any] = []
        for name, module in model.named_modules():
            if is_layer(module) or isinstance(module, DEAD_RELU_TYPES):
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def on_forward(module: nn.Module, _args: Any, output: Any) -> None:
            with untracked():  # bookkeeping, not the model's memory (see tracking.py)
                self._record_forward(name, module, output)

        return on_forward

    def _record_forward(self, name: str, module: nn.Module, output: Any) -> None:
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        if isinstance(module, DEAD_RELU_TYPES) and isinstance(output, torch.Tensor):
            self._count_relu(name, call, output)
        if not is_layer(module):
            return
        leaves = grad_leaves(output)
        entry: dict[str, Any] = {
            "name": name, "type": type(module).__name__, "call": call,
            "output_numel": sum(leaf.numel() for leaf in leaves),
            "sq_norm": 0.0, "reached": False, "nonfinite_grad": False,
            "nonfinite_output": not all(_all_finite(leaf) for leaf in leaves),
        }
        self.layers.append(entry)
        for leaf in leaves:
            self._handles.append(leaf.register_hook(self._on_grad(entry)))

    @staticmethod
    def _on_grad(entry: dict[str, Any]) -> Callable[[torch.Tensor], None]:
        def record(grad: torch.Tensor) -> None:
            with untracked():
                norm = float(torch.linalg.vector_norm(grad.detach()))
                if not math.isfinite(norm):  # rare: recompute over the finite entries only
                    norm, _, _, nan_count, inf_count = _finite_stats(grad)
                    entry["nonfinite_grad"] = entry["nonfinite_grad"] or nan_count + inf_count > 0
            entry["sq_norm"] += norm * norm
            entry["reached"] = True

        return record

    def _count_relu(self, name: str, call: int, output: torch.Tensor) -> None:
        out = output.detach()
        # dim 0 is the batch: a unit is dead when it is off for every sample. ReLU outputs are >= 0, so "largest
        # value over the batch > 0" is "active at least once" (and a reduction 5x cheaper than any() on CPU).
        active = out.amax(dim=0) > 0 if out.dim() >= 2 else out > 0
        units = active.numel()
        dead = units - int(active.sum())
        self.relus.append(ReluActivity(name=name, call=call, units=units, dead_units=dead,
                                       dead_fraction=dead / units if units else 0.0))

    def signals(self) -> list[LayerSignal]:
        return [LayerSignal(
            name=e["name"], type=e["type"], call=e["call"], output_numel=e["output_numel"],
            grad_norm=math.sqrt(e["sq_norm"]) if e["reached"] else None, nonfinite_grad=e["nonfinite_grad"],
            nonfinite_output=e["nonfinite_output"],
        ) for e in self.layers]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def recording(model: nn.Module) -> Iterator[_SignalRecorder]:
    """Hooks that record the backward signal per layer and ReLU activity during one pass; always removed."""
    recorder = _SignalRecorder(model)
    try:
        yield recorder
    finally:
        recorder.remove()


def summarize_gradients(
    model: nn.Module, recorder: _SignalRecorder, loss_value: float, device: torch.device,
    thresholds: HealthThresholds, inputs: tuple[torch.Tensor, ...] = (),
) -> tuple[GradientNorms, Diagnosis]:
    """Gradient statistics from a finished pass (``.grad`` set by it, ``recorder`` attached to it), diagnosed.

    Inputs that are leaves requiring grad get their own statistics (``inputs``).
    """
    first: torch.Tensor | None = next(iter(model.parameters()), None)
    if first is None:  # no parameter: the float inputs carry the dtype
        first = next((t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
    parameters = _parameter_gradients(model)
    norms = GradientNorms(
        dtype=str(first.dtype if first is not None else torch.get_default_dtype()).removeprefix("torch."),
        device=str(device),
        training=model.training,
        loss=loss_value if math.isfinite(loss_value) else None,
        total_norm=math.sqrt(sum(p.l2_norm ** 2 for p in parameters)),
        parameters=parameters,
        inputs=_input_gradients(inputs),
        layers=recorder.signals(),
        relus=recorder.relus,
    )
    return norms, diagnose(norms, thresholds)


def analyze_gradients(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    thresholds: HealthThresholds,
    seed: int,
) -> tuple[GradientNorms, Diagnosis]:
    """Measure gradient statistics in one forward+backward pass and diagnose the gradient flow.

    ``loss_fn(output, *inputs)`` must return a scalar. The pass runs in the model's own dtype, device and mode with
    ``torch.manual_seed(seed)`` inside a forked RNG; modes, ``.grad`` tensors, buffers and the caller's RNG state
    are restored and every hook is removed, whatever happens. (:func:`~.memory.profile_training_step` gets the
    same figures from the memory profile's instrumented pass instead of a pass of its own.)
    """
    device = model_device(model, inputs)
    with preserved(model), seeded(seed, device):
        with recording(model) as recorder:
            loss = compute_loss(model, inputs, loss_fn)
            loss.backward()
        return summarize_gradients(model, recorder, float(loss.detach()), device, thresholds, inputs)
