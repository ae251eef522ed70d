"""The local strategy: each parameter checked through its own module's call, composition by joint probes.

Perturbing a parameter and re-running the whole model costs a full forward per evaluation, so a coordinate-wise
check of every tensor grows with parameters x depth. The local strategy checks each parameter where it is used:
one recorded forward/backward gives every module call's arguments and the gradient that reached its outputs;
the call's vector-Jacobian product for the module's *own* parameters is then compared with finite differences of
that module's forward alone (the recorded output gradient dotted with its output), by dense probes over all of
them at once (tensors of up to 16 elements coordinate by coordinate; stock Linear/Conv through their exact linear
map). Each evaluation runs one module, so checking every parameter costs about as much as a few model forwards.

Local checks trust what flows between modules. Composition is checked by **joint probes**: random directions over
every trainable parameter together, through the whole model, against the full analytic gradient. A wrong backward
in a parameter-free piece (a custom activation, a functional op or a ``.detach()`` in a parent's forward) changes
the gradient of everything before it and fails the joint probes even though every local check passes.

When anything fails, a failing module's tensors are re-checked one by one through it, and
:func:`gradcheck_service.checks.engine.run_gradient_check` re-checks every tensor through the whole model where
that is affordable (the report then reads as it always has) or keeps this local report where it is not; then
localization names the module. The local strategy makes the passing case, the common one in CI, cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_unflatten

from ...options import CheckOptions
from ...report import TensorCheck
from ..layers import dense
from ..loss import LossFn
from ..working_copy import WorkingCopy
from .directions import Measured
from .evaluator import LossEvaluator, Target, precision_note
from .gradcheck import (
    Checked,
    LinearMap,
    check_tensor,
    compare,
    draw_seeds,
    is_linear_in_parameters,
    linear_map,
    no_gradient_by_design,
    probe_together,
    summarize,
)
from .in_place import CHUNK, Part, Space, robust_scale
from .localize import ModuleCall, ReplayError, _CallAt, _Projection, record_calls


@dataclass
class LocalResult:
    checks: dict[str, TensorCheck]  # global parameter name -> merged local verdict
    unchecked: list[str]  # parameters no replayable call covered: checked globally instead
    evaluations: int


def check_locally(work: WorkingCopy, loss: LossFn, opts: CheckOptions) -> LocalResult:
    """Check every trainable parameter through the calls of the module that owns it."""
    names = {id(p): n for n, p in work.trainable_parameters()}
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
    unchecked = [n for n, _ in work.trainable_parameters() if n not in checks]
    return LocalResult(checks, unchecked, evaluations)


def _check_own_parameters(
    rec: ModuleCall, own: list[tuple[str, nn.Parameter]], names: dict[int, str], opts: CheckOptions,
    dtype: torch.dtype,
) -> tuple[dict[str, TensorCheck], int]:
    wrapper = _CallAt(rec)
    float_args = tuple(rec.leaves[i] for i in rec.differentiable)
    projection = _Projection(rec.cotangents)
    rec.rng_state.restore()
    params = [p for _, p in own]
    with torch.enable_grad():
        leaves = tuple(a.detach().requires_grad_(True) for a in float_args)
        value = projection(wrapper(*leaves))
        grads = tuple(None if g is None else dense(g) for g in torch.autograd.grad(value, params, allow_unused=True))
    exact = _stock_linear_probes(rec, own, grads, names, opts, dtype)
    if exact is not None and all(t.passed for t in exact.values()):
        return exact, 0
    evaluator = LossEvaluator(wrapper, float_args, projection, opts.seed, chunk_size=opts.chunk_size,
                              memory_budget_bytes=opts.memory_budget_bytes,
                              rng_state=rec.rng_state)
    if abs(float(value.detach()) - evaluator.base_loss) > 1e-6 * max(evaluator.loss_scale, 1e-30):
        raise ReplayError("re-running the call does not reproduce its recorded output")
    by_design = no_gradient_by_design(rec.module)
    gen = torch.Generator().manual_seed(opts.seed + 7919 + rec.call)
    where = f"{rec.name or '<root>'}" + (f" call {rec.call}" if rec.call else "")
    items = []
    for (local_name, p), g in zip(own, grads, strict=True):
        mask, reason = by_design.get(local_name, (None, None))
        analytic = torch.zeros(p.shape, dtype=torch.float64) if g is None else g.detach().to(torch.float64)
        items.append(Checked(names[id(p)], "parameter", Target("parameter", f"inner.{local_name}", p.detach()),
                             analytic, g is None, mask, reason))
    evaluator.share_noise = True  # one module's forward has one rounding behaviour: measured once if needed
    method = f"local: finite differences of {where}'s own forward at its recorded call"
    results = {}
    probed = []
    for item in items:
        flat, coverage = local_plan(item.target.base.shape, opts)
        if coverage == "probes":
            probed.append(item)
            continue
        results[item.name] = check_tensor(evaluator, item, opts, dtype, gen, plan=(flat, coverage))
    if probed:
        _all, together = probe_together(evaluator, probed, opts, dtype, gen)
        if not all(t.passed for t in together.values()):
            # Which tensor, which coordinates: each one on its own, as the global check would (at a module's
            # cost, not the model's).
            together = {item.name: check_tensor(evaluator, item, opts, dtype, gen) for item in probed}
        results.update(together)
    for result in results.values():
        result.method = method + (f"; {result.method}" if result.method.startswith("probed together") else "")
        result.method += precision_note(evaluator)
        result.scope = "local"
    return results, evaluator.evaluations


def _stock_linear_probes(
    rec: ModuleCall, own: list[tuple[str, nn.Parameter]], grads: tuple[torch.Tensor | None, ...],
    names: dict[int, str], opts: CheckOptions, dtype: torch.dtype,
) -> dict[str, TensorCheck] | None:
    """Probes of a stock Linear/Conv's own parameters through its exact linear map; None where that does not apply.

    ``z = f(x; W, b)`` is affine in ``(W, b)``, so the central difference along a direction ``V`` is
    ``f(x; V_W, V_b) - f(x; 0, 0)`` exactly, with no truncation error: evaluating the layer's own map on the
    direction is the finite difference at any step, computed without perturbing the weights (one matmul per
    probe, no copy of the weight). Its rounding is bounded by the length of the sums times the sum of the
    absolute terms. A failure is measured again by perturbation, as any other module's, for the report.
    """
    module = rec.module
    if not is_linear_in_parameters(module) or opts.mode == "full" or list(rec.cotangents) != [0]:
        return None
    args, _kwargs = tree_unflatten(rec.leaves, rec.spec)
    if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
        return None
    x, cot = args[0], rec.cotangents[0]
    local = dict(own)
    weight, bias = local.get("weight"), local.get("bias")
    if weight is None or set(local) - {"weight", "bias"}:
        return None
    layer: Any = module
    linear_map_x, linear_map_abs = linear_map(module, x), linear_map(module, x.abs())
    named_grads = dict(zip((n for n, _ in own), grads, strict=True))
    items = [Checked(names[id(p)], "parameter", Target("parameter", f"inner.{n}", p.detach()),
                     torch.zeros(p.shape, dtype=torch.float64) if named_grads[n] is None
                     else named_grads[n].detach().to(torch.float64),  # type: ignore[union-attr]
                     named_grads[n] is None)
             for n, p in sorted(own, key=lambda named: named[0] != "weight")]  # weight first, then bias
    gen = torch.Generator().manual_seed(opts.seed + 7919 + rec.call)
    # Each probe drawn part by part, the weight in whole output rows (see in_place): the layer's map of a slice of
    # rows is that slice of its output, so a 38M-entry LM head holds one slice of one probe at a time. A grouped
    # convolution mixes rows across groups: its weight is drawn whole.
    row = weight[0].numel()
    whole = getattr(layer, "groups", 1) != 1
    rows_chunk = weight.numel() if whole else max(1, CHUNK // row) * row
    space = Space([Part(item.target.base, item.target.base, chunk=rows_chunk if i == 0 else 0)
                   for i, item in enumerate(items)])
    dirs = space.directions(draw_seeds(gen, opts.probes))
    channel = -1 if isinstance(module, nn.Linear) else 1  # where the layer's output channels are
    per_channel, per_channel_abs = _channel_sums(cot, channel), _channel_sums(cot.abs(), channel)
    numeric = []
    terms = weight[0].numel() + 1 + cot.numel()  # the longest sums: one output entry, then the projection
    eps = float(torch.finfo(cot.dtype).eps)

    gradients = [item.analytic.reshape(-1) for item in items]
    projected = []  # <d, autograd's gradient>, taken while each probe is drawn for the map anyway

    def through_layer(chunks: Iterator[tuple[slice, torch.Tensor]], fn: LinearMap, out_grad: torch.Tensor,
                      along: torch.Tensor | None = None) -> tuple[float, float]:
        total, dot = 0.0, 0.0
        for where, piece in chunks:
            first, last = where.start // row, where.stop // row
            z = fn(piece.view(last - first, *weight.shape[1:]), None)
            total += float((out_grad.narrow(channel, first, last - first) * z).sum())
            if along is not None:
                dot += float(torch.dot(piece.to(torch.float64), along[where]))
        return total, dot

    with torch.no_grad():
        for d in dirs:
            value, dot = through_layer(d.chunks(0), linear_map_x, cot, gradients[0])
            if bias is not None:
                for at, piece in d.chunks(1):
                    value += float((per_channel[at] * piece).sum())
                    dot += float(torch.dot(piece.to(torch.float64), gradients[1][at]))
            numeric.append(value)
            projected.append(dot)
        # Every probe has the same magnitudes (+-1 times the scale), so one rounding bound serves them all.
        flat_w = weight.detach().reshape(-1)
        scales = ((where, robust_scale(flat_w[where], space.floor)) for where in _slices(weight.numel(), rows_chunk))
        magnitude, _ = through_layer(scales, linear_map_abs, cot.abs())
        if bias is not None:
            magnitude += float((per_channel_abs * robust_scale(bias, space.floor)).sum())
        bound = terms * eps * magnitude
    measured = Measured(torch.tensor(numeric, dtype=torch.float64), torch.full((opts.probes,), bound, dtype=torch.float64),
                        torch.zeros(opts.probes, dtype=torch.bool))
    comparison = compare(torch.tensor(projected, dtype=torch.float64), measured,
                         torch.empty((opts.probes, 0), dtype=torch.long), opts, dtype)
    where = f"{rec.name or '<root>'}" + (f" call {rec.call}" if rec.call else "")
    method = (f"local: {type(layer).__name__} {where}'s exact linear map at its recorded input (a difference "
              f"quotient of an affine map is exact)")
    results = {}
    slack = float((comparison.tolerance + comparison.abs_error).min())
    for i, item in enumerate(items):
        result = summarize(item, None, comparison, "probes", method, item.target.base.numel())
        result.scope, result.undetected_error = "local", slack / space.min_scale(i)
        results[item.name] = result
    return results


def _channel_sums(t: torch.Tensor, channel: int) -> torch.Tensor:
    """``t`` summed over every dimension but ``channel``: what a bias entry of that channel is multiplied by."""
    return t.movedim(channel, 0).reshape(t.shape[channel], -1).sum(1)


def _slices(n: int, size: int) -> Iterator[slice]:
    return (slice(start, min(start + size, n)) for start in range(0, n, size))


# Default mode compares tensors this small coordinate by coordinate: no more evaluations than the probes.
LOCAL_FULL_NUMEL = 16


def local_plan(shape: torch.Size, opts: CheckOptions) -> tuple[torch.Tensor, str]:
    """Default mode: tiny tensors coordinate by coordinate, others by dense probes; fast mode: probes alone.

    In float64 a dense +-1 probe moves by the full error of any single coordinate, so a handful of probes sees
    every coordinate at once; comparing coordinates one by one would add cost, not sensitivity. Which coordinates
    are wrong is named by the whole-model check that runs when anything fails.
    """
    if opts.mode == "fast":
        return torch.empty(0, dtype=torch.long), "probes"
    if shape.numel() <= min(LOCAL_FULL_NUMEL, opts.max_coordinates):
        return torch.arange(shape.numel()), "full"
    return torch.empty(0, dtype=torch.long), "probes"


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
    merged.unmeasured = sum(t.unmeasured for t in parts)
    merged.method = f"{worst.method} (and {len(parts) - 1} more call(s))"
    notes = list(dict.fromkeys(part for t in parts if t.note for part in t.note.split("; ")))
    merged.note = "; ".join(notes) or None
    bounds = [t.undetected_error for t in parts]
    # The gradient is the sum of every call's contribution: their undetected errors add up.
    merged.undetected_error = None if any(b is None for b in bounds) else sum(b for b in bounds if b is not None)
    return merged


def joint_probes(
    work: WorkingCopy, evaluator: LossEvaluator, parameter_grads: dict[str, torch.Tensor | None], opts: CheckOptions,
) -> TensorCheck | None:
    """Random directions over every trainable parameter together, through the whole model."""
    named = work.trainable_parameters()
    if not named:
        return None
    # Entries with no gradient by design (an Embedding's padding row, under any of its tied names) stay still.
    by_design = {id(work.module.get_parameter(n)): mask for n, (mask, _why) in
                 no_gradient_by_design(work.module).items()}
    items = [Checked(n, "parameter", Target("parameter", n, p.detach()),
                     torch.zeros(p.shape, dtype=torch.float64) if parameter_grads[n] is None
                     else parameter_grads[n].detach().to(torch.float64),  # type: ignore[union-attr]
                     parameter_grads[n] is None, by_design.get(id(p))) for n, p in named]
    gen = torch.Generator().manual_seed(opts.seed + 424243)
    together, _each = probe_together(evaluator, items, opts, work.dtype, gen, name="(all parameters)", method=(
        "joint probes: random directions over every trainable parameter together, through the whole model"))
    return together
