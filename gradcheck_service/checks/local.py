"""The local strategy: each parameter checked through its own module's call, composition by joint probes.

Perturbing a parameter and re-running the whole model costs a full forward per evaluation, so a coordinate-wise
check of every tensor grows with parameters x depth. The local strategy checks each parameter where it is used:
one recorded forward/backward gives every module call's arguments and the gradient that reached its outputs;
the call's vector-Jacobian product for the module's *own* parameters is then compared with finite differences of
that module's forward alone (the recorded output gradient dotted with its output). Each evaluation runs one
module, so checking every parameter costs about as much as a few model forwards.

Local checks trust what flows between modules. Composition is checked by **joint probes**: random directions over
every trainable parameter together, through the whole model, against the full analytic gradient. A wrong backward
in a parameter-free piece (a custom activation, a functional op or a ``.detach()`` in a parent's forward) changes
the gradient of everything before it and fails the joint probes even though every local check passes.

Whenever anything fails, :func:`gradcheck_service.checks.engine.run_gradient_check` falls back to the global
per-tensor check for the report's verdicts and then localizes, so a failing report reads as it always has; the
local strategy makes the passing case, the common one in CI, cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..options import CheckOptions
from ..report import TensorCheck
from .directions import measure, probe_directions
from .evaluator import LossEvaluator, Target
from .gradcheck import Checked, check_tensor, compare, no_gradient_by_design, summarize
from .localize import ModuleCall, ReplayError, _CallAt, _Projection, record_calls
from .loss import LossFn
from .working_copy import WorkingCopy


@dataclass
class LocalResult:
    checks: dict[str, TensorCheck]  # global parameter name -> merged local verdict
    unchecked: list[str]  # parameters no replayable call covered: checked globally instead
    evaluations: int


def check_locally(
    work: WorkingCopy, loss: LossFn, opts: CheckOptions, skip: set[str] | frozenset[str] = frozenset()
) -> LocalResult:
    """Check every trainable parameter (but those in ``skip``) through the calls of the module that owns it."""
    names = {id(p): n for n, p in work.trainable_parameters() if n not in skip}
    found: dict[str, list[TensorCheck]] = {}
    evaluations = 0
    with torch.random.fork_rng(devices=[]):
        calls = record_calls(work, loss, opts.seed)
        for rec in calls:
            own = [(n, p) for n, p in rec.module.named_parameters(recurse=False) if id(p) in names]
            if not own or not rec.cotangents:
                continue
            try:
                results, spent = _check_own_parameters(rec, own, names, opts, work.dtype)
            except Exception:  # a call that cannot be re-run alone: its parameters are checked globally
                continue
            evaluations += spent
            for name, result in results.items():
                found.setdefault(name, []).append(result)
    checks = {name: _merge(parts) for name, parts in found.items()}
    unchecked = [n for n, _ in work.trainable_parameters() if n not in checks and n not in skip]
    return LocalResult(checks, unchecked, evaluations)


def _check_own_parameters(
    rec: ModuleCall, own: list[tuple[str, nn.Parameter]], names: dict[int, str], opts: CheckOptions,
    dtype: torch.dtype,
) -> tuple[dict[str, TensorCheck], int]:
    wrapper = _CallAt(rec)
    float_args = tuple(rec.leaves[i] for i in rec.differentiable)
    projection = _Projection(rec.cotangents)
    torch.set_rng_state(rec.rng_state)
    params = [p for _, p in own]
    with torch.enable_grad():
        leaves = tuple(a.detach().requires_grad_(True) for a in float_args)
        value = projection(wrapper(*leaves))
        grads = torch.autograd.grad(value, params, allow_unused=True)
    evaluator = LossEvaluator(wrapper, float_args, projection, opts.seed, chunk_size=opts.chunk_size,
                              rng_state=rec.rng_state)
    if abs(float(value.detach()) - evaluator.base_loss) > 1e-6 * max(evaluator.loss_scale, 1e-30):
        raise ReplayError("re-running the call does not reproduce its recorded output")
    by_design = no_gradient_by_design(rec.module)
    gen = torch.Generator().manual_seed(opts.seed + 7919 + rec.call)
    where = f"{rec.name or '<root>'}" + (f" call {rec.call}" if rec.call else "")
    results = {}
    for (local_name, p), g in zip(own, grads, strict=True):
        name = names[id(p)]
        mask, reason = by_design.get(local_name, (None, None))
        analytic = torch.zeros(p.shape, dtype=torch.float64) if g is None else g.detach().to(torch.float64)
        item = Checked(name, "parameter", Target("parameter", f"inner.{local_name}", p.detach()), analytic,
                       g is None, mask, reason)
        result = check_tensor(evaluator, item, opts, dtype, gen)
        result.method = f"local: finite differences of {where}'s own forward at its recorded call"
        results[name] = result
    return results, evaluator.evaluations


def _merge(parts: list[TensorCheck]) -> TensorCheck:
    """One verdict for a parameter checked at several calls (a module called twice, a tied weight)."""
    if len(parts) == 1:
        return parts[0]
    worst = max(parts, key=lambda t: (not t.passed, t.max_error_ratio or 0.0))
    merged = worst.model_copy()
    merged.passed = all(t.passed for t in parts)
    merged.resolved = all(t.resolved for t in parts)
    merged.coordinates_checked = sum(t.coordinates_checked for t in parts)
    merged.probes = sum(t.probes for t in parts)
    merged.failed_coordinates = sum(t.failed_coordinates for t in parts)
    merged.kinks = sum(t.kinks for t in parts)
    merged.method = f"{worst.method} (and {len(parts) - 1} more call(s))"
    return merged


def joint_probes(
    work: WorkingCopy, evaluator: LossEvaluator, parameter_grads: dict[str, torch.Tensor | None], opts: CheckOptions,
) -> TensorCheck | None:
    """Random directions over every trainable parameter together, through the whole model."""
    named = work.trainable_parameters()
    if not named:
        return None
    base = torch.cat([p.detach().reshape(-1) for _, p in named])
    analytic = torch.cat([
        (torch.zeros(p.numel(), dtype=torch.float64) if parameter_grads[n] is None
         else parameter_grads[n].detach().to(torch.float64).reshape(-1))  # type: ignore[union-attr]
        for n, p in named
    ])
    target = Target("parameters", "(all parameters)", base, names=tuple(n for n, _ in named),
                    shapes=tuple(p.shape for _, p in named))
    gen = torch.Generator().manual_seed(opts.seed + 424243)
    dirs = probe_directions(base, opts.probes, gen)
    measured = measure(evaluator, target, dirs, work.dtype)
    projected = dirs.to(torch.float64) @ analytic
    comparison = compare(projected, measured, torch.empty((opts.probes, 0), dtype=torch.long), opts, work.dtype)
    item = Checked("(all parameters)", "parameter", target, analytic, False)
    return summarize(item, None, comparison, "probes", "joint probes: random directions over every trainable "
                     "parameter together, through the whole model", base.numel())
