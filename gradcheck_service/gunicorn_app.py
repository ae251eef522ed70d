"""Run the app under gunicorn from Python (``gradcheck-service serve``); deploy/ uses gunicorn's own CLI."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication


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
    }).run()
