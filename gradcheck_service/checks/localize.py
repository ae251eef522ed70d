"""Localization: name the smallest modules whose own backward disagrees with their own forward.

Every module call of one forward pass is recorded (its inputs, the RNG state it started with, and the gradient
that reached its outputs in the backward pass). Each call is then checked in isolation: the scalar is the
recorded output gradient dotted with the module's output, so the check asks exactly "is this module's
vector-Jacobian product right at the point the model used it?". A wrong activation derivative at depth k fails
that activation's own check while the Linear layers before it pass theirs, so the blame lands on the activation,
not on the earlier layers whose gradients it corrupts. A failing module is blamed only when none of its
submodules fails (the smallest failing modules); the root is blamed when the bug is in its own forward code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..options import CheckOptions
from ..report import Localization, ModuleCheck
from .analytic import AnalyticPass
from .evaluator import LossEvaluator, Target
from .gradcheck import Checked, check_tensor
from .loss import LossFn, float_leaves
from .working_copy import WorkingCopy


@dataclass
class ModuleCall:
    name: str
    module: nn.Module
    call: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rng_state: torch.Tensor
    cotangents: dict[int, torch.Tensor] = field(default_factory=dict)  # output leaf position -> dL/d(leaf)


class _CallAt(nn.Module):
    """One recorded call of a module, as a function of its float tensor arguments."""

    def __init__(self, inner: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], positions: list[int]):
        super().__init__()
        self.inner = inner
        self.args, self.kwargs, self.positions = args, kwargs, positions

    def forward(self, *float_args: torch.Tensor) -> Any:
        full = list(self.args)
        for pos, t in zip(self.positions, float_args, strict=True):
            full[pos] = t.clone()  # a clone lets in-place modules (ReLU(inplace=True)) run on a leaf
        return self.inner(*full, **self.kwargs)


class _Projection:
    """Loss of an isolated module call: recorded output gradients dotted with its outputs."""

    def __init__(self, cotangents: dict[int, torch.Tensor]) -> None:
        self.cotangents = cotangents

    def __call__(self, output: Any, *_inputs: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for pos, leaf in enumerate(float_leaves(output)):
            cot = self.cotangents.get(pos)
            if cot is not None:
                term = (leaf * cot).sum()
                total = term if total is None else total + term
        assert total is not None
        return total


def record_calls(work: WorkingCopy, loss: LossFn, seed: int) -> list[ModuleCall]:
    calls: list[ModuleCall] = []
    counts: dict[str, int] = {}
    stack: dict[int, list[ModuleCall]] = {}
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple, kwargs: dict) -> None:
            n = counts.get(name, 0)
            counts[name] = n + 1
            cloned = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)
            rec = ModuleCall(name, m, n, cloned, dict(kwargs), torch.get_rng_state())
            stack.setdefault(id(m), []).append(rec)
            calls.append(rec)
        return hook

    def post(m: nn.Module, _args: tuple, _kwargs: dict, out: Any) -> None:
        rec = stack[id(m)].pop()
        for pos, leaf in enumerate(float_leaves(out)):
            if leaf.requires_grad:
                leaf.register_hook(lambda g, pos=pos, rec=rec: rec.cotangents.__setitem__(pos, g.detach().clone()))

    for name, m in work.module.named_modules():
        handles.append(m.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        torch.manual_seed(seed)
        args = tuple(t.detach().requires_grad_(True) if t.is_floating_point() else t for t in work.inputs)
        value = loss(work.module(*args), *args)
        wrt = [p for p in work.module.parameters() if p.requires_grad] + [a for a in args if a.requires_grad]
        torch.autograd.grad(value, wrt, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return calls


def check_call(rec: ModuleCall, opts: CheckOptions, dtype: torch.dtype) -> ModuleCheck | None:
    """Probe one module call's VJP w.r.t. its float inputs and its parameters."""
    if not rec.cotangents or all(float(c.abs().max()) == 0 for c in rec.cotangents.values()):
        return None  # nothing flowed back through this call: it cannot corrupt any gradient
    positions = [i for i, a in enumerate(rec.args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    wrapper = _CallAt(rec.module, rec.args, rec.kwargs, positions)
    float_args = tuple(rec.args[i] for i in positions)
    projection = _Projection(rec.cotangents)
    params = [(n, p) for n, p in wrapper.named_parameters() if p.requires_grad]
    if not params and not float_args:
        return None
    torch.set_rng_state(rec.rng_state)
    leaves = tuple(a.detach().requires_grad_(True) for a in float_args)
    value = projection(wrapper(*leaves))
    grads = torch.autograd.grad(value, [p for _, p in params] + list(leaves), allow_unused=True)
    evaluator = LossEvaluator(wrapper, float_args, projection, opts.seed, chunk_size=opts.chunk_size,
                              rng_state=rec.rng_state)
    probe_opts = opts.model_copy(update={"mode": "fast", "probes": 2})
    gen = torch.Generator().manual_seed(opts.seed + 104729 + rec.call)
    failures, worst_abs, worst_rel, probes = [], 0.0, 0.0, 0
    items = [
        Checked(n.removeprefix("inner."), "parameter", Target("parameter", n, p.detach()), _f64(g, p), g is None)
        for (n, p), g in zip(params, grads[: len(params)], strict=True)
    ] + [
        Checked(f"input[{pos}]", "input", Target("input", f"input[{i}]", a, input_index=i), _f64(g, a), g is None)
        for i, (pos, a, g) in enumerate(zip(positions, float_args, grads[len(params):], strict=True))
    ]
    for item in items:
        result = check_tensor(evaluator, item, probe_opts, dtype, gen)
        probes += result.probes
        worst_abs, worst_rel = max(worst_abs, result.max_abs_error), max(worst_rel, result.max_rel_error)
        if not result.passed:
            failures.append(f"gradient w.r.t. {item.name} (rel err {result.max_rel_error:.2e})")
    return ModuleCheck(
        module=rec.name, type=type(rec.module).__name__, call=rec.call, passed=not failures,
        max_abs_error=worst_abs, max_rel_error=worst_rel, probes=probes, blamed=False,
        detail="; ".join(failures) or None, defined_in=_defined_in(rec.module),
    )


def _defined_in(module: torch.nn.Module) -> str | None:
    """Where the module's class comes from, so a failure names the repository file to open; None for torch's."""
    name = type(module).__module__
    return None if name == "torch" or name.startswith("torch.") else name


def _f64(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(like.shape, dtype=torch.float64) if grad is None else grad.detach().to(torch.float64)


def localize(work: WorkingCopy, loss: LossFn, opts: CheckOptions, analytic: AnalyticPass) -> Localization:
    with torch.random.fork_rng(devices=[]):
        calls = record_calls(work, loss, opts.seed)
        results = [r for r in (check_call(c, opts, work.dtype) for c in calls) if r is not None]
    failing = [r for r in results if not r.passed]
    for r in failing:
        prefix = f"{r.module}." if r.module else ""
        r.blamed = not any(o is not r and o.module.startswith(prefix) and o.module != r.module for o in failing)
    faulty = list(dict.fromkeys(r.module for r in failing if r.blamed))
    note = None
    if not failing:
        note = ("every module's own backward matches its forward at the recorded point; the error arises between "
                "modules (e.g. tensors modified in place or parameters read outside their module)")
    return Localization(performed=True, faulty_modules=faulty, modules=results, note=note)
