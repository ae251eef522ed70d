"""Run the app under gunicorn from Python (``gradcheck-service serve``); deploy/ uses gunicorn's own CLI.

gunicorn answers some requests itself, before the app sees them: a request line over ``limit_request_line`` (414),
too many or too large header fields (431), a malformed request line or header, such as a NUL in a header (400), a
transfer coding it does not support (501). Its answer is an HTML page; :func:`install_json_errors` makes it the
API's JSON error instead, so a client parses every error the same way. Both ``serve`` and
``deploy/gunicorn.conf.py`` install it.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from gunicorn import util
from gunicorn.app.base import BaseApplication

from .api.errors import code_for


def write_json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """gunicorn's error answer (the signature of ``gunicorn.util.write_error``) as ``{"error": {code, message}}``."""
    detail = f"{reason}: {message}" if message else reason
    body = json.dumps({"error": {"code": code_for(status), "message": f"{detail} (refused by the HTTP server)"}})
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body.encode("ascii"))


def install_json_errors(_server: Any = None) -> None:
    """Make gunicorn's own error answers JSON (usable as its ``on_starting`` hook). gunicorn writes every one of
    them through ``gunicorn.util.write_error``; replacing it in the arbiter, before the workers fork, covers them
    all."""
    util.write_error = write_json_error


class _Server(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from .app import create_app

        return create_app()


def run_gunicorn(bind: str, workers: int, threads: int = 4) -> None:
    _Server({
        "bind": bind, "workers": workers, "worker_class": "gthread", "threads": threads, "timeout": 60,
        "graceful_timeout": 20, "accesslog": None, "errorlog": "-", "loglevel": "warning",
        "on_starting": install_json_errors,
    }).run()
