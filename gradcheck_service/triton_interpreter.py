"""Triton kernels checked on any machine: Triton's interpreter runs them on CPU tensors, line by line.

The check's float64 reference always runs on the CPU, and a Triton kernel compiled for a GPU cannot take a CPU
tensor. Triton's interpreter (``TRITON_INTERPRET=1``) runs the kernel's own arithmetic in NumPy instead: the same
masks, indexing, in-place stores and casts. ``@triton.jit`` chooses between compiling and interpreting when it
decorates, so :func:`use_interpreter` sets the variable as soon as Triton is imported, before the model's code
defines its kernels (``auto``: when CUDA is absent). While a check runs, :func:`recording_kernels` also sends a
kernel decorated for the GPU to the interpreter whenever it is launched on CPU tensors (the reference side on a GPU
machine, or kernels imported before the interpreter was switched on), and records what ran.

Note [Interpreter gaps]
~~~~~~~~~~~~~~~~~~~~~~~
Four gaps of the interpreter (measured on Triton 3.8.0 and 3.9.0) break real kernels that the compiler accepts:

1. A Python float argument stays a bare ``float`` (``eps.to(tl.float32)`` raises AttributeError), where the
   compiler passes it as an fp32 scalar. Bridged in ``_implicit_cvt``, which converts every launch argument.
2. ``triton.language.extra.libdevice`` is a module of empty stubs that the compiler replaces by the backend's
   typed libdevice (its ``module_map``); the interpreter calls the stubs, so ``rsqrt``, ``tanh`` ... return None.
   Bridged in ``_patch_lang``, which the interpreter runs before each kernel and device function: the stubs, and
   the kernel's globals bound to them, become the CUDA backend's libdevice functions (their dtype tables, as on a
   GPU), whose elementwise calls are computed with torch in the operand's dtype.
3. A cast down to bfloat16 truncates float32 where the GPU rounds to nearest (one bfloat16 unit off), and reads a
   float64 as bfloat16's bits (NaN and garbage: a kernel computing "float32, else bfloat16" in the promoted
   model). Bridged in ``cast_impl``: torch rounds to bfloat16, to nearest with ties to even (from float64 through
   float32, which differs from one rounding only on ties of the second).
4. An autotuned kernel with several configurations is timed on the GPU's benchmarker before it runs, which the
   interpreter has not ("0 active drivers"). Bridged in ``Autotuner.prune_configs``: launched on CPU tensors, it
   keeps the first configuration, which then runs without being timed (the check covers that configuration).

All four are applied only for :data:`BRIDGED_VERSIONS`, the range the ``[triton]`` extra pins; a test shows each
gap in that range and the bridge closing it, so a Triton that closes a gap tells the test suite the bridge can go.
"""

from __future__ import annotations

import functools
import importlib.abc
import math
import os
import re
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .report import InterpretedKernel

Setting = Literal["auto", "on", "off"]

# Triton releases (major, minor) whose interpreter has the gaps of Note [Interpreter gaps].
BRIDGED_VERSIONS = ((3, 8), (3, 9))

_state: dict[str, Any] = {"setting": "auto", "hooked": False, "bridged": False}


def use_interpreter(setting: Setting = "auto") -> None:
    """Have Triton kernels run in Triton's interpreter when ``setting`` says so, decided when Triton is imported.

    ``auto``: when CUDA is absent, unless ``TRITON_INTERPRET`` is already set (then that is followed); ``on``:
    always; ``off``: never (kernels compile for the GPU). Triton's own library (``tl.sum``, ``tl.max``) is
    decorated when Triton is imported, so call this before the model's code imports Triton; if it already has,
    the choice holds for kernels decorated from now on (and a check still interprets a kernel launched on CPU
    tensors, see :func:`recording_kernels`). Without Triton installed it does nothing.
    """
    _state["setting"] = setting
    if "triton" in sys.modules:
        _switch()
        _after_triton_import(sys.modules["triton"])
    elif not _state["hooked"]:
        import wrapt

        sys.meta_path.insert(0, _BeforeTritonImport())
        wrapt.register_post_import_hook(_after_triton_import, "triton")
        _state["hooked"] = True


