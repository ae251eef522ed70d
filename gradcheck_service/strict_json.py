"""One encoding of non-finite floats wherever the project writes JSON: the strings "NaN", "Infinity", "-Infinity".

A report can hold NaN or infinite figures (a gradient that blew up, an error ratio of a NaN comparison). Python's
``json`` writes them as bare ``NaN``/``Infinity`` tokens, which strict parsers (browsers' ``JSON.parse``, jq,
PostgreSQL's JSON columns) reject. Every model written into a report uses :data:`REPORT_MODEL_CONFIG`, so pydantic
writes those strings and reads them back as floats; :func:`dumps` does the same for plain data (API responses,
JSON columns), so whatever the service answers or stores parses everywhere.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict

# The config of every pydantic model that ends up in a report: unknown fields refused, non-finite floats written as
# the strings "NaN", "Infinity" and "-Infinity" (and read back from them).
REPORT_MODEL_CONFIG = ConfigDict(extra="forbid", ser_json_inf_nan="strings")
# Options are given by people: a non-finite threshold or factor is refused (written the same way where stored).
OPTIONS_MODEL_CONFIG = ConfigDict(extra="forbid", ser_json_inf_nan="strings", allow_inf_nan=False)
NON_FINITE_STRINGS = ("NaN", "Infinity", "-Infinity")


class ReportModel(BaseModel):
    """The base of every model written into a report: unknown fields refused, non-finite floats as strings."""

    model_config = REPORT_MODEL_CONFIG


class StrictModel(BaseModel):
    """The base of every model read from people or other programs (options, API bodies, CI configuration,
    job files): unknown fields refused, so a typo is an error rather than a setting silently ignored, and
    non-finite numbers refused."""

    model_config = OPTIONS_MODEL_CONFIG


def encode_non_finite(value: Any) -> Any:
    """``value`` with every non-finite float inside dicts, lists and tuples replaced by its string form."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return value if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: encode_non_finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode_non_finite(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes strict JSON: non-finite floats as strings, never as bare tokens."""
    return json.dumps(encode_non_finite(value), allow_nan=False, **kwargs)
