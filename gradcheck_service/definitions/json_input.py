"""The one JSON policy for everything a user submits: a request body, an uploaded ``.json`` spec, a form field.

Python's ``json`` module accepts more than JSON: the tokens ``NaN``, ``Infinity`` and ``-Infinity``, numbers such
as ``1e999`` that overflow to infinity, and an object with the same key twice (the last value silently wins). None
of that means anything in a spec or an option -- an infinite safety factor passes every gradient, and PostgreSQL
refuses to store it -- so :func:`decode` refuses it, naming the JSON path of each offending value or key.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .spec import json_path

NOT_FINITE = "not a finite number (NaN, Infinity and numbers beyond a double, such as 1e999, are refused)"
# Problems reported at most: enough to fix a document, too few to make a huge answer out of a hostile one.
MAX_PROBLEMS = 20


class StrictJsonError(ValueError):
    """Decoded JSON that breaks the policy; ``problems`` are (JSON path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))


def decode(text: str | bytes) -> Any:
    """``json.loads`` under the policy above.

    Raises :class:`StrictJsonError` for a policy breach, and what ``json.loads`` raises for text that is not JSON
    (``json.JSONDecodeError``, ``ValueError`` for an integer of too many digits, ``RecursionError`` when nested
    too deeply).
    """
    repeated: dict[int, list[str]] = {}  # id() of each decoded object -> its keys that appeared twice

    def build_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            seen: set[str] = set()
            twice: set[str] = set()
            for key, _ in pairs:
                (twice if key in seen else seen).add(key)
            repeated[id(obj)] = sorted(twice)
        return obj

    data = json.loads(text, object_pairs_hook=build_object)
    problems = _policy_problems(data, repeated)
    if problems:
        raise StrictJsonError(problems)
    return data


def _policy_problems(data: Any, repeated: dict[int, list[str]]) -> list[tuple[str, str]]:
    """Every non-finite number and repeated key with its JSON path (iterative: depth cannot exhaust the stack)."""
    problems: list[tuple[str, str]] = []
    stack: list[tuple[Any, list[str | int]]] = [(data, [])]
    while stack and len(problems) < MAX_PROBLEMS:
        value, loc = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            problems.append((json_path(loc), NOT_FINITE))
        elif isinstance(value, dict):
            problems.extend((json_path(loc), f"the key {key!r} appears more than once")
                            for key in repeated.get(id(value), ()))
            stack.extend((item, [*loc, key]) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, [*loc, index]) for index, item in enumerate(value))
    return sorted(problems[:MAX_PROBLEMS])
