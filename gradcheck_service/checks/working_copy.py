"""The copy of the model that finite differences run on: float64 where possible, never the user's object."""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from ..options import CheckOptions
from .loss import LossFn, RandomProjection, float_leaves
from .reference_dtype import KeepFloat64


class CheckError(ValueError):
    """The model or inputs cannot be checked (bad arguments, a forward that raises, no float output)."""


@dataclass
class WorkingCopy:
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    dtype: torch.dtype  # lowest floating precision the forward computes in: sets the finite-difference error model
    promoted: bool
    float_input_indices: list[int]
    notes: list[str] = field(default_factory=list)
    keep_float64: KeepFloat64 | None = None  # set when promoted: casts below float64 are kept in float64

    def reference(self) -> AbstractContextManager[object]:
        """The context every evaluation of the reference runs in (float64 kept through the model's casts)."""
        return self.keep_float64 if self.keep_float64 is not None else nullcontext()

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]


def make_working_copy(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], loss: LossFn, opts: CheckOptions
) -> WorkingCopy:
    """Deep-copy the model to the CPU in float64; fall back to its own dtype when float64 does not run."""
    notes: list[str] = []
    keep: KeepFloat64 | None = KeepFloat64()
    try:
        promoted_model = _copy(model).to(device="cpu", dtype=torch.float64)
        promoted_inputs = tuple(_promote(t) for t in inputs)
        assert keep is not None
        with keep:
            dtype = _trial(promoted_model, promoted_inputs, loss, opts.seed, notes)
        module, work_inputs, promoted = promoted_model, promoted_inputs, True
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
        module = _copy(model).to("cpu")
        work_inputs = tuple(t.detach().to("cpu").clone() for t in inputs)
        try:
            dtype = _trial(module, work_inputs, loss, opts.seed, notes)
        except Exception as exc2:
            raise CheckError(f"the model's forward/backward raised {type(exc2).__name__}: {_first_line(exc2)}") from exc2
        promoted, keep = False, None
    if promoted and dtype != torch.float64:
        notes.append(f"the forward computes in {str(dtype).replace('torch.', '')} internally despite float64 "
                     "promotion; tolerances use that precision")
    _freeze_running_stats(module)
    float_idx = [i for i, t in enumerate(work_inputs) if t.is_floating_point()]
    return WorkingCopy(module, work_inputs, dtype, promoted, float_idx, notes, keep)


def _copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise CheckError(f"the model cannot be deep-copied ({type(exc).__name__}: {_first_line(exc)})") from exc


def _promote(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to("cpu")
    return t.to(torch.float64) if t.is_floating_point() else t.clone()


def _trial(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], loss: LossFn, seed: int, notes: list[str] | None = None
) -> torch.dtype:
    """Run forward + backward once; return the lowest float precision seen in any module output or the loss."""
    seen: set[torch.dtype] = set()

    def record(_m: nn.Module, _i: object, out: object) -> None:
        seen.update(t.real.dtype if t.is_complex() else t.dtype for t in float_leaves(out))  # complex128: float64

    handles = [m.register_forward_hook(record) for m in module.modules()]
    state = {k: v.detach().clone() for k, v in module.named_buffers()}
    try:
        torch.manual_seed(seed)
        args = tuple(t.detach().requires_grad_(True) if t.is_floating_point() else t for t in inputs)
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
        wrt = [p for p in module.parameters() if p.requires_grad] + [a for a in args if a.requires_grad]
        if value.requires_grad and wrt:
            torch.autograd.grad(value, wrt, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for k, v in module.named_buffers():
                if k in state:
                    v.copy_(state[k])
    return max(seen, key=lambda d: torch.finfo(d).eps) if seen else torch.float64


def _freeze_running_stats(module: nn.Module) -> None:
    """BatchNorm in train mode normalises with batch statistics; stop it updating running stats on the copy.

    The output is unchanged (train mode never reads running stats), and every evaluation then sees identical state.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            m.track_running_stats = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
