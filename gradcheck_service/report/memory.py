"""The ``memory`` section: the measured memory profile of one training step, with its optional checkpointing plan,
batch-size scaling and autocast precision comparison. Bytes are bytes, times seconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..strict_json import ReportModel
from .health import Finding


class BatchScaling(ReportModel):
    possible: bool
    reason: str | None = Field(None, description="Why batch scaling could not be measured.")
    batch_sizes: list[int] = Field(default_factory=list)
    activation_bytes: list[int] = Field(default_factory=list, description="Measured at each batch size.")
    peak_bytes: list[int] = Field(default_factory=list, description="Measured at each batch size.")
    activation_fixed_bytes: float | None = None
    activation_per_sample_bytes: float | None = None
    peak_fixed_bytes: float | None = None
    peak_per_sample_bytes: float | None = None
    budget_bytes: int | None = None
    largest_batch: int | None = Field(None, description="Largest batch whose forward+backward peak fits the budget.")
    largest_batch_with_adam: int | None = Field(
        None, description="Same with Adam's state (exp_avg, exp_avg_sq, step) resident as well."
    )


class CheckpointCandidate(ReportModel):
    """One block run under checkpointing. Bytes are bytes, times seconds, fractions of the baseline."""

    block: str
    type: str
    activation_bytes: int
    activation_saved_bytes: int
    activation_saved_fraction: float
    peak_bytes: int
    peak_saved_bytes: int
    step_s: float = Field(description="Best-of-3 forward+backward time with this block checkpointed.")
    extra_time_s: float
    extra_time_fraction: float
    gradients_identical: bool = Field(description="Every parameter gradient bit-identical to the baseline.")
    max_abs_difference: float


class CheckpointingPlan(ReportModel):
    baseline_activation_bytes: int
    baseline_peak_bytes: int
    baseline_step_s: float
    blocks: list[CheckpointCandidate] = Field(
        default_factory=list, description="Ranked best first: activation bytes saved per unit of extra time."
    )
    recommended: list[str] = Field(default_factory=list)
    combined: CheckpointCandidate | None = Field(None, description="All recommended blocks checkpointed together.")
    recommendation: str


class PrecisionParameter(ReportModel):
    name: str
    numel: int
    rel_error: float = Field(description="||g_autocast - g_float64|| / ||g_float64|| (absolute if the latter is 0).")
    own_dtype_rel_error: float = Field(description="The same for the model's own dtype without autocast.")
    underflow_count: int = Field(description="Entries that are 0 under autocast but not in the float64 reference.")
    nonfinite_count: int = Field(0, description="Entries that are NaN/Inf under autocast but finite in float64 "
                                 "(overflow, typically fp16 above 65504).")
    within_tolerance: bool


class PrecisionComparison(ReportModel):
    autocast_dtype: Literal["bf16", "fp16"]
    model_dtype: str
    reference_dtype: str = "float64"
    unit_roundoff: float = Field(description="u of the autocast dtype: 2**-8 (bf16) or 2**-11 (fp16).")
    tolerance: float = Field(description="Relative error allowed as precision loss: precision_error_factor * u.")
    max_rel_error: float
    underflow_count: int
    underflow_fraction: float
    verdict: Literal["precision loss only", "autocast-specific error", "differs without autocast", "not measured"]
    parameters: list[PrecisionParameter] = Field(default_factory=list)
    note: str | None = None


class ModuleActivation(ReportModel):
    """Bytes of the distinct storages first saved for backward while this module (innermost) was running."""

    module: str = Field(description="Qualified name; '' is the root's own forward.")
    type: str
    bytes: int
    tensors: int


class OptimizerState(ReportModel):
    """Exact bytes an optimizer allocates for its state on the first step, from the trainable parameters."""

    sgd_momentum_bytes: int = Field(description="One momentum buffer shaped like each trainable parameter.")
    adam_bytes: int = Field(
        description="exp_avg and exp_avg_sq shaped like each trainable parameter, plus one scalar `step` tensor "
        "per parameter (float32, or float64 when that is the default dtype; amsgrad would add a third buffer)."
    )


class MemoryProfile(ReportModel):
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
