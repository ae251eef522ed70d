"""The analytic side: autograd's gradients of the loss, and what the output-space check needs from the pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ...options import CheckOptions
from ..layers import dense
from ..loss import LossFn
from ..working_copy import CheckError, WorkingCopy, relocated
from .gradcheck import is_linear_in_parameters


@dataclass
class LayerCall:
    """Input, output and autograd's output gradient of one call of a Linear/Conv layer."""

    x: torch.Tensor
    z: torch.Tensor
    grad_z: torch.Tensor | None = None


@dataclass
class AnalyticPass:
    parameter_grads: dict[str, torch.Tensor | None]
    input_grads: dict[int, torch.Tensor | None]
    layer_calls: dict[str, list[LayerCall]] = field(default_factory=dict)


def run_analytic(work: WorkingCopy, loss: LossFn, opts: CheckOptions) -> AnalyticPass:
    """One seeded forward + backward on the working model (on CUDA when asked), recording layer calls."""
    if opts.device != "cuda":
        return _run_analytic(work, work.inputs, loss, opts)
    if not torch.cuda.is_available():
        raise CheckError("device 'cuda' was asked for but no CUDA device is available")
    with relocated(work, "cuda"):
        return _run_analytic(work, tuple(t.to("cuda") for t in work.inputs), loss, opts)


def _run_analytic(work: WorkingCopy, inputs: tuple[torch.Tensor, ...], loss: LossFn, opts: CheckOptions
                  ) -> AnalyticPass:
    module = work.module
    names = dict(work.trainable_parameters())
    params = [p for n, p in module.named_parameters() if n in names]
    args = work.leaf_inputs(inputs)
    calls: dict[str, list[LayerCall]] = {}
    handles = []
    for name, m in module.named_modules():
        if is_linear_in_parameters(m):
            handles.append(m.register_forward_hook(_recorder(name, calls)))
    try:
        work.rng.restore()
        out = module(*args)
        value = loss(out, *args)
        float_args = [args[i] for i in work.float_input_indices]
        grads = _training_gradients(value, params + float_args)
    finally:
        for h in handles:
            h.remove()
        for p in module.parameters():
            p.grad = None
    param_names = [n for n, _ in work.trainable_parameters()]
    return AnalyticPass(
        parameter_grads={n: _cpu(g) for n, g in zip(param_names, grads[: len(params)], strict=True)},
        input_grads={i: _cpu(g) for i, g in zip(work.float_input_indices, grads[len(params):], strict=True)},
        layer_calls={k: [LayerCall(c.x.cpu(), c.z.cpu(), _cpu(c.grad_z)) for c in v] for k, v in calls.items()},
    )


def _training_gradients(value: torch.Tensor, wrt: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """What ``loss.backward()`` leaves in ``.grad``: the gradients an optimizer step would use.

    Not ``torch.autograd.grad``: layers that compute their own weight gradients with an inner ``.backward()``
    (reversible layers) or deliver them through hooks reach ``.grad`` only, and training sees exactly that.
    """
    for t in wrt:
        t.grad = None
    if value.requires_grad:
        value.backward()
    return [None if t.grad is None else dense(t.grad) for t in wrt]



def _recorder(name: str, calls: dict[str, list[LayerCall]]) -> Callable[..., None]:
    def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        call = LayerCall(x=args[0].detach().clone(), z=out.detach().clone())
        calls.setdefault(name, []).append(call)
        if out.requires_grad:
            def keep(g: torch.Tensor) -> None:
                call.grad_z = g.detach().clone()
            out.register_hook(keep)
    return hook


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to("cpu")
