"""Keep the float64 reference in float64 when the model's own code casts to a lower precision.

Models written for float32 or half precision upcast on purpose for numerical stability: RMSNorm computes its
variance in float32 (``hidden_states.to(torch.float32)``), attention runs its softmax with ``dtype=torch.float32``,
rotary embeddings call ``.float()``. After the model is promoted to float64 each of those casts is a *downcast*,
and finite differences through it measure float32 roundoff instead of the derivative (numeric gradients come out
exactly 0.0). While the reference is evaluated, :class:`KeepFloat64` rewrites every requested floating dtype below
float64 to float64 — in ``Tensor.to``/``type``/``type_as``, ``.float()``/``.half()``/``.bfloat16()`` and any
``dtype`` argument — and sets the default dtype to float64 so factory functions (``torch.zeros(n)``,
``torch.tensor(0.5)``) follow. Every rewrite is counted, and the report lists them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

LOWER_FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16})
_CAST_METHODS = {torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16}
_LOWER_TYPE_NAMES = {"torch.FloatTensor", "torch.HalfTensor", "torch.BFloat16Tensor"}


def _name(func: Any) -> str:
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return qual.replace("TensorBase.", "Tensor.").replace("_TensorBase.", "Tensor.")


class KeepFloat64(TorchFunctionMode):
    """A torch function mode under which no float64 computation is cast down to a lower float precision."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: Counter[str] = Counter()
        self._default_dtype = torch.float32

    def __enter__(self) -> KeepFloat64:
        self._default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        torch.set_default_dtype(self._default_dtype)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _CAST_METHODS and not args[0].is_complex():
            self.kept[_name(func)] += 1
            return args[0].to(torch.float64)
        changed = False
        new_args = list(args)
        for i, a in enumerate(args):
            if isinstance(a, torch.dtype) and a in LOWER_FLOATS:
                new_args[i], changed = torch.float64, True
            elif i > 0 and func in (torch.Tensor.to, torch.Tensor.type_as) and isinstance(a, torch.Tensor) and \
                    a.dtype in LOWER_FLOATS:
                if func is torch.Tensor.type_as:
                    new_args[i] = a.to(torch.float64)
                else:
                    new_args[i] = torch.empty((), dtype=torch.float64, device=a.device)
                changed = True
            elif i > 0 and func is torch.Tensor.type and isinstance(a, str) and a in _LOWER_TYPE_NAMES:
                new_args[i], changed = "torch.DoubleTensor", True
        dtype = kwargs.get("dtype")
        if isinstance(dtype, torch.dtype) and dtype in LOWER_FLOATS:
            kwargs = {**kwargs, "dtype": torch.float64}
            changed = True
        if changed:
            self.kept[_name(func)] += 1
        return func(*new_args, **kwargs)

    def describe(self) -> str | None:
        """One line for the report, or None when the model never asked for a lower precision."""
        if not self.kept:
            return None
        parts = ", ".join(f"{name} x{count}" for name, count in self.kept.most_common())
        return ("the float64 reference kept float64 where the model casts to a lower precision (an upcast in its own "
                f"dtype, a downcast after promotion): {parts}")
