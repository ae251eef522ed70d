"""Turning a model definition -- a declarative JSON spec or a Python model file -- into a model to check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import Definition, DefinitionError, Problem

__all__ = ["Definition", "DefinitionError", "Problem", "load_definition"]


def load_definition(path: str, import_paths: Sequence[str | Path] = ()) -> Definition:
    """Load ``path``: a ``.json`` spec (validated, no code runs) or a ``.py`` model file (executed!).

    ``import_paths``: directories the model file's repository modules are imported from (its root, ``src``).
    Raises :class:`DefinitionError` naming the file and, for specs, each problem with its JSON path.
    """
    from .loader import load_path

    return load_path(path, import_paths)
