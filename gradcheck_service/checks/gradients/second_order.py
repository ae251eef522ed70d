"""order=2: check the gradient of the gradient (Hessian-vector products), for users of gradient penalties.

The scalar is ``s(theta) = <w, dL/dtheta>`` for a fixed random ``w``; its gradient is ``H w``, which autograd
computes by double backward. Finite differences of ``s`` (each evaluation a forward and a first-order backward)
along random probes of every parameter give the reference, with the same error model as first order.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from ...options import CheckOptions
from ...report import TensorCheck
from ..loss import LossFn
from ..working_copy import WorkingCopy
from .directions import measure, probe_directions
from .evaluator import Target, rounding_noise
from .gradcheck import Checked, compare, summarize


class GradientDotEvaluator:
    """Evaluates ``s = <w, grad L>`` with one parameter perturbed, one perturbation at a time."""

    def __init__(self, work: WorkingCopy, loss: LossFn, seed: int) -> None:
        self.work, self.loss, self.seed = work, loss, seed
        self.params = dict(work.trainable_parameters())
        gen = torch.Generator().manual_seed(seed + 31337)
        self.w = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in self.params.items()}
        self.evaluations = 0
        self.rng_state = work.rng
        self.floor_noise = False  # measured in full: no screening pass here
        self.reduced_precision: dict[str, torch.dtype] = {}
        value, grads = self._s({}, create_graph=False)
        self.base_loss = float(value)
        self.loss_scale = float(sum((g.abs() * self.w[n].abs()).sum() for n, g in grads.items())) + abs(float(value))

    def arithmetic_dtype(self, _target: Target, dtype: torch.dtype) -> torch.dtype:
        """The comparison's own dtype: the gradient's dot product is measured in the precision it is computed in."""
        return dtype

    def _s(self, overrides: dict[str, torch.Tensor], create_graph: bool) -> tuple[torch.Tensor, dict]:
        params = {n: overrides.get(n, p).detach().requires_grad_(True) for n, p in self.params.items()}
        self.rng_state.restore()
        out = functional_call(self.work.module, params, self.work.inputs, strict=False)
        value = self.loss(out, *self.work.inputs)
        grads = torch.autograd.grad(value, list(params.values()), allow_unused=True, create_graph=create_graph)
        named = {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params.items(), grads, strict=True)}
        s = sum((g * self.w[n]).sum() for n, g in named.items())
        if create_graph:
            return s, params  # type: ignore[return-value]
        return torch.as_tensor(s).detach(), named

    def hessian_vector(self) -> dict[str, torch.Tensor]:
        s, params = self._s({}, create_graph=True)
        if not isinstance(s, torch.Tensor) or not s.requires_grad:
            return {n: torch.zeros_like(p) for n, p in self.params.items()}
        hv = torch.autograd.grad(s, list(params.values()), allow_unused=True)
        return {n: (torch.zeros_like(p) if g is None else g.detach()) for (n, p), g in zip(params.items(), hv, strict=True)}

    def noise(self, target: Target) -> float:
        return rounding_noise(self.losses, target, self.seed)

    def losses(self, target: Target, deltas: torch.Tensor) -> torch.Tensor:
        values = torch.empty(deltas.shape[0], dtype=torch.float64)
        for k in range(deltas.shape[0]):
            values[k] = float(self._s({target.name: target.base + deltas[k]}, create_graph=False)[0])
        self.evaluations += deltas.shape[0]
        return values

    def losses_along(self, target: Target, directions: torch.Tensor, coefficients: list[float]) -> torch.Tensor:
        """``<w, grad L>`` at ``target.base + c * d``: shape [len(coefficients), len(directions)]."""
        deltas = torch.stack([c * d for c in coefficients for d in directions])
        return self.losses(target, deltas).view(len(coefficients), directions.shape[0])


def check_second_order(work: WorkingCopy, loss: LossFn, opts: CheckOptions) -> list[TensorCheck]:
    evaluator = GradientDotEvaluator(work, loss, opts.seed)
    hv = evaluator.hessian_vector()
    gen = torch.Generator().manual_seed(opts.seed + 65537)
    results = []
    for name, p in evaluator.params.items():
        target = Target("parameter", name, p.detach())
        dirs = probe_directions(p.detach(), opts.probes, gen)
        measured = measure(evaluator, target, dirs, work.dtype)  # type: ignore[arg-type]
        analytic = dirs.to(torch.float64).reshape(opts.probes, -1) @ hv[name].to(torch.float64).reshape(-1)
        comp = compare(analytic, measured, torch.empty((opts.probes, 0), dtype=torch.long), opts, work.dtype)
        item = Checked(name, "parameter", target, hv[name].to(torch.float64), unused=False)
        results.append(summarize(item, None, comp, "probes", "Hessian-vector product vs central differences of "
                                 "<w, grad L> along random probes", p.numel()))
    return results
