"""Measuring one training step: saved-for-backward storages, allocation peak, and forward/backward times.

Two independent instruments:

* **Saved tensors** (``torch.autograd.graph.saved_tensors_hooks``): every tensor autograd saves for backward passes
  through the pack hook; distinct storages are counted once (views share a storage) and parameter and buffer
  storages are excluded. Each one is attributed to the innermost module running at that moment; what is saved while
  no module of the model runs belongs to the loss and is counted apart from the model's activations. References are
  held only until the forward ends, so a storage address cannot be reused by another tensor while we count, and
  backward frees memory as it normally would.
* **Allocation peak**: on CUDA the caching allocator's own peak (``torch.cuda.max_memory_allocated``). On CPU a
  ``TorchDispatchMode`` sees every ATen operator of the forward and backward, adds the bytes of each output storage
  that does not alias an input, and subtracts them when the storage is freed (``weakref.finalize`` on the storage
  object, which PyTorch keeps alive exactly as long as the storage). Kernel-internal scratch buffers are invisible to
  it, so the CPU figure is a lower bound of what the allocator saw.
"""

from __future__ import annotations

import gc
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ...types import LossFn
from ..health.flow import compute_loss
from ..tracking import is_untracked

CPU_PEAK_METHOD = "allocation tracking: bytes of every ATen operator output storage, live until freed (dispatch mode)"
CUDA_PEAK_METHOD = "torch.cuda.max_memory_allocated (caching allocator peak)"
LOSS_LABEL = "(loss)"


_COMPRESSED_PARTS = {
    torch.sparse_csr: ("crow_indices", "col_indices"), torch.sparse_bsr: ("crow_indices", "col_indices"),
    torch.sparse_csc: ("ccol_indices", "row_indices"), torch.sparse_bsc: ("ccol_indices", "row_indices"),
}


def dense_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The strided tensors whose storages hold ``tensor``'s memory: itself, or a sparse tensor's indices and values.

    A sparse tensor has no storage of its own (``untyped_storage()`` raises); a model or function may build one
    inside its forward (``to_sparse``). Other layouts hold nothing this module can attribute and are left out.
    """
    if tensor.layout == torch.strided:
        return [tensor]
    if tensor.layout == torch.sparse_coo:
        return [tensor._indices(), tensor._values()]
    names = _COMPRESSED_PARTS.get(tensor.layout)
    if names is None:
        return []
    return [getattr(tensor, names[0])(), getattr(tensor, names[1])(), tensor.values()]


def storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    """Identity of a tensor's storage: device and data pointer (views of one storage share it)."""
    return str(tensor.device), tensor.untyped_storage().data_ptr()


def distinct_storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Total bytes of the distinct storages behind ``tensors``."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        seen.setdefault(storage_key(t), t.untyped_storage().nbytes())
    return sum(seen.values())


def _aten_tensors(values: Iterable[Any]) -> list[torch.Tensor]:
    """The tensors among ATen operator arguments or results.

    An ATen schema nests at most one level: each value is a tensor, a scalar, None, or a flat list (``Tensor[]``,
    ``Tensor?[]``, ``int[]``). Walking exactly that is several times cheaper than a general recursive walk, which
    cost more than the operators themselves on models made of many small ones (a GPT block).
    """
    found: list[torch.Tensor] = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(item for item in value if isinstance(item, torch.Tensor))
    return found


def _storages(tensors: list[torch.Tensor]) -> list[Any]:
    return [part.untyped_storage() for tensor in tensors for part in dense_parts(tensor)]


