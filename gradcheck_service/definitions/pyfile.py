"""Loading a Python model file: a module-level ``build()`` returning ``(module, inputs)``.

The contract::

    def build() -> tuple[nn.Module, Tensor | tuple[Tensor, ...]]:   # required, no arguments
        ...
    def loss_fn(output, *inputs) -> Tensor:                           # optional, returns a scalar
        ...

SECURITY: this *executes* the file in the calling process, with the caller's privileges. That is what a user
wants from the local CLI on their own code; the service must only ever call it inside its sandboxed child
process, never in an API or worker process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..types import LossFn
from .base import Definition, DefinitionError, Problem

MAX_FILE_BYTES = 5 * 1024 * 1024
_counter = itertools.count()


def _where(exc: BaseException, path: Path) -> str:
    """``line 12: x = 1 / 0`` for the innermost frame of the traceback that lies in the user's file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    if not frames:
        return ""
    frame = frames[-1]
    code = f": {frame.line.strip()}" if frame.line else ""
    return f" (line {frame.lineno}{code})"


def _error(path: Path, message: str, line: int | None = None) -> DefinitionError:
    where = f"{path}:{line}" if line else str(path)
    return DefinitionError(f"{path}: {message}", [Problem(where, message)])


class MissingModuleError(DefinitionError):
    """The model file (or a module it imports) imports a module that cannot be found; ``module`` is its name."""

    def __init__(self, message: str, problems: list[Problem], module: str) -> None:
        super().__init__(message, problems)
        self.module = module


def _raised(path: Path, what: str, exc: BaseException) -> DefinitionError:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    detail = f"{what} raised {type(exc).__name__}: {exc}{_where(exc, path)}"
    error = _error(path, detail, frames[-1].lineno if frames else None)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        # Name the file and line of the failing import, which is often in a module the file imports.
        importing = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
        if importing and Path(importing[-1].filename) != path:
            frame = importing[-1]
            detail += f" (imported at {frame.filename}:{frame.lineno}: {(frame.line or '').strip()})"
            error = _error(path, detail, frames[-1].lineno if frames else None)
        return MissingModuleError(error.message, error.problems, exc.name)
    return error


def _read(path: Path) -> str:
    if not path.is_file():
        raise _error(path, "no such file" if not path.exists() else "not a regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise _error(path, f"the file is larger than {MAX_FILE_BYTES:,} bytes")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _error(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise _error(path, f"cannot be read ({exc.strerror})") from None


def _execute(path: Path, text: str) -> ModuleType:
    """Run the file as a fresh module under a unique name (so two files named ``model.py`` never collide)."""
    try:
        code = compile(text, str(path), "exec")
    except SyntaxError as exc:
        raise _error(path, f"syntax error at line {exc.lineno}: {exc.msg}", exc.lineno) from None
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"gradcheck_user_model_{digest}_{next(_counter)}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None
    module = importlib.util.module_from_spec(module_spec)
    # Registered so that dataclasses, pickling and `typing.get_type_hints` inside the file can find it.
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise _raised(path, "running the file", exc) from None
    return module


def _inputs(path: Path, value: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, tuple | list) and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(value)
    if isinstance(value, tuple | list):
        bad = next(i for i, v in enumerate(value) if not isinstance(v, torch.Tensor))
        raise _error(path, f"build() returned inputs whose item {bad} is a {type(value[bad]).__name__}, "
                     "not a Tensor")
    raise _error(path, f"build() returned inputs of type {type(value).__name__}; expected a Tensor or a tuple "
                 "of Tensors")


def load_python_file(path: str | Path, import_paths: Sequence[str | Path] = ()) -> Definition:
    """Execute a model file and call its ``build()``; see the module docstring for the contract (and the risk).

    ``import_paths`` are the directories the repository's own modules are imported from (its root, ``src``, ...);
    they are put on ``sys.path`` while the file runs, after the file's own directory (where it finds the helpers
    beside it, as when run as a script).

    Raises :class:`DefinitionError` naming the file for a missing file, a syntax error (with its line), a missing
    ``build``, an exception inside the file or ``build()`` (type, message and the line in the file), or a result
    that is not ``(nn.Module, Tensor | tuple[Tensor, ...])``; :class:`MissingModuleError` when an import fails.
    """
    path = Path(path).resolve()
    text = _read(path)
    added = [str(path.parent), *(str(Path(p).resolve()) for p in import_paths)]
    sys.path[0:0] = added
    try:
        module = _execute(path, text)
        build = getattr(module, "build", None)
        if not callable(build):
            raise _error(path, "defines no build() function; it must return (module, inputs)")
        try:
            required = [p for p in inspect.signature(build).parameters.values()
                        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        except (TypeError, ValueError):
            required = []
        if required:
            raise _error(path, f"build() must take no arguments, but it requires {', '.join(p.name for p in required)}")
        try:
            result = build()
        except (Exception, SystemExit) as exc:
            raise _raised(path, "build()", exc) from None
    finally:
        for entry in added:
            sys.path.remove(entry)
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise _error(path, f"build() returned a {type(result).__name__}; expected a pair (module, inputs)")
    model, raw_inputs = result
    if not isinstance(model, nn.Module):
        raise _error(path, f"build() returned a {type(model).__name__} as the model; expected a torch.nn.Module")
    inputs = _inputs(path, raw_inputs)
    loss_fn: LossFn | None = getattr(module, "loss_fn", None)
    if loss_fn is not None and not callable(loss_fn):
        raise _error(path, f"loss_fn is a {type(loss_fn).__name__}; expected a function (output, *inputs) -> scalar")
    return Definition(model, inputs, loss_fn, path.stem, "python", text, {"path": str(path), "module": module.__name__})
