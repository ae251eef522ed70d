"""Checking Linear/Conv parameters through finite differences of the layer's output.

For ``z = x W^T + b`` a perturbation of ``W[i, j]`` moves ``z`` by exactly ``h * x[:, j]`` in column ``i``, so
the numeric gradient of every weight follows from the numeric gradient of ``z`` by the layer's own linear map.
``z`` usually has far fewer entries than ``W`` (batch x out versus in x out), and perturbing ``z`` leaves the
whole prefix of the network unbatched, which is what makes ``full`` mode fast on MLPs and CNNs. Every weight
coordinate still gets its own numeric value and its own error bound.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ...options import CheckOptions
from ...report import TensorCheck
from ..working_copy import WorkingCopy
from .analytic import AnalyticPass, LayerCall
from .directions import measure, measure_coordinates, probe_directions
from .evaluator import LossEvaluator, Target
from .finite_difference import tolerance
from .gradcheck import Checked, Comparison, compare, parameter_space_from_output, screened, summarize, unravel

KINK_ERROR = 1e300  # error assigned to output entries at a kink: excludes the weights they feed from the verdict


def check_linear_layers(
    work: WorkingCopy, analytic: AnalyticPass, evaluator: LossEvaluator, opts: CheckOptions, gen: torch.Generator
) -> tuple[dict[str, TensorCheck], list[str]]:
    """Output-space checks for every eligible layer; returns results keyed by parameter name, and notes."""
    results: dict[str, TensorCheck] = {}
    notes: list[str] = []
    if opts.mode == "fast" or opts.device != "cpu":
        return results, notes
    shared = _shared_parameter_ids(work.module)
    trainable = dict(work.trainable_parameters())
    for name, module in work.module.named_modules():
        calls = analytic.layer_calls.get(name)
        if not calls or len(calls) != 1:
            continue
        call = calls[0]
        own = [(f"{name}.{pn}" if name else pn, p) for pn, p in module.named_parameters(recurse=False)]
        if not own or any(n not in trainable or id(p) in shared for n, p in own) or call.grad_z is None:
            continue
        channels = _plan_channels(module, call.z, sum(p.numel() for _, p in own), opts, gen)
        if channels is None:
            continue
        if not _gradients_flow_only_through_layer(module, call, own, analytic):
            notes.append(f"{name}: its parameters are also used outside the layer; checked by direct perturbation")
            continue
        layer = functools.partial(_check_layer, name, module, call, own, analytic, evaluator, opts, work.dtype,
                                  channels, gen)
        results.update({t.name: t for t in screened(evaluator, work.dtype, gen, layer)})
    return results, notes


def _channel_dim(module: nn.Module, z: torch.Tensor) -> int:
    """Dimension of ``z`` indexed by output channel (= row of the weight): last for Linear, 1 for Conv."""
    return z.dim() - 1 if isinstance(module, nn.Linear) else 1


def _plan_channels(
    module: nn.Module, z: torch.Tensor, param_numel: int, opts: CheckOptions, gen: torch.Generator
) -> torch.Tensor | None:
    """Output channels whose weight rows are checked through the output, or None to perturb weights directly.

    Every entry of ``z`` in channel ``i`` depends on weight row ``i`` only, so measuring the output entries of a
    few channels checks those rows completely. ``full`` mode takes every channel when that is cheaper than
    perturbing the weights; ``default`` mode takes as many channels as ``sample_coordinates`` output entries buy.
    """
    if z.numel() >= param_numel:
        return None
    n_channels = z.shape[_channel_dim(module, z)]
    if opts.mode == "full" or z.numel() <= opts.max_coordinates:
        return torch.arange(n_channels)
    per_channel = z.numel() // n_channels
    count = max(1, min(n_channels, opts.sample_coordinates // max(per_channel, 1)))
    chosen = set(torch.randperm(n_channels, generator=gen)[:count].tolist()) | {0, n_channels - 1}
    return torch.tensor(sorted(chosen))


def _check_layer(
    name: str, module: nn.Module, call: LayerCall, own: list[tuple[str, nn.Parameter]], analytic: AnalyticPass,
    evaluator: LossEvaluator, opts: CheckOptions, dtype: torch.dtype, channels: torch.Tensor, gen: torch.Generator,
) -> list[TensorCheck]:
    target = Target("output", name, call.z, module=module)
    dim = _channel_dim(module, call.z)
    n_channels = call.z.shape[dim]
    selected = torch.zeros(n_channels, dtype=torch.bool)
    selected[channels] = True
    shape = [1] * call.z.dim()
    shape[dim] = n_channels
    in_channels = selected.view(shape).expand(call.z.shape).reshape(-1)
    flat = in_channels.nonzero().flatten()
    measured = measure_coordinates(evaluator, target, flat, dtype)
    numeric_z = torch.zeros(call.z.numel(), dtype=call.z.dtype)
    error_z = torch.zeros(call.z.numel(), dtype=call.z.dtype)
    numeric_z[flat] = measured.numeric.to(call.z.dtype)
    error_z[flat] = torch.where(measured.kink, torch.full_like(measured.error, KINK_ERROR), measured.error).to(
        call.z.dtype)
    numeric_z, error_z = numeric_z.reshape(call.z.shape), error_z.reshape(call.z.shape)
    has_bias = len(own) == 2
    numeric, bound = parameter_space_from_output(module, call.x, numeric_z, error_z, has_bias)
    complete = bool(selected.all())
    out: list[TensorCheck] = []
    method = (f"output-space central differences ({flat.numel()} entries of {name or 'the root'}'s output"
              f"{'' if complete else f', {int(selected.sum())} of {n_channels} channels'}) through the exact "
              f"linear map of {type(module).__name__}")
    for (pname, p), num, err in zip(own, numeric, bound, strict=True):
        grad = analytic.parameter_grads[pname]
        a = (torch.zeros(p.shape, dtype=torch.float64) if grad is None else grad.to(torch.float64))
        rows = channels  # weight and bias are indexed by output channel along dim 0
        a_rows, num_rows = a[rows].reshape(-1), num.to(torch.float64)[rows].reshape(-1)
        err_rows = err.to(torch.float64)[rows].reshape(-1)
        kink = err_rows >= KINK_ERROR / 10
        tol = tolerance(a_rows, num_rows, err_rows, opts.safety_factor, dtype)
        row_index = unravel(torch.arange(a_rows.numel()), a[rows].shape)
        row_index[:, 0] = rows[row_index[:, 0]]
        comp = Comparison(row_index, a_rows, num_rows, tol, kink)
        item = Checked(pname, "parameter", Target("parameter", pname, p.detach()), a, grad is None)
        probes = None
        if not complete:
            probes = _probes(evaluator, item, opts, dtype, gen)
        out.append(summarize(item, comp, probes, "full" if complete else "sampled", method, p.numel()))
    return out


def _probes(evaluator: LossEvaluator, item: Checked, opts: CheckOptions, dtype: torch.dtype,
            gen: torch.Generator) -> Comparison:
    """Whole-tensor random-direction probes (default mode covers the rows not sampled this way)."""
    dirs = probe_directions(item.target.base, opts.probes, gen)
    measured = measure(evaluator, item.target, dirs, dtype)
    analytic = dirs.to(torch.float64).reshape(opts.probes, -1) @ item.analytic.reshape(-1)
    return compare(analytic, measured, torch.empty((opts.probes, 0), dtype=torch.long), opts, dtype)


def _gradients_flow_only_through_layer(
    module: nn.Module, call: LayerCall, own: list[tuple[str, nn.Parameter]], analytic: AnalyticPass
) -> bool:
    """Autograd's parameter gradients must equal the layer's own pullback of autograd's output gradient.

    If they differ, the weights are used somewhere else too (read directly in a parent's forward), and the output
    of this layer does not carry all of their influence on the loss.
    """
    has_bias = len(own) == 2
    assert call.grad_z is not None
    pulled, _ = parameter_space_from_output(module, call.x, call.grad_z, call.grad_z.abs(), has_bias)
    for (pname, _p), via_layer in zip(own, pulled, strict=True):
        grad = analytic.parameter_grads[pname]
        if grad is None:
            return False
        scale = float(via_layer.abs().max()) + float(grad.abs().max()) + 1e-300
        if float((grad - via_layer).abs().max()) > 1e-6 * scale:
            return False
    return True


def _shared_parameter_ids(module: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}