class AllocationTracker(TorchDispatchMode):
    """Live and peak bytes of storages created by ATen operators while active (CPU peak measurement).

    PyTorch wraps every mode's ``__torch_dispatch__`` in ``torch._dynamo.disable`` unless the class opts out; the
    first call then imports ``torch._dynamo`` (and sympy with it): 1-6 s in a fresh process, many times the
    training step being measured. The tracker opts out: its bookkeeping is plain Python that no compiler needs to
    skip, and a model compiled with ``torch.compile`` has imported dynamo already, so :func:`allocation_tracker`
    hands it the wrapped variant.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: dict[int, weakref.finalize] = {}

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._alive.pop(key, None)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if is_untracked():
            return out
        inputs = {id(storage) for storage in _storages(_aten_tensors((*args, *(kwargs or {}).values())))}
        for storage in _storages(_aten_tensors(out if isinstance(out, list | tuple) else (out,))):
            key = id(storage)
            if key in inputs or key in self._alive:
                continue  # a view or in-place result: no new memory
            nbytes = storage.nbytes()
            if nbytes == 0:
                continue
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            self._alive[key] = weakref.finalize(storage, self._release, key, nbytes)
        return out

    def detach_finalizers(self) -> None:
        """Stop tracking (storages still alive, e.g. gradients, no longer call back into this object)."""
        for fin in self._alive.values():
            fin.detach()
        self._alive.clear()


class _DynamoSkippingTracker(AllocationTracker):
    """The tracker with ``__torch_dispatch__`` hidden from dynamo, for processes that have dynamo loaded."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return True

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return super().__torch_dispatch__(func, types, args, kwargs)


def allocation_tracker() -> AllocationTracker:
    """A new tracker; hidden from dynamo only when dynamo is already imported (``torch.compile`` may be in use)."""
    if "torch._dynamo" in sys.modules:
        return _DynamoSkippingTracker()
    return AllocationTracker()


@dataclass
class ModuleSaved:
    type: str
    bytes: int = 0
    tensors: int = 0


@dataclass
class StepMeasurement:
    """What one instrumented forward+backward measured. Bytes are bytes; times are seconds."""

    activation_bytes: int = 0
    activation_input_bytes: int = 0
    saved_tensors: int = 0
    loss_saved_bytes: int = 0
    by_module: dict[str, ModuleSaved] = field(default_factory=dict)
    resident_bytes: int = 0
    peak_increase_bytes: int = 0
    retained_after_forward_bytes: int = 0
    peak_method: str = CPU_PEAK_METHOD
    loss_value: float = float("nan")


