"""Turn a ``POST /api/v1/runs`` request into a validated submission, or a 422 listing every problem.

Nothing submitted is executed here: a JSON spec is validated and its shapes inferred without building anything, and
a Python file is only parsed (``ast``) to report syntax errors and a missing ``build()`` early. It runs later, in a
child process of a worker.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from flask import Request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from ...definitions import DefinitionError, json_input
from ...definitions.archive import ArchiveError, member_path, read_archive
from ...definitions.loader import parse_spec_text
from ...definitions.shapes import infer
from ...definitions.spec import json_path, parse_spec
from ...options import CheckOptions
from .errors import ApiError, validation_error
from .schemas import RunMetadata, RunSubmission

Problems = list[tuple[str, str]]
# Deepest nesting of objects/arrays accepted in a request; a real spec is a handful of levels deep.
MAX_JSON_DEPTH = 64


def text_problem(value: str) -> str | None:
    """Why the database cannot store this text, or None: PostgreSQL's text and JSONB refuse NUL characters, and
    an unpaired surrogate (``\\ud800`` in JSON) is not UTF-8."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate: not valid Unicode text"
    return None


def _json_shape_problems(data: Any, prefix: list[str | int]) -> Problems:
    """Strings the store cannot keep and nesting deeper than MAX_JSON_DEPTH, each with its JSON path (iterative,
    so a deep document cannot exhaust the stack here)."""
    problems: Problems = []
    stack: list[tuple[Any, list[str | int]]] = [(data, prefix)]
    while stack and len(problems) < 20:
        value, loc = stack.pop()
        if len(loc) - len(prefix) > MAX_JSON_DEPTH:
            problems.append((json_path(loc), f"nested deeper than {MAX_JSON_DEPTH} levels"))
        elif isinstance(value, str):
            if (why := text_problem(value)) is not None:
                problems.append((json_path(loc), why))
        elif isinstance(value, dict):
            for key, item in value.items():
                if (why := text_problem(str(key))) is not None:
                    problems.append((json_path(loc), f"a key {why}"))
                else:
                    stack.append((item, [*loc, str(key)]))
        elif isinstance(value, list):
            stack.extend((item, [*loc, index]) for index, item in enumerate(value))
    return sorted(problems)


def _decode_json(raw: str | bytes, where: str) -> Any:
    """Decode under the JSON policy (:mod:`..definitions.json_input`) with every failure as a 422 naming
    ``where``: not valid JSON, nested too deeply, a non-finite number or a repeated key (with its JSON path), or a
    string the store cannot keep."""
    try:
        data = json_input.decode(raw)
    except RecursionError:
        raise validation_error([(where, f"nested deeper than {MAX_JSON_DEPTH} levels")]) from None
    except json_input.StrictJsonError as exc:
        raise validation_error(_under(where, exc.problems)) from None
    except ValueError as exc:
        raise validation_error([(where, f"not valid JSON: {exc}")]) from None
    problems = _json_shape_problems(data, [])
    if problems:
        raise validation_error(_under(where, problems))
    return data


def _under(where: str, problems: Problems) -> Problems:
    """Problems whose paths are relative to a document (``$.x``) placed under ``where`` (a form field's name)."""
    return problems if where == "$" else [(where + path[1:], message) for path, message in problems]


@dataclass
class Submission:
    kind: str  # "spec" or "python"
    source: str  # the spec's JSON text or the Python source (of an archive: its check file)
    name: str
    options: CheckOptions
    metadata: RunMetadata
    files: dict[str, str] | None = None  # a repository archive's files, by relative path
    layout: dict[str, Any] | None = None  # of an archive: {"entry", "pythonpath"}

    @property
    def model_hash(self) -> str:
        if self.files is None:
            return hashlib.sha256(self.source.encode("utf-8")).hexdigest()
        whole = json.dumps({"layout": self.layout, "files": self.files}, sort_keys=True)
        return hashlib.sha256(whole.encode("utf-8")).hexdigest()


