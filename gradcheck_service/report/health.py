"""The gradient-health sections: the measured gradient statistics of one training step (``gradient_norms``)
and their diagnosis (``diagnosis``), with the findings a person can act on.
"""

from __future__ import annotations

from pydantic import Field

from ..options import FailOn
from ..strict_json import ReportModel

# A finding is of one of the kinds a check can be told to fail on.
FindingKind = FailOn


class Finding(ReportModel):
    """A problem found in the gradient flow or the memory profile, in words a user can act on."""

    kind: FindingKind
    where: str = Field(description="Qualified module or parameter name ('' is the whole model).")
    measured: float = Field(description="The measured value that triggered the finding (units in `explanation`).")
    threshold: float = Field(description="The threshold it crossed (see HealthThresholds).")
    explanation: str
    suggestion: str


class ParameterGradient(ReportModel):
    """Statistics of one parameter's gradient. Norms are over the finite entries; non-finite ones are counted."""

    name: str
    shape: list[int]
    numel: int
    has_gradient: bool = Field(description="False when autograd produced no gradient (unused or detached).")
    l2_norm: float
    max_abs: float
    mean_abs: float
    nan_count: int
    inf_count: int
    weight_norm: float = Field(description="L2 norm of the parameter itself.")
    grad_to_weight: float | None = Field(
        description="l2_norm / weight_norm: the relative size of one SGD step with learning rate 1 (None for a "
        "zero parameter)."
    )


class InputGradient(ReportModel):
    """Statistics of one float input's gradient: measured when the model has no trainable parameter, so the
    inputs' gradients are the only ones a training step produces (a custom Function, a function of tensors)."""

    name: str = Field(description="'input[i]', the position in the inputs tuple.")
    shape: list[int]
    numel: int
    has_gradient: bool = Field(description="False when autograd produced no gradient for this input.")
    l2_norm: float
    max_abs: float
    mean_abs: float
    nan_count: int
    inf_count: int


class LayerSignal(ReportModel):
    """The gradient of the loss with respect to one layer's output at one call: the backward signal there."""

    name: str = Field(description="Qualified name as in named_modules() ('' is the root).")
    type: str
    call: int = Field(description="0 for the module's first call in the forward pass, 1 for the second, ...")
    output_numel: int = Field(description="Float output elements that receive a gradient (all tuple parts).")
    grad_norm: float | None = Field(
        description="L2 norm over the finite entries of d loss / d output, all tuple parts together; None when no "
        "gradient reached this output."
    )
    nonfinite_grad: bool = Field(description="d loss / d output has NaN or Inf entries.")
    nonfinite_output: bool = Field(description="The forward output itself has NaN or Inf entries.")


class ReluActivity(ReportModel):
    """How many units of a ReLU were active at least once in the batch (a unit = one position after dim 0)."""

    name: str
    call: int
    units: int
    dead_units: int
    dead_fraction: float


class GradientNorms(ReportModel):
    """The ``gradient_norms`` report section: per-parameter statistics and the per-layer backward signal."""

    dtype: str
    device: str
    training: bool = Field(description="Whether the root module was in train mode (the pass ran in this mode).")
    loss: float | None = Field(description="The loss value; None when it was NaN or Inf.")
    total_norm: float = Field(description="L2 norm of all parameter gradients together (finite entries).")
    parameters: list[ParameterGradient] = Field(default_factory=list)
    inputs: list[InputGradient] = Field(
        default_factory=list, description="Gradients of the float inputs, when the pass differentiated with respect "
        "to them (a model without trainable parameters); empty otherwise."
    )
    layers: list[LayerSignal] = Field(
        default_factory=list, description="In forward order (the order the layers finished their forward)."
    )
    relus: list[ReluActivity] = Field(default_factory=list)
    layer_rule: str = Field(
        "modules that own parameters directly, plus torch.nn activation and normalization modules; one entry "
        "per call",
        description="Which modules count as layers.",
    )


class Diagnosis(ReportModel):
    """The ``diagnosis`` report section: booleans a CI gate can test, and findings a person can act on."""

    vanishing: bool = False
    exploding: bool = False
    nonfinite: bool = False
    dead_relu: bool = False
    signal_ratio: float | None = Field(
        None, description="Backward-signal norm at the first layer / at the last layer (forward order); None "
        "with fewer than two layers reached by a finite gradient."
    )
    per_layer_factor: float | None = Field(
        None, description="signal_ratio ** (1 / (layers - 1)): the average growth (>1) or decay (<1) per layer."
    )
    first_layer: str | None = None
    last_layer: str | None = None
    findings: list[Finding] = Field(default_factory=list)
