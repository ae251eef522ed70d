"""Typed options for :func:`gradcheck_service.check`.

One pydantic model is the single source of truth for the library keyword arguments, the CLI flags, the service's
request options and the CI configuration, so the same names and limits hold everywhere.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import click
from pydantic import BaseModel, Field

from .strict_json import StrictModel
from .types import Device, FailOn, Mode, Precision

__all__ = ["CheckOptions", "FailOn", "HealthThresholds", "Mode", "choices", "click_option", "help_text"]


class HealthThresholds(StrictModel):
    """Thresholds of the gradient-flow diagnosis; the rationale of each is in docs/how-the-check-works.md."""

    vanishing_ratio: float = Field(
        1e-3,
        gt=0,
        description="Backward-signal norm at the first layer divided by the norm at the last layer below which "
        "gradients are called vanishing (the first layers learn >1000x slower than the last).",
    )
    exploding_ratio: float = Field(
        1e3,
        gt=0,
        description="Same ratio above which gradients are called exploding.",
    )
    exploding_norm: float = Field(
        1e4, gt=0, description="Total parameter-gradient L2 norm above which gradients are called exploding."
    )
    dead_relu_fraction: float = Field(
        0.5, ge=0, le=1, description="Fraction of a ReLU's units never active in the batch that is reported."
    )
    precision_error_factor: float = Field(
        32.0,
        gt=0,
        description="--precision: relative gradient error vs float64 allowed as precision loss, in units of the "
        "autocast dtype's unit roundoff (bf16 2**-8, fp16 2**-11). Rounding alone measured 2-3 units on a 9-layer "
        "MLP, so 32 leaves an order of magnitude of room before calling the autocast path faulty.",
    )
    underflow_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="--precision: fraction of gradient entries that are 0 under autocast but not in float64 above "
        "which an underflow finding is reported (loss scaling needed).",
    )


class CheckOptions(StrictModel):
    """Everything that controls one check. Unknown names are an error, so a typo never silently does nothing."""

    mode: Mode = Field("default", description="full: every coordinate, through the whole model; default: each "
                       "parameter through its own module's call (tensors of up to 16 elements fully, larger ones by "
                       "dense probes) plus joint probes through the whole model; fast: probes only.")
    order: Literal[1, 2] = Field(1, description="2 also checks the gradient of the gradient.")
    device: Device = "cpu"
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the random projection, probes and dropout.")
    max_coordinates: int = Field(
        4096, ge=1, le=10_000_000, description="default mode: tensors up to this many elements are checked fully; "
        "larger ones by this many sampled coordinates plus probes."
    )
    sample_coordinates: int = Field(
        256, ge=0, le=1_000_000, description="default mode: coordinates sampled from each large tensor, in "
        "addition to its corner coordinates and the whole-tensor probes."
    )
    probes: int = Field(4, ge=1, le=256, description="Random-direction probes per tensor (default and fast mode).")
    safety_factor: float = Field(
        10.0, ge=1.0, description="A difference fails only when it exceeds this multiple of the estimated "
        "finite-difference error (plus a relative floor of a few machine epsilons)."
    )
    strategy: Literal["local", "global"] = Field(
        "local", description="default and fast mode: check each parameter through its own module's recorded call "
        "plus joint probes over all parameters (local; a failure is re-checked through the whole model only with "
        "recheck); or always perturb through the whole model (global). full mode is always global.")
    recheck: bool = Field(
        False, description="default and fast mode: when the local strategy fails, re-check every tensor coordinate "
        "by coordinate through the whole model for the report (as full mode does). Off, the failing report comes "
        "from the local checks and localization, at about the cost of a passing check; on, it can cost thousands "
        "of training steps at the size of an LM.")
    localize: bool = Field(True, description="When the check fails, name the modules whose own backward is wrong.")
    health: bool = Field(True, description="Gradient norms and the vanishing/exploding diagnosis.")
    memory: bool = Field(True, description="Measured memory profile of one training step.")
    checkpointing: bool | list[str] = Field(
        False, description="Measure gradient checkpointing per top-level block (true) or for the named blocks."
    )
    batch_scaling: bool = Field(False, description="Fit activation memory against batch size.")
    memory_budget_bytes: int | None = Field(
        None, gt=0, description="Answer the largest batch that fits in it; the check's own batched evaluations "
        "(perturbed copies in flight) stay within it too.")
    precision: Precision | None = Field(None, description="Compare autocast gradients with float64.")
    fail_on: list[FailOn] = Field(
        default_factory=list, description="Diagnosis findings that make the overall verdict fail."
    )
    thresholds: HealthThresholds = Field(default_factory=HealthThresholds)
    chunk_size: int = Field(256, ge=1, le=65536, description="Perturbations evaluated in one batched forward.")
    triton_interpreter: Literal["auto", "on", "off"] = Field(
        "auto", description="Triton kernels: on runs them in Triton's interpreter on CPU tensors (their own "
        "arithmetic, in NumPy), off compiles them for the GPU, auto interprets when CUDA is absent (or as "
        "TRITON_INTERPRET says when it is set). Whatever the setting, a check sends a kernel launched on CPU tensors "
        "to the interpreter unless it is off. Decided when Triton is imported: set it before the model's code "
        "imports Triton (the CLI, CI, the service and the pytest plugin do).")


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    """The values of a Literal inside an annotation such as ``Literal[...]``, ``Literal[...] | None`` or
    ``list[Literal[...]]``; empty when there is none."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        return tuple(value for arg in typing.get_args(annotation) for value in _literal_values(arg))
    return ()


def choices(field: str, model: type[BaseModel] = CheckOptions) -> tuple[str, ...]:
    """The values an option accepts, as they are typed on a command line: ``choices("mode")`` ->
    ``("full", "default", "fast")``, ``choices("order")`` -> ``("1", "2")``."""
    return tuple(str(value) for value in _literal_values(model.model_fields[field].annotation))


def help_text(field: str, model: type[BaseModel] = CheckOptions) -> str:
    """The option's description, the one written on its field."""
    return model.model_fields[field].description or ""


F = TypeVar("F", bound=Callable[..., Any])


def click_option(field: str, *param_decls: str, **attrs: Any) -> Callable[[F], F]:
    """A click option for a ``CheckOptions`` field: its choices and its help taken from the field, so every
    command offers the same values with the same words (``attrs`` may add a default or extend the help)."""
    values = choices(field)
    if values and "type" not in attrs:
        attrs["type"] = click.Choice(values)
    attrs.setdefault("help", help_text(field))
    return click.option(*(param_decls or (f"--{field.replace('_', '-')}",)), **attrs)
