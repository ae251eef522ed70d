"""``check()``: the public entry point that runs every section of a report on one model."""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..options import CheckOptions
from ..report import Environment, GradientCheck, Localization, ModelInfo, Report, TensorCheck, Timings
from ..triton_interpreter import recording_kernels
from .callables import as_module, differentiable_inputs, require_checkable
from .gradients.analytic import AnalyticPass, run_analytic
from .gradients.evaluator import LossEvaluator, Target, precision_note
from .gradients.gradcheck import Checked, check_tensor, no_gradient_by_design
from .gradients.linear_layers import check_linear_layers
from .gradients.localize import Known
from .loss import LossFn, resolve_loss
from .rng import isolated_randomness
from .working_copy import CheckError, WorkingCopy, working_model

Progress = Callable[[str, float], None]

__all__ = ["check", "CheckError"]


def check(
    model: nn.Module | Callable[..., Any],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    loss_fn: LossFn | None = None,
    *,
    progress: Progress | None = None,
    name: str | None = None,
    options: CheckOptions | None = None,
    **option_values: Any,
) -> Report:
    """Check ``model``'s backward pass against float64 finite differences and profile its training health.

    ``model`` may also be a module without parameters or a plain function of tensors (as for
    ``torch.autograd.gradcheck``): then the float inputs' gradients are what is checked. ``inputs`` is one example
    batch (a tensor or a tuple of tensors; integer and bool tensors pass through unperturbed).
    ``loss_fn(output, *inputs)`` defaults to a fixed random projection of every float output.
    Options are the fields of :class:`CheckOptions`, as keywords or as ``options=``. The model itself is left
    exactly as it was: mode, parameters, buffers and ``.grad``.

    Raises :class:`CheckError` for unusable input (not callable, no float output, a forward that raises, complex
    or sparse tensors, neither a trainable parameter nor a float input).
    """
    opts = options if options is not None else CheckOptions(**option_values)
    if options is not None and option_values:
        raise CheckError("pass options either as keywords or as options=, not both")
    model, name = as_module(model, name)  # a plain function of tensors is wrapped into a module
    inputs_tuple = normalize_inputs(inputs)
    require_checkable(model, inputs_tuple)
    loss = resolve_loss(loss_fn, opts.seed)
    with recording_kernels(opts.triton_interpreter) as kernels:
        report = _check_model(model, inputs_tuple, loss, opts, name, progress)
    report.gradient_check.interpreted_kernels = kernels.kernels()
    note = kernels.note()
    if note:
        report.gradient_check.notes.append(note)
    return report


def _check_model(model: nn.Module, inputs_tuple: tuple[torch.Tensor, ...], loss: LossFn, opts: CheckOptions,
                 name: str | None, progress: Progress | None) -> Report:
    report_progress = progress or (lambda _stage, _fraction: None)
    started = time.perf_counter()
    timings = Timings()

    with isolated_randomness(), working_model(model, inputs_tuple, loss, opts) as work, work.reference():
        t0 = time.perf_counter()
        gradient_check, analytic, evaluator = run_gradient_check(work, loss, opts, report_progress)
        if evaluator.reduced_precision:
            gradient_check.notes.append("finite differences through the whole model" + precision_note(evaluator))
        timings.gradient_check_s = time.perf_counter() - t0
        localization = Localization(performed=False)
        if not gradient_check.passed and opts.localize:
            from .gradients.localize import localize

            t0 = time.perf_counter()
            report_progress("localization", 0.0)
            localization = localize(work, loss, opts, analytic, known_to_localization(gradient_check))
            timings.localization_s = time.perf_counter() - t0
        if opts.order == 2:
            from .gradients.second_order import check_second_order

            gradient_check.second_order = check_second_order(work, loss, opts)
            gradient_check.passed &= all(t.passed for t in gradient_check.second_order)

    with isolated_randomness():
        try:
            sections = measure_health_and_memory(model, differentiable_inputs(model, inputs_tuple), loss, opts,
                                                 timings, report_progress)
        except ValueError as exc:  # a training step with nothing to differentiate: the gradient check says why
            sections = {}
            work.notes.append(f"gradient health and memory not measured: {exc}")
    timings.total_s = time.perf_counter() - started
    timings.peak_rss_bytes = process_peak_rss()
    budget = opts.memory_budget_bytes
    if budget is not None and timings.peak_rss_bytes is not None and timings.peak_rss_bytes > budget:
        work.notes.append(f"the process's peak resident memory ({timings.peak_rss_bytes / 2**30:.2f} GiB) went over "
                          f"the memory budget ({budget / 2**30:.2f} GiB): batched evaluations kept within it, but "
                          "the float64 working parameters and autograd's float64 gradients do not shrink with it")
    if opts.device == "cuda" and torch.cuda.is_available():
        timings.peak_cuda_bytes = int(torch.cuda.max_memory_allocated())
    report = Report(
        passed=False,
        model=model_info(model, name),
        options=opts,
        gradient_check=gradient_check,
        localization=localization,
        timings=timings,
        environment=Environment(torch=torch.__version__, python=sys.version.split()[0], platform=platform.platform()),
        warnings=work.notes,
        **sections,
    )
    report.failed_because = verdict_reasons(report, opts)
    report.inconclusive_because = inconclusive_reasons(report.gradient_check) + differences_from_training(report)
    report.verdict = ("failed" if report.failed_because else "inconclusive" if report.inconclusive_because
                      else "passed")
    report.passed = report.verdict == "passed"
    report_progress("done", 1.0)
    return report


