"""The OpenAPI 3.1 document, generated from the app's real routes and the pydantic models they declare.

Each view declares what it takes and answers with :func:`documented`; :func:`build_document` walks the Flask URL
map, so a route that exists is in the document (a test checks every ``/api/v1`` rule is there).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask
from pydantic import BaseModel

from ... import __version__
from ...definitions import archive

F = TypeVar("F", bound=Callable[..., Any])
_REF = "#/components/schemas/{model}"
_CONVERTER = re.compile(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
PUBLIC_PATHS = ("/healthz", "/readyz", "/api/v1/openapi.json")


def documented(summary: str, *, responses: dict[int, type[BaseModel] | None], body: type[BaseModel] | None = None,
               query: type[BaseModel] | None = None, multipart: bool = False, tag: str = "runs") -> Callable[[F], F]:
    """Attach OpenAPI facts to a view function (status -> response model; None for an empty body)."""

    def mark(view: F) -> F:
        view._openapi = {  # type: ignore[attr-defined]
            "summary": summary, "responses": responses, "body": body, "query": query, "multipart": multipart,
            "tag": tag, "doc": (view.__doc__ or "").strip(),
        }
        return view

    return mark


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
        for name, definition in schema.pop("$defs", {}).items():
            self.components.setdefault(name, definition)
        self.components.setdefault(model.__name__, schema)
        return {"$ref": _REF.format(model=model.__name__)}


def _parameters(rule_path: str, query: type[BaseModel] | None) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _CONVERTER.findall(rule_path)
    ]
    if query is not None:
        schema = query.model_json_schema()
        for name, prop in schema.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": False, "schema": prop,
                           "description": prop.get("description", "")})
    return params


def build_document(app: Flask) -> dict[str, Any]:
    schemas = _Schemas()
    from .schemas import ErrorOut

    error_ref = schemas.ref(ErrorOut)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "_openapi", None)
        if meta is None:
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation: dict[str, Any] = {
                "operationId": f"{rule.endpoint.replace('.', '_')}_{method.lower()}",
                "summary": meta["summary"],
                "tags": [meta["tag"]],
                "parameters": _parameters(rule.rule, meta["query"]),
                "responses": {},
            }
            if meta["doc"]:
                operation["description"] = meta["doc"]
            if rule.rule not in PUBLIC_PATHS:
                operation["security"] = [{"bearer": []}]
            if meta["body"] is not None:
                content: dict[str, Any] = {"application/json": {"schema": schemas.ref(meta["body"])}}
                if meta["multipart"]:
                    content["multipart/form-data"] = {"schema": {
                        "type": "object",
                        "description": "Exactly one of 'model' (one file) and 'archive' with 'entry' (a "
                                       "repository's model code); both, or neither, is a 422.",
                        "oneOf": [
                            {"required": ["model"], "not": {"anyOf": [{"required": [name]} for name in (
                                "archive", "entry", "pythonpath")]}},
                            {"required": ["archive", "entry"], "not": {"required": ["model"]}},
                        ],
                        "additionalProperties": False,
                        "properties": {
                            "model": {"type": "string", "format": "binary",
                                      "description": "A .py model file or a .json spec."},
                            "archive": {"type": "string", "format": "binary",
                                        "description": "A zip or gzip-compressed tar of the check file and the "
                                                       "repository files it imports: regular UTF-8 text files "
                                                       "with relative paths (no '..', no links), at most "
                                                       f"{archive.MAX_FILES} files, "
                                                       f"{archive.MAX_FILE_BYTES:,} bytes each and "
                                                       f"{archive.MAX_TOTAL_BYTES:,} bytes in all once unpacked."},
                            "entry": {"type": "string", "description": "With 'archive': the path of the .py check "
                                      "file inside it (it defines build())."},
                            "pythonpath": {"type": "string", "description": "With 'archive': JSON list of its "
                                           "directories the repository's modules are imported from, e.g. "
                                           "[\"src\"]; the archive's root is always one."},
                            "options": {"type": "string", "description": "JSON text of CheckOptions."},
                            "metadata": {"type": "string", "description": "JSON text of RunMetadata."},
                        },
                    }}
                operation["requestBody"] = {"required": True, "content": content}
            for status, model in sorted(meta["responses"].items()):
                entry: dict[str, Any] = {"description": _DESCRIPTIONS.get(status, "")}
                if model is not None:
                    entry["content"] = {"application/json": {"schema": schemas.ref(model)}}
                operation["responses"][str(status)] = entry
            if rule.rule not in PUBLIC_PATHS:
                operation["responses"].setdefault("401", {"description": _DESCRIPTIONS[401],
                                                          "content": {"application/json": {"schema": error_ref}}})
            operation["responses"].setdefault("default", {"description": "error",
                                                          "content": {"application/json": {"schema": error_ref}}})
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "gradcheck-service API", "version": __version__,
                 "description": "Submit PyTorch models for gradient checks and query their reports."},
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A project token from `gradcheck-service token create`."}},
        },
    }


_DESCRIPTIONS = {
    200: "OK", 202: "Accepted: the run is queued", 204: "Deleted", 401: "Missing, unknown or revoked token",
    404: "No such run in the token's project", 413: "Request body over the size limit",
    415: "Neither JSON nor multipart", 422: "Invalid request; each problem with its path",
    429: "Rate limit or the project's queue quota reached; see Retry-After",
    503: "Database or broker unavailable",
}