class _BeforeTritonImport(importlib.abc.MetaPathFinder):
    """Sets ``TRITON_INTERPRET`` as Triton's import begins (it finds nothing itself; the next finder loads Triton)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "triton":
            sys.meta_path.remove(self)
            _switch()
        return None


def _switch() -> None:
    setting = _state["setting"]
    if setting == "off":
        os.environ["TRITON_INTERPRET"] = "0"
    elif setting == "on" or ("TRITON_INTERPRET" not in os.environ and not _cuda_available()):
        os.environ["TRITON_INTERPRET"] = "1"


def _after_triton_import(_triton: object) -> None:
    if interpreting():
        install_bridges()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def interpreting() -> bool:
    """Whether ``@triton.jit`` now makes interpreted kernels (False when Triton has not been imported)."""
    triton = sys.modules.get("triton")
    return triton is not None and bool(triton.knobs.runtime.interpret)


def bridged_version(version: str) -> bool:
    """Whether Triton ``version`` has the interpreter gaps this module bridges."""
    major_minor = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return major_minor in BRIDGED_VERSIONS


def install_bridges() -> bool:
    """Bridge the gaps of Note [Interpreter gaps] in this process (once); False when this Triton has no bridge."""
    import triton

    if _state["bridged"]:
        return True
    if not bridged_version(triton.__version__):
        return False
    from triton.runtime import interpreter

    _bridge_float_arguments(interpreter)
    _bridge_libdevice(interpreter)
    _bridge_bfloat16_casts(interpreter)
    _bridge_autotuning()
    _state["bridged"] = True
    return True


# -- gap 1: float arguments ----------------------------------------------------------------------------------------

def _bridge_float_arguments(interpreter: Any) -> None:
    import numpy as np
    import triton.language as tl

    convert = interpreter._implicit_cvt

    def implicit_cvt(arg: Any) -> Any:
        if isinstance(arg, float):  # the compiler's signature for a Python float is fp32 (bool is not a float)
            return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
        return convert(arg)

    interpreter._implicit_cvt = implicit_cvt  # tuples are converted element by element through this name too


# -- gap 2: libdevice --------------------------------------------------------------------------------------------

class _Namespace:
    """A module's globals dict seen as attributes, so the interpreter's patch scope can set and restore names."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        object.__setattr__(self, "_namespace", namespace)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._namespace[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._namespace[name] = value

    def __delattr__(self, name: str) -> None:
        del self._namespace[name]