def process_peak_rss() -> int | None:
    """Peak resident memory of this process so far, in bytes (None where the platform does not say)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kilobytes on Linux
    except (ImportError, OSError):
        return None


def known_to_localization(gc: GradientCheck) -> Known:
    """What the failing check measured that localization can take as measured (see :class:`Known`)."""
    composition = gc.composition
    root_failed = None
    if composition is not None and not composition.passed:
        root_failed = f"joint probes through the whole model failed (rel err {composition.max_rel_error:.2e})"
    else:
        bad = next((t for t in gc.inputs if not t.passed and t.scope == "global"), None)
        if bad is not None:
            root_failed = f"gradient w.r.t. {bad.name} through the whole model failed (rel err {bad.max_rel_error:.2e})"
    return Known(root_failed=root_failed, local={t.name: t for t in gc.parameters if t.scope == "local"},
                 starved={t.name for t in gc.parameters if t.unused and not t.passed})


def normalize_inputs(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, list | tuple) and all(isinstance(t, torch.Tensor) for t in inputs):
        return tuple(inputs)
    raise CheckError("inputs must be a Tensor or a tuple of Tensors (one example batch)")


def run_gradient_check(
    work: WorkingCopy, loss: LossFn, opts: CheckOptions, progress: Progress
) -> tuple[GradientCheck, AnalyticPass, LossEvaluator]:
    analytic = run_analytic(work, loss, opts)
    evaluator = LossEvaluator(work.module, work.inputs, loss, opts.seed, chunk_size=opts.chunk_size,
                              memory_budget_bytes=opts.memory_budget_bytes,
                              rng_state=work.rng)
    gen = torch.Generator().manual_seed(opts.seed + 7919)
    loss_finite = math.isfinite(evaluator.base_loss)
    reproducible = loss_finite and is_reproducible(evaluator, work.dtype)
    composition = None
    if reproducible and opts.strategy == "local" and opts.mode != "full" and work.trainable_parameters():
        passed, composition = _local_strategy(work, loss, opts, analytic, evaluator, gen)
        if passed is not None:
            return passed, analytic, evaluator
    by_output, notes = check_linear_layers(work, analytic, evaluator, opts, gen)
    items = checked_tensors(work, analytic) if reproducible else []
    total = max(len(items), 1)
    results: dict[str, TensorCheck] = {}
    for i, item in enumerate(items):
        progress("gradient check", i / total)
        through_output = by_output.get(item.name)
        if through_output is None or not through_output.resolved:
            # Direct perturbation re-measures blind coordinates with larger steps, which the output-space path
            # (one step for the whole layer output) cannot.
            direct = check_tensor(evaluator, item, opts, work.dtype, gen)
            through_output = direct if through_output is None or direct.resolved else through_output
        results[item.name] = through_output
    progress("gradient check", 1.0)
    params = [results[n] for n, _ in work.trainable_parameters() if n in results]
    inputs = [results[f"input[{i}]"] for i in work.float_input_indices if f"input[{i}]" in results]
    return (
        GradientCheck(
            passed=reproducible and all(t.passed for t in params + inputs),
            reproducible=reproducible or not loss_finite,
            loss_finite=loss_finite,
            mode=opts.mode,
            order=opts.order,
            dtype=str(work.dtype).replace("torch.", ""),
            promoted=work.promoted,
            device=opts.device,
            evaluator="sequential" if evaluator.any_fallback else "batched",
            evaluations=evaluator.evaluations,
            parameters=params,
            inputs=inputs,
            frozen_parameters=[n for n, p in work.module.named_parameters() if not p.requires_grad],
            notes=notes,
            strategy="global",
            composition=composition,
        ),
        analytic,
        evaluator,
    )


def _local_strategy(
    work: WorkingCopy, loss: LossFn, opts: CheckOptions, analytic: AnalyticPass, evaluator: LossEvaluator,
    gen: torch.Generator,
) -> tuple[GradientCheck | None, TensorCheck | None]:
    """Local checks per owning module + joint probes.

    None when anything fails and ``opts.recheck`` asks for the whole-model check (it then runs for the report).
    Otherwise the failing report is this one: failing tensors re-checked coordinate by coordinate through their
    own module, every other tensor's local verdict, the joint probes' verdict, and localization to name the
    module. A whole-model re-check measures every coordinate through a full forward: thousands of training steps
    for a 30k-parameter model that cannot be batched, hours for a 124M-parameter LM, where this report costs
    about what the passing check does.
    """
    from .gradients.local import check_locally, joint_probes, local_plan

    composition = joint_probes(work, evaluator, analytic.parameter_grads, opts)
    if composition is None or (not composition.passed and opts.recheck):
        return None, composition
    local = check_locally(work, loss, opts)
    if not all(t.passed for t in local.checks.values()) and opts.recheck:
        return None, composition
    items = {item.name: item for item in checked_tensors(work, analytic)}
    for name in [*local.unchecked, *(f"input[{i}]" for i in work.float_input_indices)]:
        item = items[name]
        local.checks[name] = check_tensor(evaluator, item, opts, work.dtype, gen,
                                          plan=local_plan(item.target.base.shape, opts))
    inputs = [local.checks[f"input[{i}]"] for i in work.float_input_indices]
    params = [local.checks[n] for n, _ in work.trainable_parameters()]
    passed = composition.passed and all(t.passed for t in params + inputs)
    if not passed and opts.recheck:
        return None, composition
    notes = [f"{len(local.unchecked)} parameter(s) had no call that could be re-run alone and were checked through "
             f"the whole model: {', '.join(local.unchecked[:5])}"] if local.unchecked else []
    if not passed:
        notes.append("the whole-model check was not re-run for this report (recheck off): each parameter's verdict "
                     "is its own module's backward at its recorded call; the joint probes judge the gradients as "
                     "training sees them")
    return GradientCheck(
        passed=passed, reproducible=True, mode=opts.mode, order=opts.order,
        dtype=str(work.dtype).replace("torch.", ""), promoted=work.promoted, device=opts.device,
        evaluator="sequential" if evaluator.any_fallback else "batched",
        evaluations=evaluator.evaluations + local.evaluations, parameters=params, inputs=inputs,
        frozen_parameters=[n for n, p in work.module.named_parameters() if not p.requires_grad],
        notes=notes, strategy="local", composition=composition,
    ), composition


def is_reproducible(evaluator: LossEvaluator, dtype: torch.dtype) -> bool:
    """Evaluate the unperturbed loss again: a forward that reseeds its RNG or runs nondeterministic kernels gives
    another value, and then every finite difference measures that noise instead of a derivative."""
    again = float(evaluator.loss())
    return abs(again - evaluator.base_loss) <= torch.finfo(dtype).eps ** 0.5 * max(evaluator.loss_scale, 1e-30)


def checked_tensors(work: WorkingCopy, analytic: AnalyticPass) -> list[Checked]:
    items = []
    by_design = no_gradient_by_design(work.module)
    for name, p in work.trainable_parameters():
        grad = analytic.parameter_grads[name]
        mask, reason = by_design.get(name, (None, None))
        items.append(Checked(
            name=name, kind="parameter", target=Target("parameter", name, p.detach()),
            analytic=_as_float64(grad, p), unused=grad is None, by_design=mask, by_design_reason=reason,
        ))
    for i in work.float_input_indices:
        grad = analytic.input_grads[i]
        x = work.inputs[i]
        items.append(Checked(
            name=f"input[{i}]", kind="input", target=Target("input", f"input[{i}]", x.detach(), input_index=i),
            analytic=_as_float64(grad, x), unused=grad is None,
        ))
    return items


def _as_float64(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if grad is None:
        return torch.zeros(like.shape, dtype=torch.float64)
    return grad.detach().to("cpu", torch.float64)


def measure_health_and_memory(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], loss: LossFn, opts: CheckOptions, timings: Timings,
    progress: Progress,
) -> dict[str, Any]:
    """Gradient norms, diagnosis and memory, measured on the model as given (its own dtype and device)."""
    sections: dict[str, Any] = {}
    device_inputs = inputs
    if opts.health and opts.memory:
        from .memory.profile import profile_training_step

        progress("gradient health and memory", 0.0)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            memory, norms, diagnosis = profile_training_step(model, device_inputs, loss, opts)
        sections.update(memory=memory, gradient_norms=norms, diagnosis=diagnosis)
        # One shared pass: the time is reported under memory (the larger part), health keeps its own zero.
        timings.memory_s = time.perf_counter() - t0
        return sections
    if opts.health:
        from .health.flow import analyze_gradients

        progress("gradient health", 0.0)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            norms, diagnosis = analyze_gradients(model, device_inputs, loss, opts.thresholds, opts.seed)
        sections["gradient_norms"], sections["diagnosis"] = norms, diagnosis
        timings.health_s = time.perf_counter() - t0
    if opts.memory:
        from .memory.profile import profile_memory

        progress("memory", 0.0)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            sections["memory"] = profile_memory(model, device_inputs, loss, opts)
        timings.memory_s = time.perf_counter() - t0
    return sections


def verdict_reasons(report: Report, opts: CheckOptions) -> list[str]:
    reasons = []
    gc = report.gradient_check
    failing = [t.name for t in gc.parameters + gc.inputs if not t.passed]
    if failing:
        faulty = [name or "<root>" for name in report.localization.faulty_modules]  # '' is the root (a function)
        where = f" in {', '.join(faulty)}" if faulty else ""
        reasons.append(f"gradient check failed for {', '.join(failing[:8])}{'...' if len(failing) > 8 else ''}{where}")
    if gc.composition is not None and not gc.composition.passed and not failing:
        faulty = [name or "<root>" for name in report.localization.faulty_modules]
        where = f" in {', '.join(faulty)}" if faulty else ""
        reasons.append(f"joint probes through the whole model failed: a wrong gradient arises between modules{where}")
    failing2 = [t.name for t in gc.second_order if not t.passed]
    if failing2:
        reasons.append(f"second-order check failed for {', '.join(failing2[:8])}")
    diagnosis = report.diagnosis
    for kind in opts.fail_on:
        flagged = bool(getattr(diagnosis, kind, False)) if diagnosis is not None else False
        findings = getattr(diagnosis, "findings", []) if diagnosis is not None else []
        flagged |= any(getattr(f, "kind", None) == kind for f in findings)
        memory_findings = getattr(report.memory, "findings", []) if report.memory is not None else []
        flagged |= any(getattr(f, "kind", None) == kind for f in memory_findings)
        if flagged:
            reasons.append(f"diagnosis: {kind} (listed in fail_on)")
    return reasons


def inconclusive_reasons(gc: GradientCheck) -> list[str]:
    """Why a check that found nothing wrong still cannot say the gradients are right."""
    if not gc.loss_finite:
        return ["the loss is not finite at the checked point (NaN or infinite): no derivative can be compared there"]
    if not gc.reproducible:
        return ["the forward is not reproducible: the loss at the same point differed between two evaluations "
                "(a forward that reseeds its RNG, or nondeterministic kernels); finite differences cannot be trusted"]
    reasons = []
    tensors = [t for t in gc.parameters + gc.inputs if t.numel]
    coordinates = sum(t.coordinates_checked for t in tensors)
    kinks = sum(t.kinks for t in tensors)
    compared = coordinates - kinks + sum(t.probes for t in tensors)
    if coordinates and kinks * 2 > coordinates:
        reasons.append(f"{kinks} of {coordinates} coordinates were set aside as kinks (non-differentiable points)")
    elif compared <= 0:
        reasons.append("nothing was compared: no parameter or float input with a gradient to check")
    unmeasured = [t.name for t in tensors if t.unmeasured]
    if unmeasured:
        reasons.append(f"finite differences came out NaN or infinite for {', '.join(unmeasured[:5])}"
                       f"{' ...' if len(unmeasured) > 5 else ''}: the loss is not finite near the point, so those "
                       "comparisons could not be made")
    unresolved = [t.name for t in tensors if not t.resolved]
    if tensors and len(unresolved) * 2 > len(tensors):
        reasons.append(f"{len(unresolved)} of {len(tensors)} tensors were not meaningfully checked (tolerance above "
                       f"their gradients): {', '.join(unresolved[:5])}{' ...' if len(unresolved) > 5 else ''}")
    return reasons


def differences_from_training(report: Report) -> list[str]:
    """Where the model's own training step (the health section) and the check saw different gradients.

    A parameter whose gradient is non-zero when the model trains but that autograd left without one in the check
    was not compared with anything the model uses: the check ran something other than the model.
    """
    if report.gradient_norms is None:
        return []
    checked_unused = {t.name for t in report.gradient_check.parameters if t.unused}
    missed = [g.name for g in report.gradient_norms.parameters
              if g.name in checked_unused and g.has_gradient and g.l2_norm > 0]
    if not missed:
        return []
    return [f"{len(missed)} parameter(s) get a gradient when the model trains but none in the check, so what was "
            f"compared is not what the model uses: {', '.join(missed[:5])}{' ...' if len(missed) > 5 else ''}"]


def model_info(model: nn.Module, name: str | None) -> ModelInfo:
    params = list(model.parameters())
    first = next((p for p in params if p.is_floating_point()), None)
    return ModelInfo(
        name=name or type(model).__name__,
        type=f"{type(model).__module__}.{type(model).__qualname__}",
        parameters=sum(p.numel() for p in params),
        trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
        dtype=str(first.dtype).replace("torch.", "") if first is not None else "none",
        device=str(first.device) if first is not None else "cpu",
    )