def _pydantic_problems(exc: ValidationError, prefix: list[str | int]) -> Problems:
    problems = []
    for error in exc.errors():
        loc = [p for p in error["loc"] if isinstance(p, str | int)]
        message = str(error["msg"])
        if error["type"] == "extra_forbidden":
            message = f"unknown field '{loc[-1]}'" if loc else "unknown field"
        problems.append((json_path([*prefix, *loc]), message))
    return problems


def _spec_problems(data: Any, prefix: list[str | int]) -> tuple[Problems, str | None]:
    """Validate a decoded spec (fields, then shapes and size caps); returns problems and the spec's name."""
    try:
        spec = parse_spec(data)
        infer(spec)
    except DefinitionError as exc:
        base = json_path(prefix)
        return [(base + p.path[1:] if p.path.startswith("$") else p.path, p.message) for p in exc.problems] or [
            (base, exc.message)], None
    return [], spec.name


def _python_problems(source: str, field: str) -> Problems:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [(f"{field}:{exc.lineno or 0}", f"syntax error: {exc.msg}")]
    defines_build = any(
        (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "build")
        or (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "build" for t in node.targets))
        or (isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == "build" for a in node.names))
        for node in tree.body
    )
    return [] if defines_build else [(field, "the model file defines no top-level build() function")]


def _form_json(request: Request, field: str, model: type[BaseModel], problems: Problems) -> Any:
    raw = request.form.get(field)
    if raw is None or not raw.strip():
        return model()
    try:
        data = _decode_json(raw, field)
    except ApiError as exc:
        problems.extend((p["path"], p["message"]) for p in exc.details["problems"])
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, [field]))
        return None


def _from_multipart(request: Request) -> Submission:
    problems: Problems = []
    unknown = (sorted(str(name) for name in set(request.form) - {"options", "metadata", "entry", "pythonpath"})
               + sorted(str(name) for name in set(request.files) - {"model", "archive"}))
    problems.extend((name, f"unknown form field '{name}' (expected model or archive, entry, pythonpath, options, "
                     "metadata)") for name in unknown)
    options = _form_json(request, "options", CheckOptions, problems)
    metadata = _form_json(request, "metadata", RunMetadata, problems)
    if "archive" in request.files:
        return _from_archive(request, options, metadata, problems)
    for field in ("entry", "pythonpath"):
        if field in request.form:
            problems.append((field, f"'{field}' belongs with an 'archive' file field"))
    upload = request.files.get("model")
    if upload is None:
        raise validation_error([("model", "missing file field 'model' (a .py model file or a .json spec)")])
    filename = PurePath(upload.filename or "model").name
    suffix = PurePath(filename).suffix.lower()
    raw = upload.read()
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise validation_error([("model", f"{filename} is not UTF-8 text")]) from None
    if (why := text_problem(source)) is not None:
        raise validation_error([("model", f"{filename} {why}")])
    kind = {".py": "python", ".json": "spec"}.get(suffix)
    spec_name = None
    if kind is None:
        problems.append(("model", f"{filename}: expected a .py model file or a .json spec"))
    elif kind == "spec":
        try:
            data = parse_spec_text(source, filename)
            shape_problems = _json_shape_problems(data, [])
        except DefinitionError as exc:
            problems.extend((f"model:{p.path}", p.message) for p in exc.problems)
        except RecursionError:
            problems.append(("model", f"{filename}: nested deeper than {MAX_JSON_DEPTH} levels"))
        else:
            if shape_problems:
                raise validation_error([(f"model:{path}", message) for path, message in shape_problems])
            spec_problems, spec_name = _spec_problems(data, [])
            problems.extend((f"model:{path}", message) for path, message in spec_problems)
    else:
        problems.extend(_python_problems(source, "model"))
    if problems:
        raise validation_error(problems)
    name = metadata.name or spec_name or PurePath(filename).stem or "model"
    return Submission(kind or "spec", source, name, options, metadata)


