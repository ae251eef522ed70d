"""Kept so deployments that name ``gradcheck_service.app:create_app()`` (gunicorn) go on working; the factory lives
in :mod:`gradcheck_service.service.app`."""

from .service.app import create_app

__all__ = ["create_app"]
