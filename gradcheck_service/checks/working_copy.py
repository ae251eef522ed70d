"""The model that finite differences run on: the user's own module, promoted to float64 in place for the check.

A deep copy is not the model the user runs: code that reaches modules through a closure (``self.mlpf = lambda x:
m.c_proj(m.act(m.c_fc(x)))``), a plain attribute or a hook registered on a parameter keeps pointing at the
original, so the copy computes with tensors the check neither promoted nor perturbs. Instead every parameter of
the user's module gets float64 data (``param.data = ...``, the Parameter object itself stays, with its hooks), every
buffer a float64 copy, and :func:`working_model` puts the original data, gradients, buffers and plain attributes
back when the check ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from ..options import CheckOptions
from .gradients.in_place import PROMOTED_FROM
from .loss import LossFn, RandomProjection, float_leaves
from .model_state import Attributes
from .reference_dtype import KeepFloat64
from .rng import RngState, generators_drawn, seed_all


class CheckError(ValueError):
    """The model or inputs cannot be checked (bad arguments, a forward that raises, no float output)."""


@dataclass
class WorkingCopy:
    """The user's module as the check runs it (promoted in place; see the module docstring), and its inputs."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    dtype: torch.dtype  # lowest floating precision the forward computes in: sets the finite-difference error model
    promoted: bool
    float_input_indices: list[int]
    rng: RngState  # the seeded state of the generators the forward draws from: restored before every pass
    notes: list[str] = field(default_factory=list)
    keep_float64: KeepFloat64 | None = None  # set when promoted: casts below float64 are kept in float64

    def reference(self) -> AbstractContextManager[object]:
        """The context every evaluation of the reference runs in (float64 kept through the model's casts)."""
        return self.keep_float64 if self.keep_float64 is not None else nullcontext()

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    def leaf_inputs(self, inputs: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, ...]:
        """Fresh leaves of the inputs for one pass: the checked float inputs require grad, the others as given."""
        return tuple(t.detach().clone().requires_grad_(True) if i in self.float_input_indices else t
                     for i, t in enumerate(self.inputs if inputs is None else inputs))


class ModelState:
    """Everything of a module the check may change, taken before and put back after: tensors and attributes.

    Parameters keep their identity (only ``.data`` is swapped), buffers and plain attributes get their original
    objects back, so a lazily built cache (an int saying "filled" beside a buffer) cannot be left half restored.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        seen: set[int] = set()
        self.parameters: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor | None]] = []
        for p in model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                self.parameters.append((p, p.data, p.grad))
        self.saved = Attributes(model)

    def place(self, device: str | torch.device, dtype: torch.dtype | None) -> None:
        """Give every parameter and buffer a fresh copy of its original data on ``device`` (floats in ``dtype``)."""
        with torch.no_grad():
            for p, data, _grad in self.parameters:
                p.grad = None
                p.data = _moved(data, device, dtype)
            for m, buffers in zip(self.saved.modules, self.saved.buffers, strict=True):
                for name, value in buffers.items():
                    m._buffers[name] = None if value is None else _moved(value, device, dtype)

    def restore(self) -> None:
        with torch.no_grad():
            for p, data, grad in self.parameters:
                p.data = data
                p.grad = grad
        self.saved.restore()


def _moved(t: torch.Tensor, device: str | torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    floating = dtype is not None and t.is_floating_point()
    return t.detach().to(device=device, dtype=dtype if floating else None, copy=True)


@contextmanager
def working_model(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], loss: LossFn, opts: CheckOptions
) -> Iterator[WorkingCopy]:
    """The user's module on the CPU in float64 (its own dtype when float64 does not run) for the ``with`` block."""
    state = ModelState(model)
    promoted_from = PROMOTED_FROM.set(None)
    try:
        work = _prepare(model, state, inputs, loss, opts)
        # Every working parameter is an exact copy of the model's own tensor (promoted): perturbed in place, it
        # is put back from there (see in_place).
        PROMOTED_FROM.set({p.data.data_ptr(): data for p, data, _grad in state.parameters})
        yield work
    finally:
        PROMOTED_FROM.reset(promoted_from)
        state.restore()


def _prepare(
    model: nn.Module, state: ModelState, inputs: tuple[torch.Tensor, ...], loss: LossFn, opts: CheckOptions
) -> WorkingCopy:
    notes: list[str] = []
    keep: KeepFloat64 | None = KeepFloat64()
    try:
        state.place("cpu", torch.float64)
        work_inputs = tuple(_promote(t) for t in inputs)
        assert keep is not None
        with keep:
            dtype, rng, inputs_grad = _trial_as_the_model_allows(model, work_inputs, loss, opts.seed, notes)
        promoted = True
        kept = keep.describe()
        if kept:
            notes.append(kept)
    except CheckError:
        raise
    except Exception as exc:  # a model hard-wired to its dtype (custom kernels, explicit casts)
        notes.append(
            f"the model could not run in float64 ({type(exc).__name__}: {_first_line(exc)}); checked in its own "
            "dtype, with tolerances derived from that dtype's precision"
        )
        state.restore()
        state.place("cpu", None)
        work_inputs = tuple(t.detach().to("cpu").clone() for t in inputs)
        try:
            dtype, rng, inputs_grad = _trial_as_the_model_allows(model, work_inputs, loss, opts.seed, notes)
        except Exception as exc2:
            raise CheckError(f"the model's forward/backward raised {type(exc2).__name__}: {_first_line(exc2)}") from exc2
        promoted, keep = False, None
    if promoted and dtype != torch.float64:
        notes.append(f"the forward computes in {str(dtype).replace('torch.', '')} internally despite float64 "
                     "promotion; tolerances use that precision")
    _freeze_running_stats(model)
    _hold_power_iterations(model, notes)
    float_idx = [i for i, t in enumerate(work_inputs) if t.is_floating_point()] if inputs_grad else []
    return WorkingCopy(model, work_inputs, dtype, promoted, float_idx, rng, notes, keep)