def _pythonpath(raw: str | None, files: dict[str, str], problems: Problems) -> list[str]:
    """The archive's import roots ("." is its root, always included), each a directory of the archive."""
    if raw is None or not raw.strip():
        return ["."]
    try:
        values = json_input.decode(raw)
    except (ValueError, RecursionError):
        values = None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        problems.append(("pythonpath", 'expected a JSON list of directories of the archive, e.g. ["src"]'))
        return ["."]
    directories = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    roots: list[str] = []
    for index, value in enumerate(values[:20]):
        path = "." if value.strip("/") in ("", ".") else member_path(value.rstrip("/"))
        if path is None or (path != "." and path not in directories):
            problems.append((f"pythonpath[{index}]", f"{value!r} is not a directory of the archive"))
        elif path not in roots:
            roots.append(path)
    return [*roots, "."] if "." not in roots else roots


def _from_archive(request: Request, options: Any, metadata: Any, problems: Problems) -> Submission:
    """A repository archive (zip or tar.gz, field ``archive``) and the path of its check file (field ``entry``)."""
    if "model" in request.files:
        raise validation_error([("model", "send either a 'model' file or an 'archive', not both")])
    try:
        files = read_archive(request.files["archive"].read())
    except ArchiveError as exc:
        raise validation_error([(f"archive:{path}" if path else "archive", message)
                                for path, message in exc.problems]) from None
    entry = member_path(request.form.get("entry", "").strip())
    if entry is None:
        raise validation_error([("entry", "required with an archive: the path of the .py check file inside it")])
    if entry not in files:
        raise validation_error([("entry", f"{entry}: not in the archive")])
    if not entry.endswith(".py"):
        raise validation_error([("entry", f"{entry}: expected a .py check file")])
    unstorable = [(f"archive:{path}", why) for path, text in files.items() if (why := text_problem(text))]
    if unstorable:
        raise validation_error(unstorable)
    pythonpath = _pythonpath(request.form.get("pythonpath"), files, problems)
    problems.extend(_python_problems(files[entry], f"archive:{entry}"))
    if problems:
        raise validation_error(problems)
    name = metadata.name or PurePath(entry).stem
    return Submission("python", files[entry], name, options, metadata, files=files,
                      layout={"entry": entry, "pythonpath": pythonpath})


def _json_body(request: Request) -> bytes:
    """The body, refused (413) past the size limit also when it comes without a Content-Length (chunked).

    Werkzeug then stops reading at ``MAX_CONTENT_LENGTH`` and returns what it read, so a 10 MB body would reach the
    JSON decoder cut off (a misleading "not valid JSON"); one byte more from the server's stream tells them apart.
    """
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit \
            and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def _from_json(request: Request) -> Submission:
    raw = _json_body(request)
    try:
        data = _decode_json(raw, "$")
    except ApiError as exc:
        if exc.details["problems"][0]["message"].startswith("not valid JSON"):
            raise validation_error([("$", "the body is not valid JSON")]) from None
        raise
    if not isinstance(data, dict):
        raise validation_error([("$", "the body must be a JSON object with a 'spec'")])
    try:
        body = RunSubmission.model_validate(data)
    except ValidationError as exc:
        problems = _pydantic_problems(exc, [])
        if isinstance(data.get("spec"), dict):
            problems.extend(_spec_problems(data["spec"], ["spec"])[0])
        raise validation_error(problems) from None
    spec_problems, spec_name = _spec_problems(body.spec, ["spec"])
    if spec_problems:
        raise validation_error(spec_problems)
    source = json.dumps(body.spec, indent=2)
    return Submission("spec", source, body.metadata.name or spec_name or "model", body.options, body.metadata)


def parse_submission(request: Request) -> Submission:
    if request.mimetype == "multipart/form-data":
        return _from_multipart(request)
    if request.is_json:
        return _from_json(request)
    raise ApiError(415, "send a JSON body with a 'spec', or multipart/form-data with a 'model' file")
