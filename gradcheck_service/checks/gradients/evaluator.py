"""Evaluate the loss of a model under many perturbations, batched when possible.

A perturbation is added to one *target*: a parameter, a float input, or the output of one module call (the last
lets a check perturb ``z = x W^T + b`` directly, see :mod:`gradcheck_service.checks.gradients.gradcheck`). Perturbations are
evaluated in chunks with ``torch.func.vmap``: only the part of the forward that depends on the target is batched,
so the unperturbed prefix is computed once per chunk, not once per perturbation. Every chunk starts from the same
seed, so dropout draws the same mask in every evaluation. A model that cannot run under vmap (in-place updates of
state, unsupported ops) or that computes something different under vmap is evaluated one perturbation at a time,
which is slower but exact; the report says which evaluator ran.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..loss import LossFn, RandomProjection, float_leaves
from ..rng import RngState
from .in_place import Direction, Space, robust_scale

TargetKind = Literal["parameter", "input", "output", "parameters"]
# Random directions used to measure the loss's rounding noise per target (4 evaluations each).
NOISE_DIRECTIONS = 3
# Targets larger than this are evaluated one perturbation at a time: under vmap every delta in a chunk becomes a
# full copy of the tensor (an LM head of 38M float64 weights is 309 MB a copy).
SEQUENTIAL_TARGET_BYTES = 64 * 2**20
# What batched evaluations may hold at once (perturbed copies and their activations) unless the check is given a
# memory budget of its own.
DEFAULT_BATCH_BYTES = 512 * 2**20
# Up to this many evaluations at once (a tensor's probes) run one by one: no vmap to set up or verify, and no
# batching rule to need (cross-entropy's under vmap imports sympy on first use, 0.4 s in a fresh process).
FEW_EVALUATIONS = 8
# What autograd says when a forward that calls torch.autograd.grad itself runs without grad enabled.
_DIFFERENTIATES = ("does not require grad", "does not have a grad_fn")
# Rounding noise up to this many machine epsilons of a precision (relative to the loss) is that precision's own.
NOISE_EPS_MARGIN = 64.0
# From this many elements on, single coordinates are perturbed in place, one evaluation at a time, instead of as
# dense one-hot deltas (a batch of those is a copy of the whole tensor per evaluation).
IN_PLACE_MIN_NUMEL = 32768


def rounding_noise(
    losses: Callable[[Target, torch.Tensor], torch.Tensor], target: Target, seed: int,
    loss_along: Callable[[Target, Direction, float], float] | None = None,
) -> float:
    """Standard deviation of the loss's rounding noise when ``target`` is perturbed, measured.

    Along a few random directions ``d`` scaled far below a finite-difference step, the combination
    ``f(x+2d) - f(x-2d) - 2 (f(x+d) - f(x-d))`` cancels the linear term exactly and leaves the cubic one
    negligible, so what remains is rounding noise of variance ``10 sigma^2``. It sets the roundoff part of every
    tolerance from the model's own arithmetic instead of a worst-case bound, so small gradients stay visible
    where the loss is computed accurately and float32 models are not waved through where it is not.
    A target with a :class:`Space` (perturbed in place) is measured along directions drawn part by part.
    """
    base = target.base
    if not base.numel():
        return 0.0
    k = NOISE_DIRECTIONS
    multipliers = (1.0, -1.0, 2.0, -2.0)
    if target.space is not None and loss_along is not None:
        space = target.space
        eps = torch.finfo(space.parts[0].tensor.dtype).eps
        directions = list(space.directions([seed + 15485863 + j for j in range(k)], factor=eps**0.5))
        values = torch.tensor([loss_along(target, d, m) for m in multipliers for d in directions],
                              dtype=torch.float64)
    else:
        gen = torch.Generator().manual_seed(seed + 15485863)
        signs = torch.randint(0, 2, (k, *base.shape), generator=gen).to(base.dtype) * 2 - 1
        d = signs * (torch.finfo(base.dtype).eps ** 0.5 * robust_scale(base).to(base.dtype).reshape(base.shape))
        if d.numel() * d.element_size() * 4 <= SEQUENTIAL_TARGET_BYTES:
            values = losses(target, torch.cat([d, -d, 2 * d, -2 * d])).to(torch.float64)
        else:  # one delta at a time: twelve copies of a large tensor at once would not fit
            values = torch.stack([losses(target, (m * row).unsqueeze(0))[0].to(torch.float64)
                                  for m in multipliers for row in d])
    residual = values[2 * k : 3 * k] - values[3 * k :] - 2 * (values[:k] - values[k : 2 * k])
    return float(residual.pow(2).mean().div(10).sqrt())


def precision_note(evaluator: LossEvaluator) -> str:
    """'; steps for float32 ...' where the evaluator found arithmetic below float64 (else empty)."""
    found = sorted({str(d).removeprefix("torch.") for d in evaluator.reduced_precision.values()})
    if not found:
        return ""
    return (f"; steps sized for {' and '.join(found)}: the loss's rounding shows arithmetic at that precision "
            "inside the float64 model (a kernel computing in its own dtype)")


def _moved(base: torch.Tensor, delta: torch.Tensor, coefficient: float | torch.Tensor) -> torch.Tensor:
    """``base + coefficient * delta`` in one pass (a batched coefficient under vmap included)."""
    if isinstance(coefficient, torch.Tensor):
        return torch.addcmul(base, delta, coefficient)
    return base.add(delta, alpha=coefficient)


def large(t: torch.Tensor) -> bool:
    """Whether a copy of ``t`` per evaluation is more than memory should hold (see SEQUENTIAL_TARGET_BYTES)."""
    return t.numel() * t.element_size() > SEQUENTIAL_TARGET_BYTES


def in_place(target: Target) -> Target:
    """``target`` perturbed in place through a :class:`Space` where it can be (else as it is)."""
    space = Space.of([target.base])
    return target if space is None else dataclasses.replace(target, space=space)


@dataclass(frozen=True)
class Target:
    """Where perturbations go. ``name`` is a parameter name, ``input[i]``, or a module name for outputs."""

    kind: TargetKind
    name: str
    base: torch.Tensor
    input_index: int = -1
    module: nn.Module | None = None
    call: int = 0
    # kind "parameters": base is every listed parameter flattened and concatenated (a joint direction)
    names: tuple[str, ...] = ()
    shapes: tuple[torch.Size, ...] = ()
    # Perturbed in place through this space (directions drawn part by part): base is then only its shape
    space: Space | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.kind, self.name, self.call)


class LossEvaluator:
    """``loss(target + delta)`` for batches of deltas, always under the same seed."""

    def __init__(
        self,
        model: nn.Module,
        inputs: tuple[torch.Tensor, ...],
        loss_fn: LossFn,
        seed: int,
        chunk_size: int = 256,
        memory_budget_bytes: int | None = None,
        rng_state: RngState | None = None,
    ) -> None:
        self.model = model
        self.rng_state = rng_state if rng_state is not None else RngState.seeded(seed)
        self.inputs = inputs
        self.loss_fn = loss_fn
        self.seed = seed
        self.evaluations = 0
        self._batched_ok: dict[tuple[str, str, int], bool] = {}
        self._nested_ok: dict[tuple[str, str, int], bool] = {}
        self._noise: dict[tuple[str, str, int], float] = {}
        self._state = {k: v.detach().clone() for k, v in model.named_buffers()}
        self._output_delta: tuple[nn.Module, int, torch.Tensor] | None = None
        self._calls: dict[int, int] = {}
        self._hooks: list[Any] = []
        self.any_fallback = False
        # share_noise: the first noise measured serves every target (one module's forward rounds one way).
        # floor_noise: take the noise as zero, leaving only the roundoff floor (see check_tensor).
        self.share_noise = False
        self.floor_noise = False
        # Targets whose loss shows rounding noise of a lower precision than float64 (see arithmetic_dtype).
        self.reduced_precision: dict[str, torch.dtype] = {}
        # A forward that differentiates inside itself (forces as -dE/dpositions) runs with grad enabled.
        self.differentiates = False
        self.activation_bytes = self._measure_activation_bytes()
        self.memory_budget_bytes = memory_budget_bytes or DEFAULT_BATCH_BYTES
        self.chunk_size = max(1, min(chunk_size, self.memory_budget_bytes // max(self.activation_bytes, 1)))
        self.base_loss = float(self.loss())
        self.loss_scale = max(abs(self.base_loss), self._absolute_loss_scale())

    # -- plain evaluation -------------------------------------------------------------------------------------------

    def _measure_activation_bytes(self) -> int:
        total = 0

        def count(_m: nn.Module, _i: Any, out: Any) -> None:
            nonlocal total
            total += sum(t.numel() * t.element_size() for t in float_leaves(out))

        handles = [m.register_forward_hook(count) for m in self.model.modules()]
        try:
            try:
                with torch.no_grad():
                    self._forward(self.inputs)
            except RuntimeError as exc:
                if not any(marker in str(exc) for marker in _DIFFERENTIATES):
                    raise
                self.differentiates = True
                total = 0
                with self._grad_mode():
                    self._forward(self.inputs)
        finally:
            for h in handles:
                h.remove()
            self._restore_state()
        return total

    def _grad_mode(self) -> Any:
        """No autograd for evaluations, unless the forward itself differentiates (see ``differentiates``)."""
        return torch.enable_grad() if self.differentiates else torch.no_grad()

    def _absolute_loss_scale(self) -> float:
        """Sum of |terms| of a random-projection loss: the magnitude its roundoff scales with."""
        if not isinstance(self.loss_fn, RandomProjection):
            return 0.0
        with self._grad_mode(), self._seeded():
            out = self.model(*self.inputs)
            total = sum(
                float((leaf * self.loss_fn.weight(i, leaf)).abs().sum().detach()) for i, leaf in enumerate(float_leaves(out))
            )
        self._restore_state()
        return total

    def _reseed(self) -> None:
        self.rng_state.restore()

    @contextmanager
    def _seeded(self) -> Iterator[None]:
        self._reseed()
        yield

    def _restore_state(self) -> None:
        """Put buffers back: a forward in train mode may update state (running stats, counters)."""
        with torch.no_grad():
            for name, value in self.model.named_buffers():
                saved = self._state.get(name)
                if saved is not None and value.shape == saved.shape and not value.equal(saved):
                    value.copy_(saved)

    def _forward(self, inputs: Sequence[torch.Tensor], overrides: dict[str, torch.Tensor] | None = None) -> Any:
        self._reseed()
        self._calls.clear()
        if overrides:
            return functional_call(self.model, overrides, tuple(inputs), strict=False)
        return self.model(*inputs)

    def noise(self, target: Target) -> float:
        """Measured rounding noise of the loss when ``target`` is perturbed (see :func:`rounding_noise`)."""
        if self.floor_noise:
            return 0.0
        if self.share_noise and self._noise:
            return next(iter(self._noise.values()))
        if target.key not in self._noise:
            if target.space is None and target.kind == "parameter" and large(target.base):
                target = in_place(target)
            self._noise[target.key] = rounding_noise(self.losses, target, self.seed, self.loss_along)
        return self._noise[target.key]

    def arithmetic_dtype(self, target: Target, dtype: torch.dtype) -> torch.dtype:
        """The precision the loss is really computed in when ``target`` moves, judged by its measured rounding noise.

        A kernel that computes in float32 whatever its inputs (a fused Triton or C++ kernel, NumPy in float32)
        leaves float32 rounding in a float64 model. Steps sized for float64 then measure that rounding instead of
        the derivative, and the tolerance grows with it until a 50 % error passes; steps sized for the precision
        the noise shows keep the comparison sharp. The screening pass (noise taken as zero) keeps float64 steps:
        it can only pass cleanly, so a noisy kernel goes on to the full measurement, where this decides.
        """
        if dtype != torch.float64 or self.floor_noise:
            return dtype
        relative = self.noise(target) / max(self.loss_scale, 1e-300)
        for candidate in (torch.float64, torch.float32, torch.bfloat16):
            if relative <= NOISE_EPS_MARGIN * torch.finfo(candidate).eps:
                break
        if candidate != torch.float64:
            self.reduced_precision[target.name] = candidate
        return candidate

    def loss(self) -> torch.Tensor:
        with self._grad_mode():
            out = self._forward(self.inputs)
            value = self.loss_fn(out, *self.inputs)
        self._restore_state()
        self.evaluations += 1
        return value.detach()

    # -- perturbed evaluation ---------------------------------------------------------------------------------------

    @contextmanager
    def _output_hook(self, target: Target) -> Iterator[None]:
        assert target.module is not None
        module = target.module

        def add_delta(m: nn.Module, _args: Any, out: Any) -> Any:
            call = self._calls.get(id(m), 0)
            self._calls[id(m)] = call + 1
            pending = self._output_delta
            if pending is not None and pending[0] is m and pending[1] == call:
                return out + pending[2]
            return out

        handle = module.register_forward_hook(add_delta)
        try:
            yield
        finally:
            handle.remove()
            self._output_delta = None

    def loss_along(self, target: Target, direction: torch.Tensor | Direction, coefficient: float) -> float:
        """Loss at ``target.base + coefficient * direction``, one evaluation, no delta tensor materialised."""
        with self._grad_mode(), self._maybe_hook(target):
            value = self._perturbed_loss(target, direction, coefficient)
            self._restore_state()
        self.evaluations += 1
        return float(value.detach())

    def _perturbed_loss(
        self, target: Target, delta: torch.Tensor | Direction, coefficient: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        if isinstance(delta, Direction):
            assert isinstance(coefficient, float)
            with delta.applied(coefficient):
                return self.loss_fn(self._forward(self.inputs), *self.inputs)
        if target.kind == "parameter":
            out = self._forward(self.inputs, {target.name: _moved(target.base, delta, coefficient)})
            return self.loss_fn(out, *self.inputs)
        if target.kind == "parameters":
            moved = _moved(target.base, delta, coefficient)
            overrides, start = {}, 0
            for name, shape in zip(target.names, target.shapes, strict=True):
                n = shape.numel()
                overrides[name] = moved[start : start + n].view(shape)
                start += n
            out = self._forward(self.inputs, overrides)
            return self.loss_fn(out, *self.inputs)
        if target.kind == "input":
            inputs = list(self.inputs)
            inputs[target.input_index] = _moved(target.base, delta, coefficient)
            out = self._forward(inputs)
            return self.loss_fn(out, *inputs)
        assert target.module is not None
        scaled = delta if isinstance(coefficient, float) and coefficient == 1.0 else delta * coefficient
        self._output_delta = (target.module, target.call, scaled)
        out = self._forward(self.inputs)
        return self.loss_fn(out, *self.inputs)

    def losses(self, target: Target, deltas: torch.Tensor) -> torch.Tensor:
        """Loss at ``target.base + deltas[k]`` for every k; returns a 1-D tensor of len(deltas)."""
        with self._grad_mode(), self._maybe_hook(target):
            if target.base.numel() * target.base.element_size() > SEQUENTIAL_TARGET_BYTES:
                return self._sequential(target, deltas)  # a batch would hold one copy of the tensor per delta
            if self._batched_ok.get(target.key) is None:
                self._batched_ok[target.key] = self._batched_matches(target)
                self.any_fallback |= not self._batched_ok[target.key]
            if self._batched_ok[target.key]:
                return self._batched(target, deltas)
            return self._sequential(target, deltas)

    def batches(self, target: Target) -> bool:
        """Whether perturbations of ``target`` can be evaluated in batches under vmap (tried once, then known)."""
        if self._batched_ok.get(target.key) is None:
            with self._grad_mode(), self._maybe_hook(target):
                self._batched_ok[target.key] = self._batched_matches(target)
            self.any_fallback |= not self._batched_ok[target.key]
        return self._batched_ok[target.key]

    def losses_along(self, target: Target, directions: torch.Tensor, coefficients: list[float]) -> torch.Tensor:
        """Loss at ``target.base + c * d`` for every coefficient c and direction d: shape [len(c), len(d)].

        Under vmap over both, each perturbed tensor is written once (``addcmul``) instead of building a delta
        tensor per evaluation first: for a large target that is half the memory traffic of a check.
        """
        s, k = len(coefficients), directions.shape[0]
        if s * k <= FEW_EVALUATIONS and target.kind != "output":
            values = torch.empty((s, k), dtype=torch.float64)
            for i, coefficient in enumerate(coefficients):
                for j in range(k):
                    values[i, j] = self.loss_along(target, directions[j], coefficient)
            return values
        nested = target.kind != "output" and target.base.numel() * target.base.element_size() <= SEQUENTIAL_TARGET_BYTES
        if nested and self._nested_ok.get(target.key) is None:
            self._nested_ok[target.key] = self._nested_matches(target)
        if not nested or not self._nested_ok[target.key]:
            shape = (s, 1, *([1] * (directions.dim() - 1)))
            c = torch.tensor(coefficients, dtype=directions.dtype, device=directions.device).view(shape)
            return self.losses(target, (directions.unsqueeze(0) * c).flatten(0, 1)).view(s, k)
        values = self._nested(target, directions, coefficients)
        self.evaluations += s * k
        return values

    def _nested(self, target: Target, directions: torch.Tensor, coefficients: list[float]) -> torch.Tensor:
        c = torch.tensor(coefficients, dtype=directions.dtype, device=directions.device)
        inner = vmap(lambda ci, d: self._perturbed_loss(target, d, ci), in_dims=(None, 0), randomness="same")
        outer = vmap(inner, in_dims=(0, None), randomness="same")
        step = max(1, self._chunk(target) // len(coefficients))
        parts = []
        with self._grad_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*batching rule.*", category=UserWarning)
            for start in range(0, directions.shape[0], step):
                parts.append(outer(c, directions[start : start + step]))
                self._restore_state()
        return torch.cat(parts, dim=1)

    def _nested_matches(self, target: Target) -> bool:
        """Whether the model runs under two nested vmaps and reproduces the plain loss there (as _batched_matches)."""
        zeros = torch.zeros((2, *target.base.shape), dtype=target.base.dtype, device=target.base.device)
        try:
            values = self._nested(target, zeros, [1.0, -1.0])
        except Exception:  # a batching rule that does not nest: the single vmap over deltas serves
            self._restore_state()
            return False
        tol = 1e-9 * max(self.loss_scale, 1e-30) if target.base.dtype == torch.float64 else 1e-4 * self.loss_scale
        return bool(((values - self.base_loss).abs() <= tol).all())

    def can_perturb_in_place(self, target: Target) -> bool:
        if target.base.numel() < IN_PLACE_MIN_NUMEL or not target.base.is_contiguous():
            return False
        return target.kind == "input" or (target.kind == "parameter" and self._parameter(target) is not None)

    def _parameter(self, target: Target) -> torch.Tensor | None:
        try:
            p = self.model.get_parameter(target.name)
        except AttributeError:
            return None
        return p if p.is_contiguous() and p.data_ptr() == target.base.data_ptr() else None

    def coordinate_losses(self, target: Target, flat: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Loss with ``offsets[k]`` added to the single coordinate ``flat[k]`` of the target, for every k.

        Each evaluation changes one entry of the tensor in place and puts the old value back, so no evaluation
        copies the tensor: what a coordinate costs is one forward, whatever the tensor's size.
        """
        values = torch.empty(offsets.shape[0], dtype=torch.float64)
        inputs = list(self.inputs)
        found = self._parameter(target) if target.kind == "parameter" else target.base.clone()
        assert found is not None
        if target.kind == "input":
            inputs[target.input_index] = found
        view = found.detach().view(-1)
        with torch.no_grad():
            for k in range(offsets.shape[0]):
                i = int(flat[k])
                old = view[i].clone()
                view[i] = old + offsets[k].to(view.dtype)
                try:
                    with self._grad_mode():
                        out = self._forward(inputs)
                        values[k] = float(self.loss_fn(out, *inputs).detach())
                finally:
                    view[i] = old
                    self._restore_state()
        self.evaluations += offsets.shape[0]
        return values

    def _maybe_hook(self, target: Target) -> Any:
        if target.kind == "output":
            return self._output_hook(target)
        return nullcontext()

    def _chunk(self, target: Target) -> int:
        """Perturbations in one batched forward: as many as the memory budget holds, each one a perturbed copy
        of the target (and its delta) plus the forward's activations."""
        each = self.activation_bytes + 2 * target.base.numel() * target.base.element_size()
        return max(1, min(self.chunk_size, self.memory_budget_bytes // max(each, 1)))

    def _batched(self, target: Target, deltas: torch.Tensor) -> torch.Tensor:
        fn: Callable[[torch.Tensor], torch.Tensor] = lambda d: self._perturbed_loss(target, d)  # noqa: E731
        batched = vmap(fn, randomness="same")
        parts = []
        with warnings.catch_warnings():
            # Ops without a batching rule (e.g. CPU flash attention) run in a per-sample loop inside vmap and warn
            # about speed; the result is still exact, and _batched_matches verifies it.
            warnings.filterwarnings("ignore", message=".*batching rule.*", category=UserWarning)
            chunk = self._chunk(target)
            for start in range(0, deltas.shape[0], chunk):
                parts.append(batched(deltas[start : start + chunk]))
                self._restore_state()
        self.evaluations += deltas.shape[0]
        return torch.cat(parts)

    def _sequential(self, target: Target, deltas: torch.Tensor) -> torch.Tensor:
        values = torch.empty(deltas.shape[0], dtype=deltas.dtype)
        for k in range(deltas.shape[0]):
            values[k] = self._perturbed_loss(target, deltas[k]).detach().to("cpu")
            self._restore_state()
        self.evaluations += deltas.shape[0]
        return values

    def _batched_matches(self, target: Target) -> bool:
        """Whether vmap runs this model and reproduces the plain loss exactly enough (same dropout draws)."""
        zeros = torch.zeros((2, *target.base.shape), dtype=target.base.dtype, device=target.base.device)
        try:
            values = self._batched(target, zeros)
        except Exception:  # any op without a batching rule, in-place state updates, data-dependent control flow
            self._restore_state()
            return False
        finally:
            self.evaluations -= 2
        tol = 1e-9 * max(self.loss_scale, 1e-30) if target.base.dtype == torch.float64 else 1e-4 * self.loss_scale
        return bool(((values - self.base_loss).abs() <= tol).all())
