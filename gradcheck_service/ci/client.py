"""A small client of the service's REST API (``/api/v1``) for ``ci``: submit runs, read them, find baselines.

Standard library only (urllib). ``submit`` uses it too, so there is one HTTP client in the project.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..runs import RunCreated, RunOut
from .bundle import Bundle

Answer = TypeVar("Answer", bound=BaseModel)


class ServiceError(Exception):
    """A request that failed; ``status`` is the HTTP status, or None when the server could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def rejects_submission(self) -> bool:
        """The server judged this one submission (invalid, too large) rather than refusing the caller."""
        return self.status in (413, 415, 422)


class ServiceClient:
    def __init__(self, server: str, token: str, timeout_s: float = 30.0) -> None:
        self.base = server.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def run_page(self, run_id: str) -> str:
        """The dashboard page of a run."""
        return f"{self.base}/runs/{run_id}"

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Any:
        url = f"{self.base}/api/v1{path}"
        request = urllib.request.Request(url, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ServiceError(_error_text(exc, url), exc.code) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ServiceError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None

    def submit(self, path: Path, options: dict[str, Any], metadata: dict[str, Any],
               files: Bundle | None = None) -> str:
        """Submit a model file or spec (or a repository archive); returns the new run's id."""
        return self.create(path, options, metadata, files).id

    def create(self, path: Path, options: dict[str, Any], metadata: dict[str, Any],
               files: Bundle | None = None) -> RunCreated:
        """Submit ``path`` alone, or the archive ``files`` holding it; returns the server's answer."""
        fields = {"options": json.dumps(options), "metadata": json.dumps(metadata)}
        if files is None:
            body, content_type = multipart(fields, "model", path.name, path.read_bytes())
        else:
            fields |= {"entry": files.entry, "pythonpath": json.dumps(list(files.pythonpath))}
            body, content_type = multipart(fields, "archive", "repository.zip", files.archive)
        return _read(RunCreated, self.request("POST", "/runs", body, content_type), "/runs")

    def run(self, run_id: str) -> RunOut:
        """The run with its report (``report`` is the report's JSON: read it with ``Report.model_validate``)."""
        path = f"/runs/{urllib.parse.quote(run_id)}"
        return _read(RunOut, self.request("GET", path), path)

    def latest_finished(self, model: str, branch: str) -> RunOut | None:
        """The newest passed or failed run of ``model`` on ``branch``, with its report; None when there is none."""
        query = urllib.parse.urlencode({"model": model, "branch": branch, "status": "passed,failed", "limit": 1})
        runs = self.request("GET", f"/runs?{query}")["runs"]
        return self.run(runs[0]["id"]) if runs else None


def _read(model: type[Answer], data: Any, path: str) -> Answer:
    """``data`` read as ``model``; a ``ServiceError`` when the server answered something else."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ServiceError(f"the answer of /api/v1{path} cannot be read ({where}: {first['msg']}); is this a "
                           "gradcheck server of a compatible version?") from None


def multipart(fields: dict[str, str], file_field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text ``fields`` and one file; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _error_text(exc: urllib.error.HTTPError, url: str) -> str:
    try:
        error = json.loads(exc.read())["error"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"{exc.code} from {url}"
    lines = [f"{exc.code} {error.get('message', '')}".strip()]
    lines += [f"{p.get('path')}: {p.get('message')}" for p in error.get("problems") or []]
    return "; ".join(lines)
