"""Turning a model definition -- a declarative JSON spec or a Python model file -- into a model to check."""

from __future__ import annotations

from .base import Definition, DefinitionError, Problem

__all__ = ["Definition", "DefinitionError", "Problem", "load_definition"]


def load_definition(path: str) -> Definition:
    """Load ``path``: a ``.json`` spec (validated, no code runs) or a ``.py`` model file (executed!).

    Raises :class:`DefinitionError` naming the file and, for specs, each problem with its JSON path.
    """
    from .loader import load_path

    return load_path(path)
