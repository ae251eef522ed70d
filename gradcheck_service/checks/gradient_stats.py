"""The measured gradient statistics of one training step: per parameter, per float input, per layer output (the
backward signal through depth) and per ReLU. :mod:`.health` measures them; :mod:`.diagnosis` reads them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..strict_json import REPORT_MODEL_CONFIG


class _Model(BaseModel):
    model_config = REPORT_MODEL_CONFIG


class ParameterGradient(_Model):
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


class InputGradient(_Model):
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


class LayerSignal(_Model):
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


class ReluActivity(_Model):
    """How many units of a ReLU were active at least once in the batch (a unit = one position after dim 0)."""

    name: str
    call: int
    units: int
    dead_units: int
    dead_fraction: float


class GradientNorms(_Model):
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
