"""The gradient-check sections: one verdict per compared tensor, the check as a whole, and the localization of
a failure to the modules whose own backward is wrong.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..strict_json import ReportModel


class Coordinate(ReportModel):
    """One compared coordinate (or one probe direction) with both derivative values."""

    index: list[int] = Field(description="Index into the tensor; empty for a whole-tensor probe.")
    analytic: float
    numeric: float
    abs_error: float
    tolerance: float = Field(description="Difference allowed here: safety factor x estimated FD error + floor.")


class TensorCheck(ReportModel):
    """Verdict for one trainable parameter or float input."""

    name: str
    kind: Literal["parameter", "input"]
    shape: list[int]
    dtype: str
    passed: bool
    coverage: Literal["full", "sampled", "probes"] = Field(
        description="full: every coordinate compared; sampled: some coordinates plus probes; probes: only "
        "random-direction probes over the whole tensor."
    )
    method: str = Field(description="How the numeric reference was obtained, e.g. 'central differences' or "
                        "'output-space central differences through the exact linear map of Linear'.")
    numel: int
    coordinates_checked: int
    probes: int
    failed_coordinates: int = 0
    kinks: int = Field(0, description="Coordinates at a non-differentiable point (the finite differences do not "
                       "converge as the step shrinks); excluded from the verdict and counted here.")
    unmeasured: int = Field(0, description="Comparisons whose finite differences came out NaN or infinite (the "
                            "loss is not finite near the point): left out of the verdict; a tensor that has them and "
                            "no failure makes the check inconclusive.")
    max_abs_error: float
    max_rel_error: float
    max_error_ratio: float | None = Field(
        None, description="Largest |analytic - numeric| / tolerance over every comparison of this tensor "
        "(coordinates and probes; kinks excluded): the error in units of its own calibrated bound, so the tensor "
        "passes exactly when this is at most 1. None in reports written before it was recorded."
    )
    worst: Coordinate | None = Field(None, description="The comparison closest to (or furthest beyond) its tolerance.")
    unused: bool = Field(False, description="Autograd gave no gradient (None); compared as zero.")
    resolved: bool = Field(True, description="False when the tolerance is above the tensor's largest gradient: a "
                           "gradient wrong by its own size could pass, so the tensor was not meaningfully checked.")
    scope: Literal["local", "global"] = Field(
        "global", description="local: compared through its own module's recorded call (finite differences of that "
        "module's forward alone); global: perturbed through the whole model.")
    undetected_error: float | None = Field(
        None, description="The largest error one coordinate's gradient could have and still pass every comparison "
        "made (absolute, in gradient units): the largest coordinate tolerance where every coordinate was compared, "
        "else what the random-direction probes could miss. None where neither bounds it.")
    note: str | None = None


class InterpretedKernel(ReportModel):
    """A Triton kernel that ran in Triton's interpreter on CPU tensors during the check."""

    name: str = Field(description="The kernel's Python module and function, e.g. 'kernels.rmsnorm.rms_norm_backward'.")
    launches: int = Field(description="Launches during the whole check (reference, analytic pass and health).")
    tensor_dtypes: list[str] = Field(default_factory=list, description="Float dtypes of the tensors it was given.")
    precision: str = Field(description="The float precision its arithmetic reached with the most precise tensors it "
                           "was given (float64 in the promoted model): per launch, the lowest of its tensors' dtypes "
                           "and every cast down inside it; a kernel loading float64 into float32 says float32.")


class GradientCheck(ReportModel):
    passed: bool
    mode: str
    order: int
    dtype: str = Field(description="dtype the comparison ran in (float64 unless the model cannot be promoted).")
    promoted: bool
    device: str
    evaluator: str = Field(description="'batched' (torch.func.vmap over perturbations) or 'sequential'.")
    evaluations: int = Field(description="Forward evaluations spent on finite differences.")
    parameters: list[TensorCheck] = Field(default_factory=list)
    inputs: list[TensorCheck] = Field(default_factory=list)
    frozen_parameters: list[str] = Field(default_factory=list, description="requires_grad=False; not checked.")
    second_order: list[TensorCheck] = Field(default_factory=list, description="order=2: gradient of the gradient.")
    strategy: Literal["local", "global"] = Field(
        "global", description="local: each parameter compared through its own module's recorded call, composition "
        "by joint probes (the passing case in default and fast mode); global: each tensor perturbed through the "
        "whole model (full mode, and whenever anything failed).")
    composition: TensorCheck | None = Field(
        None, description="Joint probes: random directions over every trainable parameter together, through the "
        "whole model, against the full analytic gradient.")
    reproducible: bool = Field(True, description="The loss at the unperturbed point came out the same on two "
                               "evaluations; when it did not, no finite difference means anything.")
    loss_finite: bool = Field(True, description="The loss at the unperturbed point is finite; when it is not (NaN "
                              "or infinite), nothing can be compared and the check is inconclusive.")
    notes: list[str] = Field(default_factory=list)
    interpreted_kernels: list[InterpretedKernel] = Field(
        default_factory=list, description="Triton kernels that ran in Triton's interpreter on CPU (see the "
        "triton_interpreter option), with the precision each computed in.")


class ModuleCheck(ReportModel):
    """A submodule's own backward compared with finite differences of its own forward, at one call."""

    module: str = Field(description="Qualified name as in named_modules(); '' is the root module.")
    type: str
    call: int = Field(description="0 for the first call of the module in the forward pass, 1 for the second, ...")
    passed: bool
    max_abs_error: float
    max_rel_error: float
    max_error_ratio: float | None = Field(
        None, description="Largest |analytic - numeric| / tolerance over this call's comparisons: at most 1 passes. "
        "None where the call was judged without its own comparisons (the whole model's call, from its joint "
        "probes) and in older reports.")
    probes: int
    blamed: bool = Field(description="The smallest failing module on its path: named as faulty.")
    detail: str | None = None
    defined_in: str | None = Field(None, description="The Python module defining the module's class, e.g. "
                                   "'mylib.layers' (None for torch's own classes and for older reports).")


class Localization(ReportModel):
    performed: bool
    faulty_modules: list[str] = Field(default_factory=list)
    modules: list[ModuleCheck] = Field(default_factory=list)
    calls_recorded: int = Field(0, description="Module calls in the recorded forward.")
    calls_checked: int = Field(0, description="Module calls checked on their own: the bisection of the module tree "
                               "checks a call's submodule calls only when the call itself fails.")
    evaluations: int = Field(0, description="Forwards of single module calls the localization spent (each one "
                             "module's forward, not the model's).")
    note: str | None = None