@contextmanager
def relocated(work: WorkingCopy, device: str) -> Iterator[None]:
    """The working model's tensors moved to ``device`` for the ``with`` block (same objects, data copied back)."""
    state = ModelState(work.module)
    state.place(device, None)
    try:
        yield
    finally:
        state.restore()


def _promote(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to("cpu")
    return t.to(torch.float64) if t.is_floating_point() else t.clone()


# What autograd says when a forward sets requires_grad on a tensor derived from an input (wav2vec2's feature encoder
# does ``hidden_states.requires_grad = True`` on a view of its input): only a leaf's flag can be changed.
_SETS_REQUIRES_GRAD = "you can only change requires_grad flags of leaf variables"


def _trial_as_the_model_allows(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], loss: LossFn, seed: int, notes: list[str]
) -> tuple[torch.dtype, RngState, bool]:
    """:func:`_trial` with float inputs requiring grad, or, for a forward that sets that flag itself, without.

    Returns also whether the float inputs can require grad (and so be checked).
    """
    try:
        return (*_trial(module, inputs, loss, seed, notes), True)
    except RuntimeError as exc:
        if _SETS_REQUIRES_GRAD not in str(exc):
            raise
    notes.append("the forward sets requires_grad on a tensor computed from its float input itself, as in training, "
                 "so the inputs are given as plain tensors and their gradients are not checked (parameters are)")
    return (*_trial(module, inputs, loss, seed, notes, inputs_grad=False), False)


def _trial(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], loss: LossFn, seed: int, notes: list[str] | None = None,
    inputs_grad: bool = True,
) -> tuple[torch.dtype, RngState]:
    """Run forward + backward once; return the lowest float precision seen in any module output or the loss, and
    the seeded state of the generators the pass drew from (what every later pass restores).

    The state this first forward leaves (a cache it builds lazily, a counter) stays: it is the state the analytic
    pass and every evaluation then start from, as the second step of training would.
    """
    seen: set[torch.dtype] = set()
    seed_all(seed)
    python, numpy = generators_drawn(lambda: _forward_backward(module, inputs, loss, notes, seen, inputs_grad))
    return max(seen, key=lambda d: torch.finfo(d).eps) if seen else torch.float64, RngState.seeded(seed, python, numpy)


def _forward_backward(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], loss: LossFn, notes: list[str] | None, seen: set[torch.dtype],
    inputs_grad: bool,
) -> None:

    def record(_m: nn.Module, _i: object, out: object) -> None:
        seen.update(t.real.dtype if t.is_complex() else t.dtype for t in float_leaves(out))  # complex128: float64

    handles = [m.register_forward_hook(record) for m in module.modules()]
    try:
        args = tuple(t.detach().requires_grad_(inputs_grad) if t.is_floating_point() else t for t in inputs)
        out = module(*args)
        if not any(True for _ in float_leaves(out)):
            raise CheckError("the model's output has no floating-point tensor to differentiate")
        if isinstance(loss, RandomProjection) and loss.differentiable is None:
            skipped = loss.restrict_to_differentiable(out)
            if skipped and notes is not None:
                notes.append(f"float output(s) {skipped} do not require grad (the forward marks them "
                             "non-differentiable); the default loss leaves them out")
        value = loss(out, *args)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckError(f"loss_fn must return a scalar tensor, got {shape}")
        seen.add(value.dtype)
        if value.requires_grad:
            value.backward()  # as training does: reentrant checkpointing refuses torch.autograd.grad
    finally:
        for h in handles:
            h.remove()
        for p in module.parameters():
            p.grad = None


def _freeze_running_stats(module: nn.Module) -> None:
    """BatchNorm in train mode normalises with batch statistics; stop it updating running stats on the copy.

    The output is unchanged (train mode never reads running stats), and every evaluation then sees identical state.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            m.track_running_stats = False


def _hold_power_iterations(module: nn.Module, notes: list[str]) -> None:
    """Spectral norm in train mode: hold its power-iteration vectors where the first forward left them.

    Each train-mode forward moves the vectors one iteration (without autograd) and divides the weight by
    ``u . W v``; PyTorch's backward treats ``u`` and ``v`` as constants, so the gradient training uses is that of
    the forward with the vectors held. Finite differences of a forward that iterates again at every evaluation
    would also differentiate the iteration (and never replay the same state). Held, the function compared is the
    one whose gradient training takes, at the vectors the recorded step uses.
    """
    from torch.nn.utils.parametrizations import _SpectralNorm
    from torch.nn.utils.spectral_norm import SpectralNorm

    held = []
    for name, m in module.named_modules():
        if isinstance(m, _SpectralNorm) and m.training:
            m.training = False
            held.append(name.split(".parametrizations.")[0])
        hooks = [h for h in m._forward_pre_hooks.values() if isinstance(h, SpectralNorm)]
        if hooks and m.training:
            m.training = False  # the hook iterates when its module trains; the module's own code is unchanged
            held.append(name)
    if held:
        notes.append(f"spectral norm of {', '.join(n or '(root)' for n in held)}: the power-iteration vectors are "
                     "held where the first forward left them, as PyTorch's backward treats them (constants); the "
                     "iteration itself is not differentiated")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