def _bridge_libdevice(interpreter: Any) -> None:
    from triton.language.extra import libdevice as stubs
    from triton.language.extra.cuda import libdevice as typed

    semantic = interpreter.interpreter_semantic

    def bound(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("_semantic", None)
            return function(*args, _semantic=semantic, **kwargs)
        return call

    substitutes = {name: bound(getattr(typed, name)) for name, stub in vars(stubs).items()
                   if callable(stub) and getattr(stub, "__module__", None) == stubs.__name__ and hasattr(typed, name)}
    stub_names = {id(getattr(stubs, name)): name for name in substitutes}
    patch_lang = interpreter._patch_lang

    def patch_lang_and_libdevice(fn: Any) -> Any:
        scope = patch_lang(fn)
        for name, substitute in substitutes.items():
            scope.set_attr(stubs, name, substitute)
        namespace = _Namespace(fn.__globals__)
        for key, value in list(fn.__globals__.items()):
            if id(value) in stub_names:  # `from triton.language.extra.libdevice import rsqrt`
                scope.set_attr(namespace, key, substitutes[stub_names[id(value)]])
        return scope

    interpreter._patch_lang = patch_lang_and_libdevice
    interpreter.InterpreterBuilder.create_extern_elementwise = _extern_elementwise


def _extern_elementwise(_builder: Any, _lib_name: str, _lib_path: str, symbol: str, args: list[Any], ret_type: Any,
                        _is_pure: bool) -> Any:
    """A libdevice call (``__nv_rsqrtf``), computed with torch in the operand's dtype and cast to its result type."""
    import numpy as np
    import torch
    from triton.runtime.interpreter import TensorHandle, _get_np_dtype

    name = _math_name(symbol)
    if name is None:
        raise NotImplementedError(f"libdevice function {symbol} has no implementation in Triton's interpreter "
                                  "(gradcheck-service bridges the round-to-nearest math functions)")
    operands = [torch.from_numpy(np.array(arg.data, copy=True)) for arg in args]
    result = _libdevice()[name](*operands)
    return TensorHandle(np.asarray(result.numpy(), dtype=_get_np_dtype(ret_type)), ret_type.scalar)


def _math_name(symbol: str) -> str | None:
    """``__nv_rsqrtf`` -> ``rsqrt``, ``__nv_fast_expf`` -> ``exp``, ``__nv_dadd_rn`` -> ``add``, ``__nv_isnand`` ->
    ``isnan``; None for what is not bridged (directed rounding ``_rz``/``_rd``/``_ru``, bit and integer tricks)."""
    name = symbol.removeprefix("__nv_").removeprefix("fast_")
    if name.endswith(("_rz", "_rd", "_ru")):
        return None
    name = name.removesuffix("_rn")
    for candidate, allowed in ((name, True), (name[:-1], name[-1:] in ("f", "d")), (name[1:], name[:1] in ("f", "d"))):
        if allowed and candidate in _libdevice():
            return candidate
    return None


@functools.cache
def _libdevice() -> dict[str, Callable[..., Any]]:
    """libdevice's math functions by name, as torch computes them in the operand's dtype."""
    import torch

    def fused(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # one rounding, as fma has
        return (x.double() * y.double() + z.double()).to(torch.promote_types(x.dtype, z.dtype))

    return {
        "abs": torch.abs, "fabs": torch.abs, "llabs": torch.abs, "acos": torch.acos, "acosh": torch.acosh,
        "asin": torch.asin, "asinh": torch.asinh, "atan": torch.atan, "atanh": torch.atanh,
        "cbrt": lambda x: torch.sign(x) * x.abs().pow(1 / 3), "rcbrt": lambda x: torch.sign(x) * x.abs().pow(-1 / 3),
        "ceil": torch.ceil, "floor": torch.floor, "trunc": torch.trunc, "rint": torch.round, "nearbyint": torch.round,
        "llrint": torch.round, "round": lambda x: torch.sign(x) * torch.floor(x.abs() + 0.5),
        "llround": lambda x: torch.sign(x) * torch.floor(x.abs() + 0.5),
        "cos": torch.cos, "cosh": torch.cosh, "sin": torch.sin, "sinh": torch.sinh, "tan": torch.tan,
        "tanh": torch.tanh, "cospi": lambda x: torch.cos(math.pi * x), "sinpi": lambda x: torch.sin(math.pi * x),
        "exp": torch.exp, "exp2": torch.exp2, "exp10": lambda x: torch.pow(10.0, x), "expm1": torch.expm1,
        "log": torch.log, "log2": torch.log2, "log10": torch.log10, "log1p": torch.log1p,
        "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "rcp": torch.reciprocal, "saturate": lambda x: x.clamp(0, 1),
        "erf": torch.erf, "erfc": torch.erfc, "erfinv": torch.erfinv, "erfcinv": lambda x: torch.erfinv(1 - x),
        "erfcx": torch.special.erfcx, "normcdf": torch.special.ndtr, "normcdfinv": torch.special.ndtri,
        "lgamma": torch.lgamma, "cyl_bessel_i0": torch.special.i0, "cyl_bessel_i1": torch.special.i1,
        "j0": torch.special.bessel_j0, "j1": torch.special.bessel_j1, "y0": torch.special.bessel_y0,
        "y1": torch.special.bessel_y1,
        "isnan": torch.isnan, "isinf": torch.isinf, "isfinite": torch.isfinite, "finite": torch.isfinite,
        "signbit": torch.signbit,
        "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "fdivide": torch.div,
        "pow": torch.pow, "powi": torch.pow, "atan2": torch.atan2, "copysign": torch.copysign, "fmod": torch.fmod,
        "remainder": lambda x, y: x - y * torch.round(x / y), "hypot": torch.hypot,
        "rhypot": lambda x, y: torch.hypot(x, y).reciprocal(), "fdim": lambda x, y: (x - y).clamp(min=0),
        "nextafter": torch.nextafter, "ldexp": torch.ldexp, "scalbn": torch.ldexp,
        "norm3d": lambda x, y, z: torch.sqrt(x * x + y * y + z * z),
        "rnorm3d": lambda x, y, z: torch.rsqrt(x * x + y * y + z * z),
        "norm4d": lambda x, y, z, w: torch.sqrt(x * x + y * y + z * z + w * w),
        "rnorm4d": lambda x, y, z, w: torch.rsqrt(x * x + y * y + z * z + w * w),
        "fma": fused,
    }


# -- gap 3: bfloat16 casts -----------------------------------------------------------------------------------------

def _bridge_bfloat16_casts(interpreter: Any) -> None:
    import numpy as np
    import torch
    import triton.language as tl

    cast = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(builder: Any, src: Any, dst_type: Any) -> Any:
        if dst_type.scalar == tl.bfloat16 and src.dtype.scalar in (tl.float32, tl.float64):
            rounded = torch.from_numpy(np.array(src.data, copy=True)).to(torch.bfloat16)  # to nearest, ties to even
            return interpreter.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return cast(builder, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_impl


# -- gap 4: autotuning ----------------------------------------------------------------------------------------------

def _bridge_autotuning() -> None:
    from triton.runtime.autotuner import Autotuner

    prune = Autotuner.prune_configs

    def prune_configs(tuner: Any, kwargs: dict[str, Any]) -> list[Any]:
        configs = prune(tuner, kwargs)
        if any(_on_cpu(a) for a in (*tuner.nargs.values(), *kwargs.values())):
            return list(configs[:1])  # one config is not benchmarked: it runs as it is
        return list(configs)

    Autotuner.prune_configs = prune_configs


# -- what ran ------------------------------------------------------------------------------------------------------

_FLOAT_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp64": "float64"}


@dataclass
class KernelRun:
    """One Triton kernel as it ran in the interpreter during a check."""

    name: str  # module.function
    launches: int = 0
    tensor_dtypes: set[str] = field(default_factory=set)  # float dtypes of the tensors it was given
    # By the most precise float dtype among a launch's tensors: the lowest precision such a launch computed in.
    lowest_by_input: dict[str, str] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        """What its arithmetic came down to when it was given its most precise tensors (float64 in the promoted
        model): a kernel loading float64 into float32 says float32, one that stays in float64 says float64."""
        if not self.lowest_by_input:
            return "none"
        return self.lowest_by_input[min(self.lowest_by_input, key=_eps)]

    def add_launch(self, tensors: set[str], computed: set[str]) -> None:
        if tensors:
            best = min(tensors, key=_eps)
            self.lowest_by_input[best] = max({*computed, self.lowest_by_input.get(best, best)}, key=_eps)


def _eps(dtype: str) -> float:
    import torch

    return float(torch.finfo(getattr(torch, dtype)).eps)


class KernelLog:
    """The Triton kernels interpreted while a check ran, by ``module.function``."""

    def __init__(self) -> None:
        self.runs: dict[str, KernelRun] = {}
        self.running: list[set[str]] = []  # the float dtypes of each launch being interpreted (innermost last)

    @contextmanager
    def launch(self, fn: Any, args: tuple[Any, ...]) -> Iterator[None]:
        """One launch of ``fn``: its tensors' float dtypes and every cast down inside it make its precision."""
        name = f"{fn.__module__}.{fn.__name__}"
        record = self.runs.setdefault(name, KernelRun(name))
        record.launches += 1
        dtypes = {_float_name(a.dtype) for a in args if _is_float_tensor(a)}
        record.tensor_dtypes |= dtypes
        self.running.append(set(dtypes))
        try:
            yield
        finally:
            record.add_launch(dtypes, self.running.pop())

    def kernels(self) -> list[InterpretedKernel]:
        from .report import InterpretedKernel

        return [InterpretedKernel(name=r.name, launches=r.launches, tensor_dtypes=sorted(r.tensor_dtypes),
                                  precision=r.precision) for r in self.runs.values()]

    def note(self) -> str | None:
        """One line for the report's notes, or None when no kernel was interpreted."""
        if not self.runs:
            return None
        import triton

        listed = ", ".join(f"{r.name} ({r.precision})" for r in self.runs.values())
        return f"Triton kernels ran in Triton's interpreter on CPU (triton {triton.__version__}): {listed}"


@contextmanager
def recording_kernels(setting: Setting) -> Iterator[KernelLog]:
    """Record the Triton kernels interpreted in the ``with`` block, and (unless ``setting`` is ``off``) send a
    kernel decorated for the GPU that is launched on CPU tensors to the interpreter, with its device functions."""
    use_interpreter(setting)
    log = KernelLog()
    if "triton" not in sys.modules:
        yield log
        return
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    interpreted_run, compiled_run = interpreter.InterpretedFunction.run, JITFunction.run
    fp_trunc = interpreter.InterpreterBuilder.create_fp_trunc

    def run_recorded(kernel: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        if warmup:
            return interpreted_run(kernel, *args, grid=grid, warmup=warmup, **kwargs)
        with log.launch(kernel.fn, (*args, *kwargs.values())):
            return interpreted_run(kernel, *args, grid=grid, warmup=warmup, **kwargs)

    def fp_trunc_recorded(builder: Any, src: Any, dst_type: Any) -> Any:
        if log.running:
            log.running[-1].add(_FLOAT_NAMES.get(str(dst_type.scalar), str(dst_type.scalar)))
        return fp_trunc(builder, src, dst_type)

    def run_on_cpu_tensors(kernel: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        if any(_on_cpu(a) for a in (*args, *kwargs.values())):
            return _interpreted(kernel).run(*args, grid=grid, warmup=warmup, **kwargs)
        return compiled_run(kernel, *args, grid=grid, warmup=warmup, **kwargs)

    def call_interpreted(function: Any, *args: Any, **kwargs: Any) -> Any:
        return _interpreted(function)(*args, **kwargs)  # only an interpreted kernel calls a device function here

    patches = [(interpreter.InterpretedFunction, "run", run_recorded),
               (interpreter.InterpreterBuilder, "create_fp_trunc", fp_trunc_recorded)]
    if setting != "off":
        install_bridges()  # a Triton outside BRIDGED_VERSIONS runs unbridged: its own errors say what it lacks
        patches += [(JITFunction, "run", run_on_cpu_tensors), (JITFunction, "__call__", call_interpreted)]
    originals = [(owner, name, vars(owner).get(name, _MISSING)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield log
    finally:
        for owner, name, original in reversed(originals):
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


_MISSING = object()
_INTERPRETED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _interpreted(kernel: Any) -> Any:
    """The interpreted twin of a kernel (or device function) decorated for the GPU."""
    from triton.runtime import interpreter

    if kernel not in _INTERPRETED:
        _INTERPRETED[kernel] = interpreter.InterpretedFunction(kernel.fn)
    return _INTERPRETED[kernel]


def _on_cpu(arg: Any) -> bool:
    device = getattr(arg, "device", None)
    return hasattr(arg, "data_ptr") and getattr(device, "type", None) == "cpu"


def _is_float_tensor(arg: Any) -> bool:
    return hasattr(arg, "data_ptr") and bool(getattr(arg, "is_floating_point", lambda: False)())


def _float_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")