class _SavedTensorCounter:
    """Pack hook + module stack: distinct saved storages (parameters and buffers excluded), attributed to modules."""

    def __init__(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], checkpointed: set[str]) -> None:
        # parameters and buffers (BatchNorm saves its running statistics) are resident state, not activations
        self.param_keys = {storage_key(t) for t in (*model.parameters(), *model.buffers())}
        self.input_keys = {storage_key(t) for t in inputs if isinstance(t, torch.Tensor)}
        self.seen: dict[tuple[str, int], tuple[torch.Tensor, str]] = {}
        self.by_module: dict[str, ModuleSaved] = {}
        self.saved_tensors = 0
        self.loss_saved_tensors = 0
        self._stack: list[str] = []
        self._types = {name: type(m).__name__ for name, m in model.named_modules()}
        self._handles: list[Any] = []
        for name, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter(name, name in checkpointed)))
            self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str, checkpointed: bool) -> Callable[[nn.Module, Any], None]:
        def push(_module: nn.Module, args: Any) -> None:
            self._stack.append(name)
            if checkpointed:  # non-reentrant checkpoint keeps the block's tensor arguments for the recomputation
                for arg in tree_leaves(args):
                    if isinstance(arg, torch.Tensor):
                        self._record(arg)

        return push

    def _leave(self, _module: nn.Module, _args: Any, _output: Any) -> None:
        if self._stack:
            self._stack.pop()

    def _record(self, tensor: torch.Tensor) -> None:
        owner = self._stack[-1] if self._stack else LOSS_LABEL
        self.saved_tensors += 1
        if owner == LOSS_LABEL:
            self.loss_saved_tensors += 1
        for part in dense_parts(tensor):
            key = storage_key(part)
            if key in self.param_keys or key in self.seen:
                continue
            self.seen[key] = (part, owner)
            entry = self.by_module.setdefault(owner, ModuleSaved(type=self._types.get(owner, "")))
            entry.bytes += part.untyped_storage().nbytes()
            entry.tensors += 1

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self._record(tensor)
        return tensor

    def finish(self, into: StepMeasurement) -> None:
        """Fill the activation fields and drop every reference and hook.

        A storage first saved by the loss (the default loss's projection weights, a cross-entropy's log-softmax) is
        training memory but not the model's: it goes to ``loss_saved_bytes``, not ``activation_bytes``.
        """
        for key, (tensor, owner) in self.seen.items():
            nbytes = tensor.untyped_storage().nbytes()
            if owner == LOSS_LABEL:
                into.loss_saved_bytes += nbytes
                continue
            into.activation_bytes += nbytes
            if key in self.input_keys:
                into.activation_input_bytes += nbytes
        into.saved_tensors = self.saved_tensors - self.loss_saved_tensors
        into.by_module = {name: entry for name, entry in self.by_module.items() if name != LOSS_LABEL}
        self.seen.clear()
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident_bytes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Bytes already allocated before a step: distinct storages of parameters, buffers, gradients and inputs."""
    tensors = [*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters() if p.grad is not None),
               *(t for t in inputs if isinstance(t, torch.Tensor))]
    return distinct_storage_bytes(tensors)


def measure_step(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    device: torch.device,
    checkpointed: set[str] | None = None,
) -> StepMeasurement:
    """One instrumented forward+backward: saved-tensor bytes per module, allocation peak, memory kept by the graph.

    The caller provides the seeded RNG and the state restoration (this only runs the step).
    """
    result = StepMeasurement(resident_bytes=resident_bytes(model, inputs))
    counter = _SavedTensorCounter(model, inputs, checkpointed or set())
    tracker: AllocationTracker | None = None
    try:
        if device.type == "cuda":
            result.peak_method = CUDA_PEAK_METHOD
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                loss = compute_loss(model, inputs, loss_fn)
            counter.finish(result)
            result.retained_after_forward_bytes = torch.cuda.memory_allocated(device) - base
            loss.backward()
            _sync(device)
            result.peak_increase_bytes = torch.cuda.max_memory_allocated(device) - base
        else:
            tracker = allocation_tracker()
            with tracker:
                with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                    loss = compute_loss(model, inputs, loss_fn)
                counter.finish(result)
                result.retained_after_forward_bytes = tracker.live
                loss.backward()
            result.peak_increase_bytes = tracker.peak
        result.loss_value = float(loss.detach())
    finally:
        counter.remove()
        if tracker is not None:
            tracker.detach_finalizers()
    return result


def timed_step(model: nn.Module, inputs: tuple[torch.Tensor, ...], loss_fn: LossFn,
               device: torch.device) -> tuple[float, float]:
    """(forward seconds including the loss, backward seconds) of one plain, uninstrumented step.

    Python's garbage collector is paused during the step (as ``timeit`` does): a full collection triggered by
    earlier allocations would otherwise land in the timed region (0.1-0.2 s with torch loaded).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _sync(device)
        start = time.perf_counter()
        loss = compute_loss(model, inputs, loss_fn)
        _sync(device)
        middle = time.perf_counter()
        loss.backward()
        _sync(device)
        end = time.perf_counter()
    finally:
        if was_enabled:
            gc.enable()
    return middle - start, end - middle


@contextmanager
def checkpointed_blocks(blocks: dict[str, nn.Module]) -> Iterator[None]:
    """Run each block's forward through ``torch.utils.checkpoint`` (non-reentrant) while inside; undo on exit."""
    from torch.utils.checkpoint import checkpoint

    patched: list[tuple[nn.Module, Any]] = []
    try:
        for module in blocks.values():
            original = module.__dict__.get("forward")
            bound = module.forward

            def wrapper(*args: Any, _fn: Any = bound, **kwargs: Any) -> Any:
                return checkpoint(_fn, *args, use_reentrant=False, **kwargs)

            module.forward = wrapper
            patched.append((module, original))
        yield
    finally:
        for module, original in patched:
            if original is None:
                del module.forward
            else:
                module.forward = original
