"""The report's JSON Schema (``schemas/report.schema.json``, committed and shipped with the package).

``python -m gradcheck_service.report`` regenerates the committed file after a change of the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from ..strict_json import NON_FINITE_STRINGS
from .model import Report

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "report.schema.json"


class _StrictJsonSchema(GenerateJsonSchema):
    """Float fields accept the strings a non-finite value is written as, so a report with NaN validates."""

    def float_schema(self, schema: core_schema.FloatSchema) -> JsonSchemaValue:
        number = super().float_schema(schema)
        return {"anyOf": [number, {"enum": list(NON_FINITE_STRINGS)}]}


def report_json_schema() -> dict[str, Any]:
    return Report.model_json_schema(schema_generator=_StrictJsonSchema)


def write_json_schema(path: Path = SCHEMA_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_json_schema(), indent=2, sort_keys=True) + "\n")
