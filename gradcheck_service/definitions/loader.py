"""Loading a model definition from a path: ``.json`` specs (no code runs) and ``.py`` model files (executed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import json_input
from .base import Definition, DefinitionError, Problem
from .build import build_from_spec
from .pyfile import load_python_file
from .spec import SpecLimits

MAX_SPEC_BYTES = 1024 * 1024
ACCEPTED = "a .json model spec or a .py model file"


def parse_spec_text(text: str, origin: str = "spec") -> Any:
    """Decode JSON text under the service's JSON policy (:mod:`.json_input`: no NaN/Infinity, no duplicate
    keys, each named by its JSON path); syntax errors carry line and column."""
    if len(text.encode("utf-8", errors="replace")) > MAX_SPEC_BYTES:
        raise DefinitionError(f"{origin}: spec too large", [Problem("$", f"larger than {MAX_SPEC_BYTES:,} bytes")])
    try:
        return json_input.decode(text)
    except json_input.StrictJsonError as exc:
        raise DefinitionError(f"{origin}: invalid JSON", [Problem(path, message) for path, message in exc.problems]
                              ) from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DefinitionError(f"{origin}: invalid JSON", [Problem("$", f"{exc.msg} at {where}")]) from None
    except RecursionError:
        raise DefinitionError(f"{origin}: invalid JSON", [Problem("$", "nested too deeply")]) from None
    except ValueError as exc:  # integers with more digits than Python will parse
        raise DefinitionError(f"{origin}: invalid JSON", [Problem("$", str(exc))]) from None


def load_spec_file(path: str | Path, limits: SpecLimits | None = None) -> Definition:
    """Read, validate and build a ``.json`` spec; every error names the file and, inside it, the JSON path."""
    path = Path(path)
    if not path.is_file():
        reason = "no such file" if not path.exists() else "not a regular file"
        raise DefinitionError(f"{path}: {reason}", [Problem(str(path), reason)])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    data = parse_spec_text(text, str(path))
    try:
        definition = build_from_spec(data, source=text, name=path.stem, limits=limits)
    except DefinitionError as exc:
        raise DefinitionError(f"{path}: {exc.message}", exc.problems) from None
    definition.metadata["path"] = str(path.resolve())
    return definition


def load_path(path: str, import_paths: Sequence[str | Path] = ()) -> Definition:
    """Load a definition by suffix: ``.json`` -> spec, ``.py`` -> model file (which is executed, with
    ``import_paths`` on ``sys.path``)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return load_spec_file(path)
    if suffix == ".py":
        return load_python_file(path, import_paths)
    raise DefinitionError(f"{path}: unsupported kind of model definition '{suffix or '(no suffix)'}'; "
                          f"expected {ACCEPTED}", [Problem(str(path), f"expected {ACCEPTED}")])
