"""Checking Linear/Conv parameters through finite differences of the layer's output.

For ``z = x W^T + b`` a perturbation of ``W[i, j]`` moves ``z`` by exactly ``h * x[:, j]`` in column ``i``, so
the numeric gradient of every weight follows from the numeric gradient of ``z`` by the layer's own linear map.
``z`` usually has far fewer entries than ``W`` (batch x out versus in x out), and perturbing ``z`` leaves the
whole prefix of the network unbatched, which is what makes ``full`` mode fast on MLPs and CNNs. Every weight
coordinate still gets its own numeric value and its own error bound.
"""

from __future__ import annotations

import torch
from torch import nn

from ..options import CheckOptions
from ..report import TensorCheck
from .analytic import AnalyticPass
from .directions import measure_coordinates
from .evaluator import LossEvaluator, Target
from .finite_difference import relative_floor
from .gradcheck import Checked, Comparison, parameter_space_from_output, summarize
from .working_copy import WorkingCopy

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
        param_numel = sum(p.numel() for _, p in own)
        if call.z.numel() >= param_numel or (opts.mode != "full" and call.z.numel() > opts.max_coordinates):
            continue
        if not _gradients_flow_only_through_layer(module, call, own, analytic):
            notes.append(f"{name}: its parameters are also used outside the layer; checked by direct perturbation")
            continue
        results.update(_check_layer(name, module, call, own, analytic, evaluator, opts, work.dtype))
    return results, notes


def _check_layer(name, module, call, own, analytic, evaluator, opts, dtype):  # type: ignore[no-untyped-def]
    target = Target("output", name, call.z, module=module)
    flat = torch.arange(call.z.numel())
    measured = measure_coordinates(evaluator, target, flat, dtype)
    numeric_z = measured.numeric.reshape(call.z.shape).to(call.z.dtype)
    error_z = torch.where(measured.kink, torch.full_like(measured.error, KINK_ERROR), measured.error)
    error_z = error_z.reshape(call.z.shape).to(call.z.dtype)
    has_bias = len(own) == 2
    numeric, bound = parameter_space_from_output(module, call.x, numeric_z, error_z, has_bias)
    out: dict[str, TensorCheck] = {}
    method = (f"output-space central differences ({call.z.numel()} entries of {name or 'the root'}'s output) "
              f"through the exact linear map of {type(module).__name__}")
    for (pname, p), num, err in zip(own, numeric, bound, strict=True):
        grad = analytic.parameter_grads[pname]
        a = (torch.zeros(p.shape, dtype=torch.float64) if grad is None else grad.to(torch.float64)).reshape(-1)
        num64, err64 = num.to(torch.float64).reshape(-1), err.to(torch.float64).reshape(-1)
        scale = torch.maximum(a.abs(), num64.abs())
        kink = err64 >= KINK_ERROR / 10
        tol = opts.safety_factor * err64 + relative_floor(dtype) * scale
        index = torch.stack(torch.unravel_index(torch.arange(p.numel()), p.shape), dim=1)
        comp = Comparison(index, a, num64, tol, kink)
        item = Checked(pname, "parameter", Target("parameter", pname, p.detach()), a.reshape(p.shape), grad is None)
        out[pname] = summarize(item, comp, None, "full", method, p.numel())
    return out


def _gradients_flow_only_through_layer(module: nn.Module, call, own, analytic: AnalyticPass) -> bool:  # type: ignore[no-untyped-def]
    """Autograd's parameter gradients must equal the layer's own pullback of autograd's output gradient.

    If they differ, the weights are used somewhere else too (read directly in a parent's forward), and the output
    of this layer does not carry all of their influence on the loss.
    """
    has_bias = len(own) == 2
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
